//! Field readers for JSON bodies where serde's defaults differ from what the document says:
//!
//! - whole numbers: JSON Schema counts `5.0` as the integer 5, and so do SDKs that serialise every
//!   number as a float; serde's `i64` does not;
//! - nested objects: serde reads a struct from an array too (`[null, true]` as `{a, b}` in field
//!   order); a field documented as an object takes only an object.

use serde::de::{Deserialize, DeserializeOwned, Deserializer, Error};
use serde_json::{Number, Value};

fn whole<E: Error>(n: &Number) -> Result<i64, E> {
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        // Within ±2^53 a float holds every whole number exactly.
        Some(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => Ok(f as i64),
        _ => Err(E::custom(format!(
            "expected a whole number of at most 2^53 in size, got {n}"
        ))),
    }
}

/// A required whole number.
pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    whole(&Number::deserialize(d)?)
}

/// An optional whole number (`null` or absent is `None`; use with `#[serde(default)]`).
pub fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<Number>::deserialize(d)?
        .as_ref()
        .map(whole)
        .transpose()
}

fn from_object<T: DeserializeOwned, E: Error>(v: Value) -> Result<T, E> {
    if !v.is_object() {
        return Err(E::custom("expected a JSON object"));
    }
    T::deserialize(v).map_err(E::custom)
}

/// An optional object (`null` or absent is `None`; use with `#[serde(default)]`).
pub fn opt_object<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
) -> Result<Option<T>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        v => from_object(v).map(Some),
    }
}

/// An array of objects.
pub fn objects<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    Vec::<Value>::deserialize(d)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| from_object(v).map_err(|e: D::Error| D::Error::custom(format!("[{i}]: {e}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct T {
        #[serde(default, deserialize_with = "super::opt_int")]
        n: Option<i64>,
    }

    #[derive(serde::Deserialize, Debug)]
    struct Inner {
        #[allow(dead_code)]
        a: Option<bool>,
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct O {
        #[serde(default, deserialize_with = "super::opt_object")]
        o: Option<Inner>,
        #[serde(default, deserialize_with = "super::objects")]
        list: Vec<Inner>,
    }

    #[test]
    fn objects_are_objects() {
        let ok = |j: &str| serde_json::from_str::<O>(j).is_ok();
        assert!(ok(r#"{"o": {"a": true}, "list": [{"a": null}, {}]}"#));
        assert!(ok(r#"{"o": null}"#));
        assert!(!ok(r#"{"o": [true]}"#));
        assert!(!ok(r#"{"list": [[true]]}"#));
    }

    fn n(json: &str) -> Result<Option<i64>, serde_json::Error> {
        serde_json::from_str::<T>(json).map(|t| t.n)
    }

    #[test]
    fn floats_that_are_whole_are_integers() {
        assert_eq!(n(r#"{"n": 5}"#).ok(), Some(Some(5)));
        assert_eq!(n(r#"{"n": 5.0}"#).ok(), Some(Some(5)));
        assert_eq!(n(r#"{"n": -1e3}"#).ok(), Some(Some(-1000)));
        assert_eq!(n(r#"{"n": null}"#).ok(), Some(None));
        assert_eq!(n("{}").ok(), Some(None));
        assert!(n(r#"{"n": 5.5}"#).is_err());
        assert!(n(r#"{"n": 1e300}"#).is_err());
        assert!(n(r#"{"n": 18446744073709551615}"#).is_err());
        assert!(n(r#"{"n": "5"}"#).is_err());
    }
}
