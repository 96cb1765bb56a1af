//! The TOML configuration: one struct per section, every key with a default,
//! unknown keys refused, and errors that name the file, the key and the line.
//!
//! `config/lorastream.toml` is the commented reference of every key; a test keeps
//! it complete. Relative paths are resolved against the directory of the config
//! file, so the meaning of a config does not depend on the daemon's working
//! directory.

mod locate;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use locate::{KeyPath, LineCol, SpanIndex};

/// Where the daemon keeps its state when neither the config nor systemd says.
const STATE_DIR_NAME: &str = "lorastream";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub store: StoreConfig,
    pub sources: Vec<SourceConfig>,
    pub preprocess: PreprocessConfig,
    pub streams: StreamsConfig,
    pub summarizer: SummarizerConfig,
    pub model: ModelConfig,
    pub lora: LoraConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    pub feedback: FeedbackConfig,
    pub server: ServerConfig,
    pub schedule: ScheduleConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// State directory. Unset: `$STATE_DIRECTORY` (systemd), else
    /// `$XDG_STATE_HOME/lorastream`, else `~/.local/state/lorastream`.
    pub state_dir: Option<PathBuf>,
    /// Seconds SIGTERM waits for the current step to finish and checkpoint.
    pub shutdown_grace_secs: u64,
    /// Log format when `--log-format` is not given.
    pub log_format: LogFormat,
    /// Log filter (`RUST_LOG` syntax) when neither `RUST_LOG` nor `-v/-q` is given.
    pub log_filter: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: None,
            shutdown_grace_secs: 30,
            log_format: LogFormat::Auto,
            log_filter: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human format with colours on a terminal, plain text otherwise.
    Auto,
    /// Human format, colours only on a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLite file. Unset: `<state_dir>/lorastream.db`.
    pub path: Option<PathBuf>,
    /// How long a writer waits for a lock before failing, in milliseconds.
    pub busy_timeout_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: None,
            busy_timeout_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Hugging Face datasets-server rows API.
    HfDatasets,
    /// Quora through the Crawlbase Crawling API.
    Crawlbase,
    /// A directory where JSON / JSONL / CSV exports are dropped.
    Spool,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::HfDatasets => "hf_datasets",
            SourceKind::Crawlbase => "crawlbase",
            SourceKind::Spool => "spool",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CrawlMode {
    /// Fetch topic pages and follow the question links found in them.
    Topic,
    /// Fetch the configured question URLs only.
    Question,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFormat {
    /// By file extension: `.json`, `.jsonl`/`.ndjson`, `.csv`.
    Auto,
    Json,
    Jsonl,
    Csv,
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
        }
    }

    /// The public endpoint of the kind, unless `base_url` overrides it.
    pub fn base_url(&self) -> &str {
        self.base_url.as_deref().unwrap_or(match self.kind {
            SourceKind::HfDatasets => "https://datasets-server.huggingface.co",
            SourceKind::Crawlbase => "https://api.crawlbase.com",
            SourceKind::Spool => "",
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    pub min_question_chars: usize,
    pub min_answer_chars: usize,
    pub max_answer_chars: usize,
    /// Drop answers with fewer upvotes (unset: keep all).
    pub min_upvotes: Option<i64>,
    /// Remove Quora boilerplate ("Continue Reading", "Related", "Sponsored").
    pub strip_boilerplate: bool,
    /// Replace e-mail addresses and phone numbers with placeholders.
    pub scrub_pii: bool,
    /// Also drop pairs equal after case, punctuation and whitespace folding.
    pub dedup_normalized: bool,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            min_question_chars: 10,
            min_answer_chars: 20,
            max_answer_chars: 20_000,
            min_upvotes: None,
            strip_boilerplate: true,
            scrub_pii: true,
            dedup_normalized: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsConfig {
    /// Seal a stream once this many examples are ready.
    pub min_examples: usize,
    /// At most this many examples go into one stream; the rest wait for the next.
    pub max_examples: usize,
    /// Share of each stream held out for evaluation (by a hash of the example).
    pub eval_fraction: f64,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            min_examples: 50,
            max_examples: 2000,
            eval_fraction: 0.1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SummarizerBackend {
    /// Sentence ranking by centrality, no model.
    Extractive,
    /// An OpenAI-compatible `/v1/chat/completions` endpoint, extractive on error.
    Openai,
    /// Answers over the budget are kept as they are.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SummarizerConfig {
    pub backend: SummarizerBackend,
    /// Answers longer than this many tokens are condensed.
    pub max_answer_tokens: usize,
    pub base_url: Option<String>,
    pub model: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub api_key_env: Option<String>,
    pub timeout_secs: u64,
    pub temperature: f64,
    /// minijinja template; sees `answer`, `question` and `max_tokens`.
    pub prompt: String,
}

impl Default for SummarizerConfig {
    fn default() -> Self {
        SummarizerConfig {
            backend: SummarizerBackend::Extractive,
            max_answer_tokens: 256,
            base_url: None,
            model: None,
            api_key_file: None,
            api_key_env: None,
            timeout_secs: 60,
            temperature: 0.2,
            prompt:
                "Condense this answer to the question below into at most {{ max_tokens }} tokens. \
                     Keep the facts and the author's advice; do not add anything.\n\n\
                     Question: {{ question }}\n\nAnswer: {{ answer }}"
                    .into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    /// bf16 on CUDA, f32 on CPU.
    Auto,
    F32,
    Bf16,
    F16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Base model directory in Hugging Face layout. Unset: `<state_dir>/model`.
    pub path: Option<PathBuf>,
    /// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    pub dtype: DType,
    /// Intra-op threads for CPU tensor work; 0 = number of cores.
    pub threads: usize,
    /// A Jinja chat template file that overrides the model's own.
    pub chat_template: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: None,
            device: "auto".into(),
            dtype: DType::Auto,
            threads: 0,
            chat_template: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// PEFT module names; empty = the architecture's default
    /// (`c_attn` for GPT-2, `q_proj`,`v_proj` for Llama).
    pub target_modules: Vec<String>,
    /// Scale by alpha/sqrt(r) instead of alpha/r.
    pub rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: Vec::new(),
            rslora: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainStrategy {
    /// One adapter carried across streams.
    Continue,
    /// Merge each promoted adapter into the base and start a fresh one.
    MergeEach,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossOn {
    /// Assistant tokens only.
    Assistant,
    /// Every non-pad token.
    All,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub strategy: TrainStrategy,
    pub epochs_per_stream: usize,
    pub batch_size: usize,
    pub grad_accum_steps: usize,
    /// Examples are truncated to this many tokens.
    pub seq_len: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub max_grad_norm: f64,
    pub loss_on: LossOn,
    /// Pack several examples into one sequence instead of padding.
    pub packing: bool,
    /// Share of each batch drawn from earlier streams.
    pub replay_fraction: f64,
    /// Examples kept (reservoir-sampled) from earlier streams for replay.
    pub replay_buffer: usize,
    pub checkpoint_every: usize,
    /// Log a progress line every this many optimizer steps.
    pub log_every: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            strategy: TrainStrategy::Continue,
            epochs_per_stream: 3,
            batch_size: 4,
            grad_accum_steps: 1,
            seq_len: 256,
            lr: 2e-4,
            weight_decay: 0.0,
            warmup_steps: 10,
            max_grad_norm: 1.0,
            loss_on: LossOn::Assistant,
            packing: false,
            replay_fraction: 0.0,
            replay_buffer: 2000,
            checkpoint_every: 50,
            log_every: 10,
            seed: 42,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub batch_size: usize,
    /// Evaluate at most this many examples of each stream's eval split; 0 = all.
    pub max_examples_per_stream: usize,
    /// JSONL of chat examples measuring what the base model knew.
    pub probe_set: Option<PathBuf>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            batch_size: 8,
            max_examples_per_stream: 200,
            probe_set: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// Largest allowed relative perplexity increase on any earlier stream.
    pub max_forgetting: f64,
    /// Also require the new stream's perplexity to improve on the served adapter's.
    pub require_improvement: bool,
    /// Training attempts per stream before the candidate is rejected.
    pub max_attempts: usize,
    /// Added to `train.replay_fraction` on each retry.
    pub replay_step: f64,
    pub replay_max: f64,
    /// The learning rate is multiplied by this on each retry.
    pub lr_decay: f64,
    /// Merge a promoted adapter into the base model.
    pub merge_on_promote: bool,
}

impl Default for FeedbackConfig {
    fn default() -> Self {
        FeedbackConfig {
            max_forgetting: 0.10,
            require_improvement: true,
            max_attempts: 3,
            replay_step: 0.1,
            replay_max: 0.5,
            lr_decay: 0.5,
            merge_on_promote: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub enabled: bool,
    pub listen: String,
    /// Bearer token required from clients (file or env; unset: no auth).
    pub api_key_file: Option<PathBuf>,
    pub api_key_env: Option<String>,
    /// The model id clients see in `/v1/models`.
    pub model_name: String,
    pub max_tokens: usize,
    pub max_request_bytes: usize,
    /// Retrieve relevant past messages into the prompt.
    pub memory: bool,
    pub memory_results: usize,
    /// Turn opted-in conversations into training examples.
    pub learn_from_conversations: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            api_key_file: None,
            api_key_env: None,
            model_name: "lorastream".into(),
            max_tokens: 256,
            max_request_bytes: 1 << 20,
            memory: true,
            memory_results: 4,
            learn_from_conversations: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Cron (with seconds, UTC) for sources without their own `schedule`.
    pub crawl: Option<String>,
    /// Cron for sealing ready examples into a stream.
    pub seal: Option<String>,
    /// `on_new_stream` or a cron expression.
    pub train: String,
    /// Cron for filling missing cells of the evaluation matrix.
    pub eval: Option<String>,
    /// Run every enabled source once when the daemon starts (and after a
    /// reload adds one), instead of waiting for its first scheduled time.
    pub crawl_on_start: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            crawl: None,
            seal: None,
            train: ON_NEW_STREAM.into(),
            eval: None,
            crawl_on_start: true,
        }
    }
}

/// The value of `[schedule] train` that trains as soon as a stream is sealed.
pub const ON_NEW_STREAM: &str = "on_new_stream";

/// A config problem tied to a place in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: KeyPath,
    pub line: Option<LineCol>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| match p.line {
            Some(lc) => format!(
                "{}:{}:{}: `{}`: {}",
                path.display(),
                lc.line,
                lc.col,
                p.key,
                p.message
            ),
            None => format!("{}: `{}`: {}", path.display(), p.key, p.message),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads, parses, validates and resolves a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Config::from_toml(&text, base).map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates `text`; relative paths are resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, Vec<Problem>> {
        let index = SpanIndex::new(text);
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start);
            let key = offset
                .and_then(|o| index.path_at(o))
                .unwrap_or_else(KeyPath::root);
            vec![Problem {
                key,
                line: offset.map(|o| index.line_col(o)),
                message: e.message().trim().to_owned(),
            }]
        })?;
        config.resolve_paths(base);
        let mut problems: Vec<Problem> = validate::validate(&config)
            .into_iter()
            .map(|(key, message)| Problem {
                line: index.locate(&key),
                key,
                message,
            })
            .collect();
        problems.sort_by_key(|p| p.line.map(|l| (l.line, l.col)));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let abs_opt = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                abs(p)
            }
        };
        abs_opt(&mut self.daemon.state_dir);
        abs_opt(&mut self.store.path);
        abs_opt(&mut self.summarizer.api_key_file);
        abs_opt(&mut self.model.path);
        abs_opt(&mut self.model.chat_template);
        abs_opt(&mut self.eval.probe_set);
        abs_opt(&mut self.server.api_key_file);
        for s in &mut self.sources {
            abs_opt(&mut s.token_file);
            abs_opt(&mut s.dir);
        }
    }

    /// The effective state directory (see [`DaemonConfig::state_dir`]).
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.daemon.state_dir {
            return dir.clone();
        }
        default_state_dir(|k| std::env::var_os(k))
    }

    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.state_dir().join("lorastream.db"))
    }

    pub fn model_path(&self) -> PathBuf {
        self.model
            .path
            .clone()
            .unwrap_or_else(|| self.state_dir().join("model"))
    }

    /// A one-line description for `config check` and the start-up log.
    pub fn summary(&self) -> String {
        let enabled = self.sources.iter().filter(|s| s.enabled).count();
        let kinds: Vec<String> = self
            .sources
            .iter()
            .map(|s| format!("{}:{}", s.name, s.kind))
            .collect();
        format!(
            "{} sources ({} enabled{}{}), state_dir {}, model {}, lora r={} alpha={}, train lr={} epochs={}, train schedule {}, server {}",
            self.sources.len(),
            enabled,
            if kinds.is_empty() { "" } else { ": " },
            kinds.join(", "),
            self.state_dir().display(),
            self.model_path().display(),
            self.lora.r,
            self.lora.alpha,
            self.train.lr,
            self.train.epochs_per_stream,
            self.schedule.train,
            if self.server.enabled {
                self.server.listen.as_str()
            } else {
                "disabled"
            },
        )
    }
}

/// `$STATE_DIRECTORY` (first entry), `$XDG_STATE_HOME/lorastream`,
/// `$HOME/.local/state/lorastream`, else `./state`.
fn default_state_dir(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    if let Some(dirs) = env("STATE_DIRECTORY")
        && let Some(first) = dirs.to_string_lossy().split(':').find(|s| !s.is_empty())
    {
        return PathBuf::from(first);
    }
    if let Some(x) = env("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join(STATE_DIR_NAME);
    }
    if let Some(home) = env("HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(home)
            .join(".local/state")
            .join(STATE_DIR_NAME);
    }
    PathBuf::from("state")
}

#[cfg(test)]
mod tests {
    use super::*;
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
            "[daemon]\nstate_dir = \"state\"\n[model]\npath = \"/abs/model\"\n",
            Path::new("/etc/lorastream"),
        )
        .unwrap();
        assert_eq!(c.state_dir(), PathBuf::from("/etc/lorastream/state"));
        assert_eq!(
            c.store_path(),
            PathBuf::from("/etc/lorastream/state/lorastream.db")
        );
        assert_eq!(c.model_path(), PathBuf::from("/abs/model"));
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
}
