//! Config tests: defaults, path resolution, the example file, error locations.

use super::*;
use lorastream_ml::load::source::ModelSource;
use std::ffi::OsString;

fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
    move |k| {
        pairs
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| OsString::from(v))
    }
}

#[test]
fn state_dir_precedence() {
    let d = default_state_dir(env(&[
        ("STATE_DIRECTORY", "/var/lib/lorastream:/var/lib/other"),
        ("HOME", "/home/u"),
    ]));
    assert_eq!(d, PathBuf::from("/var/lib/lorastream"));
    let d = default_state_dir(env(&[("XDG_STATE_HOME", "/x"), ("HOME", "/home/u")]));
    assert_eq!(d, PathBuf::from("/x/lorastream"));
    let d = default_state_dir(env(&[("HOME", "/home/u")]));
    assert_eq!(d, PathBuf::from("/home/u/.local/state/lorastream"));
    assert_eq!(default_state_dir(env(&[])), PathBuf::from("state"));
}

#[test]
fn empty_config_is_all_defaults() {
    let c = Config::from_toml("", Path::new("/etc/lorastream")).unwrap();
    assert_eq!(c.train.epochs_per_stream, 3);
    assert_eq!(c.schedule.train, ON_NEW_STREAM);
    assert!(c.sources.is_empty());
}

#[test]
fn relative_paths_resolve_against_config_dir() {
    let c = Config::from_toml(
        "[daemon]\nstate_dir = \"state\"\n[model]\nsource = \"path:model\"\ngguf_fallback = \"m.gguf\"\n",
        Path::new("/etc/lorastream"),
    )
    .unwrap();
    assert_eq!(c.state_dir(), PathBuf::from("/etc/lorastream/state"));
    assert_eq!(
        c.store_path(),
        PathBuf::from("/etc/lorastream/state/lorastream.db")
    );
    assert_eq!(
        c.model.source,
        ModelSource::Path(PathBuf::from("/etc/lorastream/model"))
    );
    assert_eq!(
        c.model.gguf_fallback,
        Some(PathBuf::from("/etc/lorastream/m.gguf"))
    );
}

#[test]
fn serde_errors_name_key_and_line() {
    let p = Config::from_toml(
        "[train]\nepochs_per_stream = 2\nlrr = 0.1\n",
        Path::new("."),
    )
    .unwrap_err();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].key.to_string(), "train.lrr");
    assert_eq!(p[0].line.unwrap().line, 3);
    assert!(p[0].message.contains("unknown field"), "{}", p[0].message);
}

fn leaf_keys(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if v.is_object()
                    || v.as_array()
                        .is_some_and(|a| a.iter().any(|x| x.is_object()))
                {
                    leaf_keys(v, out);
                } else {
                    out.insert(k.clone());
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| leaf_keys(x, out)),
        _ => {}
    }
}

/// A key is documented when a line, commented or not, starts with it.
fn documented(text: &str, key: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start_matches(['#', ' ']);
        l.strip_prefix(key)
            .is_some_and(|rest| rest.starts_with([' ', '=']))
    })
}

#[test]
fn example_config_documents_every_key_and_section() {
    let text = include_str!("../../config/lorastream.toml");
    let mut c = Config::default();
    for kind in [
        SourceKind::HfDatasets,
        SourceKind::Crawlbase,
        SourceKind::Spool,
    ] {
        c.sources.push(SourceConfig::new("x", kind));
    }
    c.server.keys.push(crate::config::KeyConfig {
        name: "alice".into(),
        key_file: Some("k".into()),
        key_env: Some("K".into()),
        role: crate::config::KeyRole::User,
        rpm: Some(1),
        max_concurrent: Some(1),
        learn: false,
    });
    let mut t = crate::config::PublishConfig::new("shared", crate::config::PublishKind::Dir);
    t.dir = Some("d".into());
    t.base_model = Some("m".into());
    t.keep = Some(2);
    t.urls = vec!["u".into()];
    t.lora_path_prefix = Some("p".into());
    t.key_file = Some("k".into());
    t.key_env = Some("K".into());
    t.repo = Some("r".into());
    t.private = Some(true);
    t.token_file = Some("t".into());
    t.token_env = Some("T".into());
    t.endpoint = Some("e".into());
    c.publish.push(t);
    let v = serde_json::to_value(&c).unwrap();
    for section in v.as_object().unwrap().keys() {
        assert!(
            text.contains(&format!("[{section}]")) || text.contains(&format!("[[{section}]]")),
            "section [{section}] missing from config/lorastream.toml"
        );
    }
    let mut keys = std::collections::BTreeSet::new();
    leaf_keys(&v, &mut keys);
    assert!(keys.len() > 80, "{keys:?}");
    let missing: Vec<&String> = keys.iter().filter(|k| !documented(text, k)).collect();
    assert!(
        missing.is_empty(),
        "undocumented keys in config/lorastream.toml: {missing:?}"
    );
}

#[test]
fn example_config_values_are_the_defaults() {
    let text = include_str!("../../config/lorastream.toml");
    let c = Config::from_toml(text, Path::new("/etc/lorastream")).unwrap();
    let d = Config::default();
    let sections = |c: &Config| {
        serde_json::to_value((
            &c.daemon,
            &c.store,
            &c.preprocess,
            &c.streams,
            &c.summarizer,
            &c.model,
            &c.lora,
            &c.train,
            &c.eval,
            &c.feedback,
            &c.server,
        ))
        .unwrap()
    };
    assert_eq!(
        sections(&c),
        sections(&d),
        "an uncommented value in the example differs from its default"
    );
}

#[test]
fn systemd_unit_waits_longer_than_the_shutdown_deadline() {
    let unit = include_str!("../../systemd/lorastream.service");
    let secs: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec in the unit")
        .trim()
        .parse()
        .unwrap();
    let d = DaemonConfig::default();
    assert!(
        secs >= d.shutdown_deadline().as_secs() + 10,
        "TimeoutStopSec={secs} leaves no time after the {} s shutdown deadline",
        d.shutdown_deadline().as_secs()
    );
    assert!(
        unit.contains(&format!(
            "shutdown_grace_secs (default {})",
            d.shutdown_grace_secs
        )),
        "the unit's comment names another default grace"
    );
}

#[test]
fn publish_targets_and_the_gateway_are_checked_by_kind() {
    let problems = |text: &str| -> Vec<String> {
        match Config::from_toml(text, Path::new("/etc/lorastream")) {
            Ok(_) => Vec::new(),
            Err(p) => p
                .iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect(),
        }
    };
    let p = problems("[[publish]]\nname = \"f\"\nkind = \"vllm\"\nrepo = \"a/b\"\n");
    let all = p.join("\n");
    assert!(
        all.contains("publish[0].urls: a `vllm` target needs `urls`"),
        "{all}"
    );
    assert!(
        all.contains("publish[0].kind: a `vllm` target loads the files a `dir` target writes"),
        "{all}"
    );
    assert!(
        all.contains("publish[0].repo: is for kind hf_hub (this target is vllm)"),
        "{all}"
    );
    let p =
        problems("[[publish]]\nname = \"h\"\nkind = \"hf_hub\"\nrepo = \"no-owner\"\n").join("\n");
    assert!(
        p.contains("\"owner/name\"") && p.contains("write token"),
        "{p}"
    );
    let p = problems("[[publish]]\nname = \"g\"\nkind = \"gguf\"\n").join("\n");
    assert!(p.contains("a `gguf` target needs `dir`"), "{p}");
    let ok = "[[publish]]\nname = \"d\"\nkind = \"dir\"\ndir = \"out\"\n\
              [[publish]]\nname = \"f\"\nkind = \"vllm\"\nurls = [\"http://v:8000\"]\n";
    assert_eq!(problems(ok), Vec::<String>::new());
    let p = problems("[server]\nbackend = \"vllm\"\n").join("\n");
    assert!(
        p.contains("server.backend_url: backend = \"vllm\" needs backend_url"),
        "{p}"
    );
    let p = problems("[server]\nbackend_url = \"http://v:8000\"\n").join("\n");
    assert!(p.contains("is for backend = \"vllm\""), "{p}");
}
