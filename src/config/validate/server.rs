//! `[server]`'s checks: the listen address (never beyond loopback without a
//! key), limits, keys, TLS files and CORS origins.

use super::Checker;
use crate::config::{Backend, KeyConfig, KeyPath, ServerConfig};

/// `[server]`'s problems.
pub(super) fn check(k: &mut Checker, s: &ServerConfig) {
    match s.listen.parse::<std::net::SocketAddr>() {
        Err(_) => k.fail(
            KeyPath::parse("server.listen"),
            format!(
                "must be an address:port such as \"127.0.0.1:8080\" (got {:?})",
                s.listen
            ),
        ),
        Ok(a) if !a.ip().is_loopback() && !s.has_keys() => k.fail(
            KeyPath::parse("server.listen"),
            format!(
                "{} is reachable from other machines, and no API key is configured: add \
                 [[server.keys]] (or api_key_file / api_key_env), or listen on 127.0.0.1",
                s.listen
            ),
        ),
        Ok(_) => {}
    }
    k.at_least("server.max_tokens", s.max_tokens, 1);
    k.at_least("server.queue", s.queue, 1);
    k.at_least("server.max_request_bytes", s.max_request_bytes, 1024);
    k.at_least("server.max_messages", s.max_messages, 1);
    k.at_least("server.header_timeout_secs", s.header_timeout_secs, 1);
    k.at_least("server.body_timeout_secs", s.body_timeout_secs, 1);
    k.at_least("server.send_timeout_secs", s.send_timeout_secs, 1);
    k.at_least("server.memory_query_terms", s.memory_query_terms, 1);
    k.at_least("server.memory_recall_ms", s.memory_recall_ms, 1);
    if let Some(days) = s.conversation_retention_days {
        k.at_least("server.conversation_retention_days", days, 1);
    }
    if let Some(f) = &s.api_key_file {
        k.exists(KeyPath::parse("server.api_key_file"), f, "file");
    }
    for (i, key) in s.keys.iter().enumerate() {
        check_key(k, s, i, key);
    }
    match (&s.tls_cert_file, &s.tls_key_file) {
        (Some(c), Some(kf)) => {
            k.exists(KeyPath::parse("server.tls_cert_file"), c, "file");
            k.exists(KeyPath::parse("server.tls_key_file"), kf, "file");
        }
        (None, None) => {}
        _ => k.fail(
            KeyPath::parse("server.tls_cert_file"),
            "tls_cert_file and tls_key_file go together",
        ),
    }
    check_backend(k, s);
    for (i, o) in s.cors_origins.iter().enumerate() {
        let ok = reqwest::Url::parse(o).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https") && u.path() == "/" && !o.ends_with('/')
        });
        if !ok {
            k.fail(
                KeyPath::parse("server.cors_origins").index(i),
                format!("must be an origin such as \"https://app.example.com\" (got {o:?})"),
            );
        }
    }
}

/// One `[[server.keys]]` entry.
fn check_key(k: &mut Checker, s: &ServerConfig, i: usize, key: &KeyConfig) {
    let at = KeyPath::parse("server.keys").index(i);
    let valid_name = !key.name.is_empty()
        && key.name.len() <= 64
        && key
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if !valid_name {
        k.fail(
            at.key("name"),
            format!("must be 1–64 letters, digits or -_.@ (got {:?})", key.name),
        );
    }
    if key.name == crate::config::DEFAULT_IDENTITY {
        k.fail(
            at.key("name"),
            "\"default\" is reserved: it is the identity of api_key_file / api_key_env (an \
             admin) and owns what was stored before keys existed; name this key otherwise",
        );
    } else if s.keys[..i].iter().any(|o| o.name == key.name) {
        k.fail(
            at.key("name"),
            format!("identity {:?} is named twice", key.name),
        );
    }
    match (&key.key_file, &key.key_env) {
        (Some(f), None) => k.exists(at.key("key_file"), f, "file"),
        (None, Some(_)) => {}
        _ => k.fail(at.clone(), "needs exactly one of key_file and key_env"),
    }
    if key.rpm == Some(0) {
        k.fail(at.key("rpm"), "must be at least 1 (or left out)");
    }
    if key.max_concurrent == Some(0) {
        k.fail(at.key("max_concurrent"), "must be at least 1 (or left out)");
    }
}

/// `backend = "vllm"` needs the fleet's URL; its other keys are for it only.
fn check_backend(k: &mut Checker, s: &ServerConfig) {
    k.at_least("server.backend_timeout_secs", s.backend_timeout_secs, 1);
    match (s.backend, &s.backend_url) {
        (Backend::Vllm, None) => k.fail(
            KeyPath::parse("server.backend_url"),
            "backend = \"vllm\" needs backend_url, the fleet's base URL (http://vllm:8000)",
        ),
        (Backend::Vllm, Some(u)) => super::check_url(k, KeyPath::parse("server.backend_url"), u),
        (Backend::Builtin, Some(_)) => k.fail(
            KeyPath::parse("server.backend_url"),
            "is for backend = \"vllm\" (the backend is builtin)",
        ),
        (Backend::Builtin, None) => {}
    }
    if s.backend_key_file.is_some() && s.backend_key_env.is_some() {
        k.fail(
            KeyPath::parse("server.backend_key_env"),
            "set backend_key_file or backend_key_env, not both",
        );
    }
}
