//! `[[publish]]`'s checks: names unique and plain, each kind's required keys
//! present and no key of another kind set.

use super::{Checker, check_url, unique_names};
use crate::config::{Config, KeyPath, PublishConfig, PublishKind};

/// `[[publish]]`'s problems.
pub(super) fn check(k: &mut Checker, c: &Config) {
    unique_names(
        k,
        "publish",
        "publish target",
        c.publish.iter().map(|t| t.name.as_str()),
    );
    let has_dir = c.publish.iter().any(|t| t.kind == PublishKind::Dir);
    for (i, t) in c.publish.iter().enumerate() {
        let at = KeyPath::root().key("publish").index(i);
        if t.name.is_empty() || t.name.contains(['/', '\\']) {
            k.fail(at.key("name"), "must be a non-empty name without slashes");
        }
        for (key, set, kinds) in t.kind_keys() {
            if set && !kinds.contains(&t.kind) {
                let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                k.fail(
                    at.key(key),
                    format!(
                        "is for kind {} (this target is {})",
                        names.join(" or "),
                        t.kind
                    ),
                );
            }
        }
        k.at_least_at(at.key("reconcile_secs"), t.reconcile_secs, 1);
        k.at_least_at(at.key("timeout_secs"), t.timeout_secs, 1);
        match t.kind {
            PublishKind::Dir | PublishKind::Gguf if t.dir.is_none() => k.fail(
                at.key("dir"),
                format!("a `{}` target needs `dir`, the directory it writes", t.kind),
            ),
            PublishKind::Vllm => check_vllm(k, &at, t, has_dir),
            PublishKind::HfHub => check_hub(k, &at, t),
            _ => {}
        }
    }
}

fn check_vllm(k: &mut Checker, at: &KeyPath, t: &PublishConfig, has_dir: bool) {
    if t.urls.is_empty() {
        k.fail(at.key("urls"), "a `vllm` target needs `urls`, its servers");
    }
    for (j, u) in t.urls.iter().enumerate() {
        check_url(k, at.key("urls").index(j), u);
    }
    if !has_dir {
        k.fail(
            at.key("kind"),
            "a `vllm` target loads the files a `dir` target writes: add a [[publish]] of kind \"dir\" \
             on a file system the servers see",
        );
    }
    if t.key_file.is_some() && t.key_env.is_some() {
        k.fail(at.key("key_env"), "set key_file or key_env, not both");
    }
}

fn check_hub(k: &mut Checker, at: &KeyPath, t: &PublishConfig) {
    let ok = t.repo.as_deref().is_some_and(|r| {
        let mut parts = r.split('/');
        let plain = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if plain(a) && plain(b))
    });
    if !ok {
        k.fail(
            at.key("repo"),
            format!(
                "a `hf_hub` target needs `repo` as \"owner/name\" (got {:?})",
                t.repo.as_deref().unwrap_or("")
            ),
        );
    }
    match (&t.token_file, &t.token_env) {
        (None, None) => k.fail(
            at.key("token_file"),
            "a `hf_hub` target needs a write token: token_file or token_env",
        ),
        (Some(_), Some(_)) => k.fail(at.key("token_env"), "set token_file or token_env, not both"),
        _ => {}
    }
    if let Some(e) = &t.endpoint {
        check_url(k, at.key("endpoint"), e);
    }
}
