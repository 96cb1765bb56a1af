//! `[[sources]]`: one entry per source, with the keys every kind shares and
//! those of one kind (refused on the others), and the checks serde cannot express.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use lorastream_store::SourceKind;

use super::KeyPath;
use super::validate::{Checker, check_url};
use lorastream_base::text_enum;

text_enum! {
    pub enum CrawlMode {
        /// Fetch topic pages and follow the question links found in them.
        Topic = "topic",
        /// Fetch the configured question URLs only.
        Question = "question",
    }
}

text_enum! {
    pub enum SpoolFormat {
        /// By file extension: `.json`, `.jsonl`/`.ndjson`, `.csv`.
        Auto = "auto",
        Json = "json",
        Jsonl = "jsonl",
        Csv = "csv",
    }
}

/// Which record fields hold what. Names are the dataset's column or JSON keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldMap {
    pub question: String,
    pub answer: String,
    pub upvotes: Option<String>,
    pub comment_count: Option<String>,
    pub shares: Option<String>,
    pub date: Option<String>,
    pub url: Option<String>,
}

impl Default for FieldMap {
    fn default() -> Self {
        FieldMap {
            question: "question".into(),
            answer: "answer".into(),
            upvotes: None,
            comment_count: None,
            shares: None,
            date: None,
            url: None,
        }
    }
}

/// One `[[sources]]` entry. Keys of the other kinds are refused, so a typo in
/// `kind` cannot silently drop settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique name: letters, digits, `-` and `_`. Stored with every item.
    pub name: String,
    pub kind: SourceKind,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Cron expression with seconds (`sec min hour dom mon dow`), UTC.
    /// Unset: the source runs on `[schedule] crawl` and on demand.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Overrides the kind's public endpoint (tests point it at 127.0.0.1).
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default = "SourceConfig::default_timeout_secs")]
    pub timeout_secs: u64,
    #[serde(default = "SourceConfig::default_max_retries")]
    pub max_retries: u32,
    #[serde(default = "SourceConfig::default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    #[serde(default = "SourceConfig::default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Requests per second to one host.
    #[serde(default = "SourceConfig::default_rate_limit_per_sec")]
    pub rate_limit_per_sec: f64,
    #[serde(default = "SourceConfig::default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Consecutive failed runs after which the source is marked degraded.
    #[serde(default = "SourceConfig::default_degraded_after")]
    pub degraded_after: u32,
    #[serde(default)]
    pub fields: FieldMap,

    // hf_datasets
    #[serde(default)]
    pub dataset: Option<String>,
    #[serde(default)]
    pub config: Option<String>,
    #[serde(default)]
    pub split: Option<String>,
    #[serde(default)]
    pub page_size: Option<u32>,
    #[serde(default)]
    pub max_rows_per_run: Option<u64>,

    // crawlbase
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub mode: Option<CrawlMode>,
    #[serde(default)]
    pub topics: Option<Vec<String>>,
    #[serde(default)]
    pub questions: Option<Vec<String>>,
    #[serde(default)]
    pub max_questions_per_run: Option<u32>,

    // spool
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub format: Option<SpoolFormat>,
    #[serde(default)]
    pub settle_secs: Option<u64>,
    /// A larger dropped file is refused to `failed/` without being read.
    #[serde(default)]
    pub max_file_bytes: Option<u64>,
}

fn yes() -> bool {
    true
}

impl SourceConfig {
    fn default_timeout_secs() -> u64 {
        30
    }
    fn default_max_retries() -> u32 {
        5
    }
    fn default_backoff_initial_ms() -> u64 {
        500
    }
    fn default_backoff_max_ms() -> u64 {
        60_000
    }
    fn default_rate_limit_per_sec() -> f64 {
        1.0
    }
    fn default_max_response_bytes() -> u64 {
        16 << 20
    }
    fn default_degraded_after() -> u32 {
        3
    }

    /// A source of `kind` with every shared key at its default.
    pub fn new(name: &str, kind: SourceKind) -> Self {
        SourceConfig {
            name: name.into(),
            kind,
            enabled: true,
            schedule: None,
            base_url: None,
            timeout_secs: Self::default_timeout_secs(),
            max_retries: Self::default_max_retries(),
            backoff_initial_ms: Self::default_backoff_initial_ms(),
            backoff_max_ms: Self::default_backoff_max_ms(),
            rate_limit_per_sec: Self::default_rate_limit_per_sec(),
            max_response_bytes: Self::default_max_response_bytes(),
            degraded_after: Self::default_degraded_after(),
            fields: FieldMap::default(),
            dataset: None,
            config: None,
            split: None,
            page_size: None,
            max_rows_per_run: None,
            token_file: None,
            token_env: None,
            mode: None,
            topics: None,
            questions: None,
            max_questions_per_run: None,
            dir: None,
            format: None,
            settle_secs: None,
            max_file_bytes: None,
        }
    }

    /// The public endpoint of the kind, unless `base_url` overrides it.
    pub fn base_url(&self) -> &str {
        self.base_url.as_deref().unwrap_or(match self.kind {
            SourceKind::HfDatasets => "https://datasets-server.huggingface.co",
            SourceKind::Crawlbase => "https://api.crawlbase.com",
            SourceKind::Spool | SourceKind::Conversations => "",
        })
    }
    pub fn dataset_config(&self) -> &str {
        self.config.as_deref().unwrap_or("default")
    }
    pub fn split(&self) -> &str {
        self.split.as_deref().unwrap_or("train")
    }
    pub fn page_size(&self) -> u32 {
        self.page_size.unwrap_or(100)
    }
    pub fn max_rows_per_run(&self) -> u64 {
        self.max_rows_per_run.unwrap_or(1000)
    }
    pub fn mode(&self) -> CrawlMode {
        self.mode.unwrap_or(CrawlMode::Topic)
    }
    pub fn max_questions_per_run(&self) -> u32 {
        self.max_questions_per_run.unwrap_or(50)
    }
    /// The spool directory; unset: `<state_dir>/spool/<name>`.
    pub fn spool_dir(&self, state_dir: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| state_dir.join("spool").join(&self.name))
    }
    pub fn spool_format(&self) -> SpoolFormat {
        self.format.unwrap_or(SpoolFormat::Auto)
    }
    pub fn settle_secs(&self) -> u64 {
        self.settle_secs.unwrap_or(5)
    }
    /// Default 1 GiB: files are read in a streaming pass and stored in chunks,
    /// so this bounds the time and disk one drop takes, not memory.
    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes.unwrap_or(1 << 30)
    }
}

impl SourceConfig {
    /// Every problem of this source: shared keys, keys of another kind, the
    /// kind's own requirements.
    pub(super) fn check(&self, k: &mut Checker, at: &KeyPath) {
        self.check_shared(k, at);
        self.check_kind_keys(k, at);
        match self.kind {
            SourceKind::HfDatasets => self.check_hf(k, at),
            SourceKind::Crawlbase => self.check_crawlbase(k, at),
            SourceKind::Spool => self.check_spool(k, at),
            SourceKind::Conversations => k.fail(
                at.key("kind"),
                "the conversations source is built in: set [server] learn_from_conversations = true instead",
            ),
        }
    }

    fn check_shared(&self, k: &mut Checker, at: &KeyPath) {
        let s = self;

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
    }

    /// Keys that belong to one kind only are refused on the others.
    fn check_kind_keys(&self, k: &mut Checker, at: &KeyPath) {
        let s = self;
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
            set(s.max_file_bytes.is_some(), "max_file_bytes"),
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
    }

    fn check_hf(&self, k: &mut Checker, at: &KeyPath) {
        let s = self;
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

    fn check_crawlbase(&self, k: &mut Checker, at: &KeyPath) {
        let s = self;
        if s.token_file.is_none() && s.token_env.is_none() {
            k.fail(
            at.key("token_file"),
            "a Crawlbase source needs `token_file` or `token_env` (the token itself never goes in the config)",
        );
        }
        let list = match s.mode() {
            CrawlMode::Topic => ("topics", &s.topics),
            CrawlMode::Question => ("questions", &s.questions),
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

    fn check_spool(&self, k: &mut Checker, at: &KeyPath) {
        let s = self;
        if let Some(dir) = &s.dir {
            if !dir.is_dir() {
                k.fail(
                    at.key("dir"),
                    format!("spool directory {} does not exist", dir.display()),
                );
            } else if let Err(e) = lorastream_base::fsutil::check_writable(dir) {
                // Under systemd's ProtectSystem=strict a directory outside the
                // state dir is read-only: files would be stored, never moved.
                k.fail(
                    at.key("dir"),
                    format!(
                        "spool directory {} is not writable by this process ({e}): ingested files could not be moved to done/; \
                         under systemd add ReadWritePaths={} to the unit",
                        dir.display(),
                        dir.display()
                    ),
                );
            }
        }
        if s.max_file_bytes == Some(0) {
            k.fail(at.key("max_file_bytes"), "must be at least 1");
        }
    }
}
