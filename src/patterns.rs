//! Patterns that `/openapi.json` states and the server checks with the same text, so the document
//! and the server cannot disagree about what a field accepts.

use std::sync::LazyLock;

use dashmap::DashMap;
use regex::Regex;

/// The patterns. Each is written
/// in the part of regex syntax that ECMA-262 (the document's dialect), Python's `re` (the fuzzer's)
/// and Rust's `regex` read alike: explicit classes, no `\s`, `^`/`$` only around the whole value.
/// The schema attributes repeat them as literals (utoipa takes no constants there); a unit test
/// checks that every pattern in the document is one of these.
pub mod pattern {
    /// A one-line label: no control character, and not blank.
    pub const LABEL: &str = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\x00-\x1f\x7f-\x9f]*$";
    /// A one-line label that may be empty or blank: no control character.
    pub const LINE: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";
    /// Text (newlines allowed) that is not blank: one character that is not white space.
    pub const NOT_BLANK: &str =
        r"[^\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]";
    /// Empty, an http(s) URL, or a `/static/` path without `..`.
    pub const URL: &str = r"^(|https?://[^\x00-\x20\x7f-\xa0/?#]+([/?#][^\x00-\x20\x7f-\xa0]*)?|/static/(\.?[^.\x00-\x1f\x7f-\x9f])*\.?)$";
    /// A username.
    pub const USERNAME: &str = r"^[A-Za-z0-9_]{3,20}$";
    /// A mainland China mobile or E.164 number; spaces and dashes between the digits are ignored.
    pub const PHONE: &str =
        r"^[ -]*(1[ -]*[3-9]([ -]*[0-9]){9}|\+[ -]*[1-9]([ -]*[0-9]){7,14})[ -]*$";
    /// The code received by SMS.
    pub const SMS_CODE: &str = r"^[0-9]{6}$";
    /// A model id.
    pub const MODEL_ID: &str = r"^[A-Za-z0-9_.:/-]{1,64}$";

    /// Every pattern above.
    pub const ALL: &[&str] = &[
        LABEL, LINE, NOT_BLANK, URL, USERNAME, PHONE, SMS_CODE, MODEL_ID,
    ];
}

/// `v` matches `pattern` (one of [`pattern`]).
pub fn matches(pattern: &'static str, v: &str) -> bool {
    static COMPILED: LazyLock<DashMap<&'static str, Regex>> = LazyLock::new(DashMap::new);
    if let Some(re) = COMPILED.get(pattern) {
        return re.is_match(v);
    }
    match Regex::new(pattern) {
        Ok(re) => {
            let ok = re.is_match(v);
            COMPILED.insert(pattern, re);
            ok
        }
        Err(e) => {
            tracing::error!(pattern, error = %e, "a request pattern does not compile");
            false
        }
    }
}
