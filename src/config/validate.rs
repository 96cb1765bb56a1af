//! Checks that serde cannot express: ranges, cron strings, per-kind source keys,
//! paths that must exist. Every problem names the key it is about.

use std::collections::HashSet;
use std::path::Path;

use super::{Config, KeyPath, ON_NEW_STREAM, SourceConfig, SourceKind, SummarizerBackend};
use crate::ml::Arch;

/// Parses a cron expression the way tokio-cron-scheduler does (seconds required,
/// day-of-month and day-of-week both honoured), and checks that it ever fires.
pub fn check_cron(expr: &str) -> Result<(), String> {
    next_fire(expr, &chrono::Utc::now()).map(|_| ())
}

/// The first time after `after` that `expr` fires (UTC).
pub fn next_fire(
    expr: &str,
    after: &chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| {
            format!("invalid cron expression {expr:?} ({e}); expected 6 or 7 fields: sec min hour day-of-month month day-of-week [year], e.g. \"0 */15 * * * *\"")
        })?;
    cron.find_next_occurrence(after, false)
        .map_err(|e| format!("cron expression {expr:?} never fires ({e})"))
}

struct Checker {
    problems: Vec<(KeyPath, String)>,
}

impl Checker {
    fn fail(&mut self, key: KeyPath, msg: impl Into<String>) {
        self.problems.push((key, msg.into()));
    }

    fn at_least<T: PartialOrd + std::fmt::Display + Copy>(&mut self, key: &str, v: T, min: T) {
        if v < min {
            self.fail(
                KeyPath::parse(key),
                format!("must be at least {min} (got {v})"),
            );
        }
    }

    /// `lo < v <= hi` or `lo <= v < hi` and friends, for floats (NaN fails).
    fn range(&mut self, key: KeyPath, v: f64, lo: f64, lo_incl: bool, hi: f64, hi_incl: bool) {
        let ok_lo = if lo_incl { v >= lo } else { v > lo };
        let ok_hi = if hi_incl { v <= hi } else { v < hi };
        if !(v.is_finite() && ok_lo && ok_hi) {
            let l = if lo_incl { '[' } else { '(' };
            let h = if hi_incl { ']' } else { ')' };
            let hi_s = if hi.is_infinite() {
                "inf".to_string()
            } else {
                hi.to_string()
            };
            self.fail(key, format!("must be in {l}{lo}, {hi_s}{h} (got {v})"));
        }
    }

    fn positive(&mut self, key: &str, v: f64) {
        if !(v.is_finite() && v > 0.0) {
            self.fail(
                KeyPath::parse(key),
                format!("must be greater than 0 (got {v})"),
            );
        }
    }

    fn cron(&mut self, key: KeyPath, expr: &str) {
        if let Err(e) = check_cron(expr) {
            self.fail(key, e);
        }
    }

    fn exists(&mut self, key: KeyPath, path: &Path, what: &str) {
        if !path.exists() {
            self.fail(key, format!("{what} {} does not exist", path.display()));
        }
    }
}

pub fn validate(c: &Config) -> Vec<(KeyPath, String)> {
    let mut k = Checker {
        problems: Vec::new(),
    };

    // [store]
    k.at_least("store.busy_timeout_ms", c.store.busy_timeout_ms, 1);

    // [[sources]]
    let mut names = HashSet::new();
    for (i, s) in c.sources.iter().enumerate() {
        let at = KeyPath::root().key("sources").index(i);
        if !names.insert(s.name.as_str()) {
            k.fail(
                at.key("name"),
                format!("duplicate source name {:?}", s.name),
            );
        }
        check_source(&mut k, &at, s);
    }

    // [preprocess]
    let p = &c.preprocess;
    if p.max_answer_chars < p.min_answer_chars {
        k.fail(
            KeyPath::parse("preprocess.max_answer_chars"),
            format!(
                "must be at least preprocess.min_answer_chars ({}), got {}",
                p.min_answer_chars, p.max_answer_chars
            ),
        );
    }

    // [streams]
    k.at_least("streams.min_examples", c.streams.min_examples, 1);
    if c.streams.max_examples < c.streams.min_examples {
        k.fail(
            KeyPath::parse("streams.max_examples"),
            format!(
                "must be at least streams.min_examples ({}), got {}",
                c.streams.min_examples, c.streams.max_examples
            ),
        );
    }
    k.range(
        KeyPath::parse("streams.eval_fraction"),
        c.streams.eval_fraction,
        0.0,
        false,
        1.0,
        false,
    );

    // [summarizer]
    let s = &c.summarizer;
    k.at_least("summarizer.max_answer_tokens", s.max_answer_tokens, 16);
    k.at_least("summarizer.timeout_secs", s.timeout_secs, 1);
    k.range(
        KeyPath::parse("summarizer.temperature"),
        s.temperature,
        0.0,
        true,
        2.0,
        true,
    );
    if s.backend == SummarizerBackend::Openai {
        for (key, v) in [("base_url", &s.base_url), ("model", &s.model)] {
            match v {
                None => k.fail(
                    KeyPath::parse("summarizer").key(key),
                    "required when backend = \"openai\"",
                ),
                Some(url) if key == "base_url" => {
                    check_url(&mut k, KeyPath::parse("summarizer.base_url"), url)
                }
                _ => {}
            }
        }
    }
    if let Err(e) = minijinja::Environment::new().template_from_str(&s.prompt) {
        k.fail(
            KeyPath::parse("summarizer.prompt"),
            format!("invalid template: {e}"),
        );
    }
    if let Some(f) = &s.api_key_file {
        k.exists(KeyPath::parse("summarizer.api_key_file"), f, "file");
    }

    // [model]
    let d = c.model.device.as_str();
    let cuda_index_ok = d
        .strip_prefix("cuda:")
        .is_some_and(|n| n.parse::<usize>().is_ok());
    if !(matches!(d, "auto" | "cpu" | "cuda") || cuda_index_ok) {
        k.fail(
            KeyPath::parse("model.device"),
            format!("must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\" (got {d:?})"),
        );
    }
    if let Some(t) = &c.model.chat_template {
        k.exists(KeyPath::parse("model.chat_template"), t, "file");
    }

    // [lora]
    k.at_least("lora.r", c.lora.r, 1);
    k.positive("lora.alpha", c.lora.alpha);
    k.range(
        KeyPath::parse("lora.dropout"),
        c.lora.dropout,
        0.0,
        true,
        1.0,
        false,
    );
    let modules: Vec<&str> = [Arch::Gpt2, Arch::Llama]
        .iter()
        .flat_map(|a| a.lora_modules().iter().copied())
        .collect();
    for (i, m) in c.lora.target_modules.iter().enumerate() {
        if !modules.contains(&m.as_str()) {
            k.fail(
                KeyPath::parse("lora.target_modules").index(i),
                format!(
                    "unknown module {m:?}; expected one of {}",
                    modules.join(", ")
                ),
            );
        }
    }

    // [train]
    let t = &c.train;
    k.at_least("train.epochs_per_stream", t.epochs_per_stream, 1);
    k.at_least("train.batch_size", t.batch_size, 1);
    k.at_least("train.grad_accum_steps", t.grad_accum_steps, 1);
    k.at_least("train.seq_len", t.seq_len, 8);
    k.positive("train.lr", t.lr);
    k.range(
        KeyPath::parse("train.weight_decay"),
        t.weight_decay,
        0.0,
        true,
        1.0,
        true,
    );
    k.positive("train.max_grad_norm", t.max_grad_norm);
    k.range(
        KeyPath::parse("train.replay_fraction"),
        t.replay_fraction,
        0.0,
        true,
        1.0,
        false,
    );
    k.at_least("train.checkpoint_every", t.checkpoint_every, 1);
    k.at_least("train.log_every", t.log_every, 1);

    // [eval]
    k.at_least("eval.batch_size", c.eval.batch_size, 1);
    if let Some(p) = &c.eval.probe_set {
        k.exists(KeyPath::parse("eval.probe_set"), p, "file");
    }

    // [feedback]
    let f = &c.feedback;
    k.range(
        KeyPath::parse("feedback.max_forgetting"),
        f.max_forgetting,
        0.0,
        true,
        f64::INFINITY,
        false,
    );
    k.at_least("feedback.max_attempts", f.max_attempts, 1);
    k.range(
        KeyPath::parse("feedback.replay_step"),
        f.replay_step,
        0.0,
        true,
        1.0,
        false,
    );
    k.range(
        KeyPath::parse("feedback.replay_max"),
        f.replay_max,
        0.0,
        true,
        1.0,
        false,
    );
    k.range(
        KeyPath::parse("feedback.lr_decay"),
        f.lr_decay,
        0.0,
        false,
        1.0,
        true,
    );

    // [server]
    if c.server.listen.parse::<std::net::SocketAddr>().is_err() {
        k.fail(
            KeyPath::parse("server.listen"),
            format!(
                "must be an address:port such as \"127.0.0.1:8080\" (got {:?})",
                c.server.listen
            ),
        );
    }
    k.at_least("server.max_tokens", c.server.max_tokens, 1);
    k.at_least("server.max_request_bytes", c.server.max_request_bytes, 1024);
    if let Some(f) = &c.server.api_key_file {
        k.exists(KeyPath::parse("server.api_key_file"), f, "file");
    }

    // [schedule]
    let sch = &c.schedule;
    for (key, v) in [
        ("crawl", &sch.crawl),
        ("seal", &sch.seal),
        ("eval", &sch.eval),
    ] {
        if let Some(expr) = v {
            k.cron(KeyPath::parse("schedule").key(key), expr);
        }
    }
    if sch.train != ON_NEW_STREAM {
        k.cron(KeyPath::parse("schedule.train"), &sch.train);
    }

    k.problems
}

fn check_url(k: &mut Checker, key: KeyPath, url: &str) {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        Ok(u) => k.fail(
            key,
            format!("scheme must be http or https (got {:?})", u.scheme()),
        ),
        Err(e) => k.fail(key, format!("invalid URL {url:?}: {e}")),
    }
}

fn check_source(k: &mut Checker, at: &KeyPath, s: &SourceConfig) {
    let name_ok = !s.name.is_empty()
        && s.name.len() <= 64
        && s.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        k.fail(
            at.key("name"),
            format!(
                "must be 1-64 letters, digits, '-' or '_' (got {:?})",
                s.name
            ),
        );
    }
    if let Some(expr) = &s.schedule {
        k.cron(at.key("schedule"), expr);
    }
    if let Some(url) = &s.base_url {
        check_url(k, at.key("base_url"), url);
    }
    for (key, v) in [
        ("timeout_secs", s.timeout_secs),
        ("max_response_bytes", s.max_response_bytes),
        ("backoff_initial_ms", s.backoff_initial_ms),
    ] {
        if v == 0 {
            k.fail(at.key(key), "must be at least 1 (got 0)");
        }
    }
    if s.backoff_max_ms < s.backoff_initial_ms {
        k.fail(
            at.key("backoff_max_ms"),
            format!(
                "must be at least backoff_initial_ms ({}), got {}",
                s.backoff_initial_ms, s.backoff_max_ms
            ),
        );
    }
    k.range(
        at.key("rate_limit_per_sec"),
        s.rate_limit_per_sec,
        0.0,
        false,
        f64::INFINITY,
        false,
    );
    if s.degraded_after == 0 {
        k.fail(at.key("degraded_after"), "must be at least 1 (got 0)");
    }

    // Keys that belong to one kind only.
    let set = |present: bool, key: &'static str| present.then_some(key);
    let hf = [
        set(s.dataset.is_some(), "dataset"),
        set(s.config.is_some(), "config"),
        set(s.split.is_some(), "split"),
        set(s.page_size.is_some(), "page_size"),
        set(s.max_rows_per_run.is_some(), "max_rows_per_run"),
    ];
    let cb = [
        set(s.token_file.is_some(), "token_file"),
        set(s.token_env.is_some(), "token_env"),
        set(s.mode.is_some(), "mode"),
        set(s.topics.is_some(), "topics"),
        set(s.questions.is_some(), "questions"),
        set(s.max_questions_per_run.is_some(), "max_questions_per_run"),
    ];
    let sp = [
        set(s.dir.is_some(), "dir"),
        set(s.format.is_some(), "format"),
        set(s.settle_secs.is_some(), "settle_secs"),
    ];
    let groups: [(SourceKind, &[Option<&str>]); 3] = [
        (SourceKind::HfDatasets, &hf),
        (SourceKind::Crawlbase, &cb),
        (SourceKind::Spool, &sp),
    ];
    for (kind, keys) in groups {
        if kind == s.kind {
            continue;
        }
        for key in keys.iter().flatten() {
            k.fail(
                at.key(key),
                format!(
                    "`{key}` is a key of kind = \"{kind}\" sources, not of kind = \"{}\"",
                    s.kind
                ),
            );
        }
    }

    match s.kind {
        SourceKind::HfDatasets => {
            match &s.dataset {
                None => k.fail(
                    at.key("dataset"),
                    "required for kind = \"hf_datasets\" (e.g. \"toughdata/quora-question-answer-dataset\")",
                ),
                Some(d) if d.trim().is_empty() => k.fail(at.key("dataset"), "must not be empty"),
                Some(_) => {}
            }
            if !(1..=100).contains(&s.page_size()) {
                k.fail(
                    at.key("page_size"),
                    format!(
                        "must be in 1..=100, the rows API's limit (got {})",
                        s.page_size()
                    ),
                );
            }
        }
        SourceKind::Crawlbase => {
            if s.token_file.is_none() && s.token_env.is_none() {
                k.fail(
                    at.key("token_file"),
                    "a Crawlbase source needs `token_file` or `token_env` (the token itself never goes in the config)",
                );
            }
            let list = match s.mode() {
                super::CrawlMode::Topic => ("topics", &s.topics),
                super::CrawlMode::Question => ("questions", &s.questions),
            };
            if list.1.as_ref().is_none_or(|v| v.is_empty()) {
                k.fail(
                    at.key(list.0),
                    format!(
                        "mode = {:?} needs at least one URL in `{}`",
                        s.mode(),
                        list.0
                    ),
                );
            }
            for (i, url) in list.1.iter().flatten().enumerate() {
                check_url(k, at.key(list.0).index(i), url);
            }
        }
        SourceKind::Spool => {
            if let Some(dir) = &s.dir
                && !dir.is_dir()
            {
                k.fail(
                    at.key("dir"),
                    format!("spool directory {} does not exist", dir.display()),
                );
            }
        }
    }
}
