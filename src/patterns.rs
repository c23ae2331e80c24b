//! Patterns that `/openapi.json` states and the server checks with the same text, so the document
//! and the server cannot disagree about what a field accepts.

use std::collections::HashMap;
use std::sync::LazyLock;

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
    /// An image given to a model: an https URL or a base64 `data:image/…` URL.
    pub const IMAGE_URL: &str = r"^(https://[^\x00-\x20\x7f-\xa0/?#]+([/?#][^\x00-\x20\x7f-\xa0]*)?|data:image/[a-z0-9.+-]+;base64,[A-Za-z0-9+/=]*)$";
    /// An image attached to a chat message: an https URL, or an upload's `/static/` path.
    pub const ATTACHMENT_URL: &str = r"^(https://[^\x00-\x20\x7f-\xa0/?#]+([/?#][^\x00-\x20\x7f-\xa0]*)?|/static/[0-9]{1,20}[.](png|jpg|gif|webp))$";
    /// A function (tool) or JSON schema name.
    pub const TOOL_NAME: &str = r"^[A-Za-z0-9_-]{1,64}$";

    /// Every pattern above.
    pub const ALL: &[&str] = &[
        LABEL,
        LINE,
        NOT_BLANK,
        URL,
        USERNAME,
        PHONE,
        SMS_CODE,
        MODEL_ID,
        TOOL_NAME,
        IMAGE_URL,
        ATTACHMENT_URL,
    ];
}

/// `v` matches `pattern` (one of [`pattern::ALL`]; the unit test below proves each compiles).
pub fn matches(pattern: &'static str, v: &str) -> bool {
    static COMPILED: LazyLock<HashMap<&'static str, Regex>> = LazyLock::new(|| {
        pattern::ALL
            .iter()
            .filter_map(|p| Regex::new(p).ok().map(|re| (*p, re)))
            .collect()
    });
    COMPILED.get(pattern).is_some_and(|re| re.is_match(v))
}

#[cfg(test)]
mod tests {
    use super::{matches, pattern};

    #[test]
    fn every_pattern_compiles_and_reads_as_documented() {
        for p in pattern::ALL {
            assert!(regex::Regex::new(p).is_ok(), "{p}");
        }
        assert!(matches(pattern::LABEL, "  a name "));
        assert!(!matches(pattern::LABEL, "   "));
        assert!(!matches(pattern::LABEL, "a\nb"));
        assert!(matches(pattern::LINE, ""));
        assert!(matches(pattern::NOT_BLANK, "\n x"));
        assert!(!matches(pattern::NOT_BLANK, " \t\u{3000}"));
        assert!(matches(pattern::URL, "https://cdn.example.com/a.png"));
        assert!(matches(pattern::URL, "/static/a.png"));
        assert!(!matches(pattern::URL, "/static/../x"));
        assert!(!matches(pattern::URL, "javascript:alert(1)"));
        assert!(matches(pattern::PHONE, "138-1234-5678"));
        assert!(matches(pattern::PHONE, "+44 7700 900123"));
        assert!(!matches(pattern::PHONE, "+0123456789"));
        assert!(matches(pattern::MODEL_ID, "gpt-4o:mini/v1"));
        assert!(!matches(pattern::USERNAME, "ab"));
        assert!(matches(pattern::ATTACHMENT_URL, "/static/123.png"));
        assert!(matches(
            pattern::ATTACHMENT_URL,
            "https://cdn.example.com/a.png?x=1"
        ));
        assert!(!matches(pattern::ATTACHMENT_URL, "/static/../x.png"));
        assert!(!matches(
            pattern::ATTACHMENT_URL,
            "http://cdn.example.com/a.png"
        ));
    }
}
