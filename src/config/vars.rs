//! Reading one variable: trimmed, empty as unset, parsed with an error that names it.

use std::collections::HashMap;
use std::time::Duration;

use super::{err, ConfigError};

pub(super) struct Vars<'a>(pub(super) &'a HashMap<String, String>);

impl Vars<'_> {
    pub(super) fn raw(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(|s| s.trim()).filter(|s| !s.is_empty())
    }
    pub(super) fn string(&self, k: &str, default: &str) -> String {
        self.raw(k).unwrap_or(default).to_owned()
    }
    pub(super) fn opt(&self, k: &str) -> Option<String> {
        self.raw(k).map(str::to_owned)
    }
    pub(super) fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T, ConfigError> {
        match self.raw(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                err(
                    k,
                    format!("expected a non-negative whole number, got {v:?}"),
                )
            }),
        }
    }
    pub(super) fn secs(&self, k: &str, default: u64) -> Result<Duration, ConfigError> {
        self.num(k, default).map(Duration::from_secs)
    }
    pub(super) fn bool(&self, k: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(k).map(|s| s.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) => match v.as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(err(k, format!("expected true or false, got {v:?}"))),
            },
        }
    }
    pub(super) fn url(&self, k: &str, default: &str) -> Result<String, ConfigError> {
        let v = self.string(k, default);
        check_url(k, &v, &["http", "https"])?;
        Ok(v.trim_end_matches('/').to_owned())
    }
    pub(super) fn list(&self, k: &str) -> Vec<String> {
        self.raw(k)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub(super) fn check_url(var: &str, v: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let u = url::Url::parse(v).map_err(|e| err(var, format!("not a valid URL ({e})")))?;
    if !schemes.contains(&u.scheme()) {
        return Err(err(
            var,
            format!("scheme must be one of {schemes:?}, got {:?}", u.scheme()),
        ));
    }
    Ok(())
}
