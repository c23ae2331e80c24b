//! The upstream LLM providers (adapters of the port `questech_engine::llm::Provider`):
//! the OpenAI-compatible HTTP client ([`openai`]), the built-in dev model ([`echo`]), and the
//! incremental SSE parser they share ([`sse`]).

pub mod echo;
mod echo_embed;
pub mod openai;
pub mod sse;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use questech_engine::llm::Provider;

use crate::config::Config;
use crate::uploads::Store;

/// The providers this configuration enables, by provider id:
/// - `echo` when `SERVICE_DEBUG` is on (`echo_delay` between its deltas),
/// - `openai` when `OPENAI_API_KEY` is set (at `OPENAI_BASE_URL`),
/// - `deepseek` when `DEEPSEEK_API_KEY` is set (at `DEEPSEEK_BASE_URL`).
///
/// Remote providers read the images attached from `uploads` (when given) to send them inline.
/// A provider whose HTTP client cannot be built is left out, with an error in the log.
pub fn build_providers(
    cfg: &Config,
    echo_delay: Duration,
    uploads: Option<&Store>,
) -> HashMap<String, Arc<dyn Provider>> {
    let mut providers: HashMap<String, Arc<dyn Provider>> = HashMap::new();
    if cfg.service_debug {
        providers.insert("echo".into(), Arc::new(echo::EchoProvider::new(echo_delay)));
    }
    let remote = [
        ("openai", &cfg.openai_api_key, &cfg.openai_base_url),
        ("deepseek", &cfg.deepseek_api_key, &cfg.deepseek_base_url),
    ];
    for (name, key, base_url) in remote {
        let Some(key) = key else { continue };
        match openai::OpenAiCompatible::new(name, base_url.as_str(), Some(key.0.clone())) {
            Ok(mut p) => {
                p.uploads = uploads.cloned();
                providers.insert(name.into(), Arc::new(p));
            }
            Err(e) => {
                tracing::error!(provider = name, error = %e, "cannot build the HTTP client; provider disabled");
            }
        }
    }
    providers
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let dir = std::env::temp_dir().join(format!("qt-llm-{}", rand::random::<u64>()));
        let mut m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        m.insert("DATA_DIR".into(), dir.to_string_lossy().into_owned());
        Config::from_map(&m).unwrap()
    }

    fn names(p: &HashMap<String, Arc<dyn Provider>>) -> Vec<String> {
        let mut v: Vec<String> = p.keys().cloned().collect();
        v.sort();
        v
    }

    #[test]
    fn debug_without_keys_has_only_echo() {
        let p = build_providers(&config(&[]), Duration::ZERO, None);
        assert_eq!(names(&p), ["echo"]);
        assert!(p["echo"].is_dev());
        assert_eq!(p["echo"].name(), "echo");
    }

    #[test]
    fn keys_enable_remote_providers() {
        let p = build_providers(
            &config(&[
                ("SERVICE_DEBUG", "false"),
                ("OPENAI_API_KEY", "sk-a"),
                ("DEEPSEEK_API_KEY", "sk-b"),
                ("DEEPSEEK_BASE_URL", "http://127.0.0.1:9/v1/"),
            ]),
            Duration::ZERO,
            None,
        );
        assert_eq!(names(&p), ["deepseek", "openai"]);
        assert_eq!(p["openai"].name(), "openai");
        assert!(!p["openai"].is_dev());
        assert_eq!(p["deepseek"].name(), "deepseek");
    }

    #[test]
    fn only_openai() {
        let p = build_providers(
            &config(&[("SERVICE_DEBUG", "true"), ("OPENAI_API_KEY", "sk-a")]),
            Duration::ZERO,
            None,
        );
        assert_eq!(names(&p), ["echo", "openai"]);
    }
}
