//! Checks that serde cannot express: ranges, cron strings, per-kind source keys,
//! paths that must exist. Every problem names the key it is about.

mod publish;
mod server;

use std::collections::HashSet;
use std::path::Path;

use super::{Config, KeyPath, ON_NEW_STREAM, SummarizerBackend};
use lorastream_ml::Arch;

/// A schedule that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error(
        "invalid cron expression {expr:?} ({reason}); expected 6 or 7 fields: sec min hour day-of-month month day-of-week [year], e.g. \"0 */15 * * * *\""
    )]
    Invalid { expr: String, reason: String },
    #[error("cron expression {expr:?} never fires ({reason})")]
    Never { expr: String, reason: String },
}

/// Parses a cron expression the way tokio-cron-scheduler does (seconds required,
/// day-of-month and day-of-week both honoured), and checks that it ever fires.
pub fn check_cron(expr: &str) -> Result<(), CronError> {
    next_fire(expr, &chrono::Utc::now()).map(|_| ())
}

/// The first time after `after` that `expr` fires (UTC).
pub fn next_fire(
    expr: &str,
    after: &chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, CronError> {
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| CronError::Invalid {
            expr: expr.into(),
            reason: e.to_string(),
        })?;
    cron.find_next_occurrence(after, false)
        .map_err(|e| CronError::Never {
            expr: expr.into(),
            reason: e.to_string(),
        })
}

/// Collects the problems of a config, each with the key it is about.
pub(super) struct Checker {
    problems: Vec<(KeyPath, String)>,
}

impl Checker {
    pub(super) fn fail(&mut self, key: KeyPath, msg: impl Into<String>) {
        self.problems.push((key, msg.into()));
    }

    pub(super) fn at_least<T: PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        key: &str,
        v: T,
        min: T,
    ) {
        self.at_least_at(KeyPath::parse(key), v, min);
    }

    pub(super) fn at_least_at<T: PartialOrd + std::fmt::Display + Copy>(
        &mut self,
        key: KeyPath,
        v: T,
        min: T,
    ) {
        if v < min {
            self.fail(key, format!("must be at least {min} (got {v})"));
        }
    }

    /// `lo < v <= hi` or `lo <= v < hi` and friends, for floats (NaN fails).
    pub(super) fn range(
        &mut self,
        key: KeyPath,
        v: f64,
        lo: f64,
        lo_incl: bool,
        hi: f64,
        hi_incl: bool,
    ) {
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

    pub(super) fn positive(&mut self, key: &str, v: f64) {
        if !(v.is_finite() && v > 0.0) {
            self.fail(
                KeyPath::parse(key),
                format!("must be greater than 0 (got {v})"),
            );
        }
    }

    pub(super) fn cron(&mut self, key: KeyPath, expr: &str) {
        if let Err(e) = check_cron(expr) {
            self.fail(key, e.to_string());
        }
    }

    pub(super) fn exists(&mut self, key: KeyPath, path: &Path, what: &str) {
        if !path.exists() {
            self.fail(key, format!("{what} {} does not exist", path.display()));
        }
    }
}

/// Every problem of `c`, in no particular order (the caller sorts by line).
pub fn validate(c: &Config) -> Vec<(KeyPath, String)> {
    let mut k = Checker {
        problems: Vec::new(),
    };
    k.at_least("daemon.max_item_failures", c.daemon.max_item_failures, 1);
    k.at_least("daemon.stall_secs", c.daemon.stall_secs, 1);
    check_sources(&mut k, c);
    check_store(&mut k, c);
    check_preprocess(&mut k, c);
    check_streams(&mut k, c);
    check_summarizer(&mut k, c);
    check_model(&mut k, c);
    check_lora(&mut k, c);
    check_train(&mut k, c);
    check_eval(&mut k, c);
    check_feedback(&mut k, c);
    server::check(&mut k, &c.server);
    publish::check(&mut k, c);
    check_schedule(&mut k, c);
    k.problems
}

/// Fails each `[[table]]` entry whose name an earlier one has.
fn unique_names<'a>(
    k: &mut Checker,
    table: &str,
    what: &str,
    names: impl Iterator<Item = &'a str>,
) {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if !seen.insert(name) {
            let at = KeyPath::root().key(table).index(i).key("name");
            k.fail(at, format!("duplicate {what} name {name:?}"));
        }
    }
}

/// `[[sources]]`: names unique, each source checked by its own rules.
fn check_sources(k: &mut Checker, c: &Config) {
    unique_names(
        k,
        "sources",
        "source",
        c.sources.iter().map(|s| s.name.as_str()),
    );
    for (i, s) in c.sources.iter().enumerate() {
        s.check(k, &KeyPath::root().key("sources").index(i));
    }
}

/// `[store]`
fn check_store(k: &mut Checker, c: &Config) {
    k.at_least("store.busy_timeout_ms", c.store.busy_timeout_ms, 1);
}

/// `[preprocess]`
fn check_preprocess(k: &mut Checker, c: &Config) {
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
}

/// `[streams]`
fn check_streams(k: &mut Checker, c: &Config) {
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
    k.at_least("streams.min_eval_examples", c.streams.min_eval_examples, 1);
}

/// `[summarizer]`
fn check_summarizer(k: &mut Checker, c: &Config) {
    let s = &c.summarizer;
    k.at_least("summarizer.max_answer_tokens", s.max_answer_tokens, 16);
    k.at_least("summarizer.timeout_secs", s.timeout_secs, 1);
    k.at_least("summarizer.breaker_failures", s.breaker_failures, 1);
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
                    check_url(k, KeyPath::parse("summarizer.base_url"), url)
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
}

/// `[model]`
fn check_model(k: &mut Checker, c: &Config) {
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
    // `path:` and `gguf:` sources may be filled after the config is written;
    // loading names a missing one.
}

/// `[lora]`
fn check_lora(k: &mut Checker, c: &Config) {
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
    let mut modules: Vec<&str> = Arch::ALL
        .iter()
        .flat_map(|a| a.lora_modules().iter().copied())
        .collect();
    modules.push(lorastream_ml::nn::lora::ALL_LINEAR);
    let all = c
        .lora
        .target_modules
        .iter()
        .any(|m| m == lorastream_ml::nn::lora::ALL_LINEAR);
    if all && c.lora.target_modules.len() > 1 {
        k.fail(
            KeyPath::parse("lora.target_modules"),
            "\"all-linear\" stands alone: it already names every linear layer",
        );
    }
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
}

/// `[train]`
fn check_train(k: &mut Checker, c: &Config) {
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
    k.range(
        KeyPath::parse("train.validation_fraction"),
        t.validation_fraction,
        0.0,
        true,
        0.5,
        true,
    );
    k.at_least("train.max_nonfinite_steps", t.max_nonfinite_steps, 1);
}

/// `[eval]`
fn check_eval(k: &mut Checker, c: &Config) {
    k.at_least("eval.batch_size", c.eval.batch_size, 1);
    if let Some(p) = &c.eval.probe_set {
        k.exists(KeyPath::parse("eval.probe_set"), p, "file");
    }
}

/// `[feedback]`
fn check_feedback(k: &mut Checker, c: &Config) {
    let f = &c.feedback;
    k.range(
        KeyPath::parse("feedback.max_forgetting"),
        f.max_forgetting,
        0.0,
        true,
        f64::INFINITY,
        false,
    );
    for (key, v) in [
        ("feedback.min_gain", f.min_gain),
        ("feedback.max_probe_increase", f.max_probe_increase),
    ] {
        k.range(KeyPath::parse(key), v, 0.0, true, f64::INFINITY, false);
    }
    k.at_least("feedback.max_attempts", f.max_attempts, 1);
    k.at_least("feedback.merge_every", f.merge_every, 1);
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
    let at = KeyPath::parse;
    k.range(at("feedback.lr_raise"), f.lr_raise, 1.0, true, 10.0, true);
    k.range(
        at("feedback.known_gain"),
        f.known_gain,
        0.0,
        true,
        1.0,
        false,
    );
    k.range(
        at("feedback.known_min_gain"),
        f.known_min_gain,
        0.0,
        true,
        1.0,
        false,
    );
    k.range(
        at("feedback.confidence"),
        f.confidence,
        0.5,
        true,
        1.0,
        false,
    );
}

/// `[schedule]`
fn check_schedule(k: &mut Checker, c: &Config) {
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
}

pub(super) fn check_url(k: &mut Checker, key: KeyPath, url: &str) {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => {}
        Ok(u) => k.fail(
            key,
            format!("scheme must be http or https (got {:?})", u.scheme()),
        ),
        Err(e) => k.fail(key, format!("invalid URL {url:?}: {e}")),
    }
}
