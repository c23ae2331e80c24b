//! SMS providers (SPEC §3 `SMS_PROVIDER`): where a login code goes.
//!
//! - `log`: writes the code to the log at `info` (development only; never configure it in
//!   production).
//! - `aliyun`: Alibaba Cloud SMS `SendSms` (API version 2017-05-25), an RPC-style GET signed with
//!   signature v1 (HMAC-SHA1 over the percent-encoded canonical query), sent to
//!   `ALIYUN_SMS_ENDPOINT`. Anything but `{"Code":"OK"}` is `upstream_error`.
//!
//! Phones never reach the log in clear: only [`mask_phone`] output does.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::crypto::{mainland_national, mask_phone};
use crate::config::{AliyunSms, SmsProvider};
use crate::error::{Error, Result};

/// Sends `code` to the normalized phone `e164` through the configured provider.
pub async fn send_code(provider: &SmsProvider, e164: &str, code: &str) -> Result<()> {
    match provider {
        SmsProvider::Log => {
            tracing::info!(
                phone = %mask_phone(e164),
                code,
                "SMS login code (SMS_PROVIDER=log: development only, nothing was sent)"
            );
            Ok(())
        }
        SmsProvider::Aliyun(cfg) => aliyun_send(cfg, e164, code).await,
    }
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default()
    })
}

/// RFC 3986 percent-encoding as Alibaba Cloud's signature v1 wants it: unreserved characters
/// (`A-Z a-z 0-9 - _ . ~`) as they are, every other byte of the UTF-8 as `%XX` (upper case), so
/// a space is `%20` (never `+`) and `~` stays `~`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The sorted, percent-encoded canonical query of `params`.
pub fn canonical_query(params: &BTreeMap<String, String>) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Signature v1: `base64(HMAC-SHA1(secret + "&", "GET&%2F&" + percentEncode(canonical)))`.
pub fn sign(secret: &str, canonical: &str) -> String {
    let to_sign = format!("GET&{}&{}", percent_encode("/"), percent_encode(canonical));
    let key = format!("{secret}&");
    let Ok(mut mac) = <Hmac<Sha1> as Mac>::new_from_slice(key.as_bytes()) else {
        // HMAC takes keys of any length; this branch cannot run.
        return String::new();
    };
    mac.update(to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `PhoneNumbers` as Alibaba Cloud expects it: the 11 digits for mainland mobiles, otherwise
/// country code and number without `+`.
fn aliyun_phone(e164: &str) -> String {
    mainland_national(e164)
        .map(str::to_owned)
        .unwrap_or_else(|| e164.trim_start_matches('+').to_owned())
}

/// The full signed URL of one `SendSms` call.
pub fn aliyun_url(cfg: &AliyunSms, e164: &str, code: &str, nonce: &str, timestamp: &str) -> String {
    let mut p = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        p.insert(k.to_owned(), v);
    };
    put("AccessKeyId", cfg.access_key_id.clone());
    put("Action", "SendSms".into());
    put("Format", "JSON".into());
    put("PhoneNumbers", aliyun_phone(e164));
    put("RegionId", "cn-hangzhou".into());
    put("SignName", cfg.sign_name.clone());
    put("SignatureMethod", "HMAC-SHA1".into());
    put("SignatureNonce", nonce.to_owned());
    put("SignatureVersion", "1.0".into());
    put("TemplateCode", cfg.template_code.clone());
    put(
        "TemplateParam",
        serde_json::json!({ "code": code }).to_string(),
    );
    put("Timestamp", timestamp.to_owned());
    put("Version", "2017-05-25".into());
    let canonical = canonical_query(&p);
    let signature = sign(&cfg.access_key_secret, &canonical);
    format!(
        "{}/?Signature={}&{}",
        cfg.endpoint.trim_end_matches('/'),
        percent_encode(&signature),
        canonical
    )
}

#[derive(serde::Deserialize)]
struct AliyunAnswer {
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "Message")]
    message: Option<String>,
    #[serde(rename = "RequestId")]
    request_id: Option<String>,
}

fn upstream() -> Error {
    Error::AuthProvider("the SMS provider could not send the code; try again later".into())
}

async fn aliyun_send(cfg: &AliyunSms, e164: &str, code: &str) -> Result<()> {
    let nonce = uuid::Uuid::new_v4().to_string();
    let timestamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let url = aliyun_url(cfg, e164, code, &nonce, &timestamp);
    let masked = mask_phone(e164);
    let res = client().get(&url).send().await.map_err(|e| {
        tracing::warn!(phone = %masked, error = %e.without_url(), "aliyun SendSms request failed");
        upstream()
    })?;
    let status = res.status();
    let body = res.bytes().await.map_err(|e| {
        tracing::warn!(phone = %masked, error = %e.without_url(), "aliyun SendSms: reading the answer failed");
        upstream()
    })?;
    let answer: Option<AliyunAnswer> = serde_json::from_slice(&body).ok();
    match answer {
        Some(AliyunAnswer {
            code: Some(c),
            request_id,
            ..
        }) if c == "OK" && status.is_success() => {
            tracing::info!(phone = %masked, request_id = request_id.as_deref().unwrap_or(""), "SMS code sent (aliyun)");
            Ok(())
        }
        Some(a) => {
            tracing::warn!(
                phone = %masked,
                status = status.as_u16(),
                code = a.code.as_deref().unwrap_or(""),
                message = a.message.as_deref().unwrap_or(""),
                request_id = a.request_id.as_deref().unwrap_or(""),
                "aliyun SendSms refused"
            );
            Err(upstream())
        }
        None => {
            tracing::warn!(phone = %masked, status = status.as_u16(), "aliyun SendSms answered something that is not JSON");
            Err(upstream())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_is_rfc3986() {
        assert_eq!(percent_encode("a b~c*d+e/f"), "a%20b~c%2Ad%2Be%2Ff");
        assert_eq!(percent_encode("-_.AZaz09"), "-_.AZaz09");
        assert_eq!(percent_encode("阿里"), "%E9%98%BF%E9%87%8C");
        assert_eq!(
            percent_encode("{\"code\":\"1\"}"),
            "%7B%22code%22%3A%221%22%7D"
        );
    }

    /// The worked example of Alibaba Cloud's RPC signature v1 documentation
    /// (`testsecret`, `DescribeRegions` on ECS).
    #[test]
    fn signature_matches_the_documented_example() {
        let mut p = BTreeMap::new();
        for (k, v) in [
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ] {
            p.insert(k.to_owned(), v.to_owned());
        }
        let canonical = canonical_query(&p);
        assert_eq!(
            canonical,
            "AccessKeyId=testid&Action=DescribeRegions&Format=XML&SignatureMethod=HMAC-SHA1&SignatureNonce=3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf&SignatureVersion=1.0&Timestamp=2016-02-23T12%3A46%3A24Z&Version=2014-05-26"
        );
        assert_eq!(
            sign("testsecret", &canonical),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
    }

    #[test]
    fn phone_numbers_parameter() {
        assert_eq!(aliyun_phone("+8613812345678"), "13812345678");
        assert_eq!(aliyun_phone("+447700900123"), "447700900123");
    }
}
