//! The command line's arguments (clap). Library types stay free of clap:
//! enums with a `text_enum!` spelling are parsed through [`text_enum_parser`].

use std::path::PathBuf;
use std::str::FromStr;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};

use lorastream::config::LogFormat;
use lorastream_base::text_enum::UnknownVariant;
use lorastream_ml::models::init::Preset;
use lorastream_ml::{Arch, DType};

use super::bench::{EvalArgs, GenerateArgs, TrainArgs};
use super::bench_chat::ChatBenchArgs;
use super::demo::DemoArgs;

/// A flag taking one of a `text_enum!`'s spellings (listed in `--help`).
pub fn text_enum_parser<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: FromStr<Err = UnknownVariant> + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

/// sysexits' EX_CONFIG: the configuration is invalid.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "lorastream",
    version,
    about = "Keeps a language model learning from the web: crawl, clean, train LoRA adapters stream by stream, measure forgetting, serve the best."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "LORASTREAM_CONFIG",
        default_value = "/etc/lorastream/lorastream.toml"
    )]
    pub config: PathBuf,
    /// Log format (default: the config's [daemon] log_format, else auto).
    #[arg(long, global = true, value_parser = text_enum_parser::<LogFormat>(LogFormat::NAMES))]
    pub log_format: Option<LogFormat>,
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q warnings, -qq errors).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground until SIGINT or SIGTERM (SIGHUP reloads the config).
    Run,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Show sources, items, streams and adapters from the store.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fetch from the sources, clean, summarize and seal ready examples into
    /// streams; prints counts per source. Without --once, keeps running on the
    /// sources' schedules until SIGINT/SIGTERM.
    Crawl {
        /// Only this source (even if disabled).
        #[arg(long)]
        source: Option<String>,
        /// One pass, then exit.
        #[arg(long)]
        once: bool,
        /// Seal whatever is ready, even below [streams] min_examples.
        #[arg(long)]
        seal: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stream commands.
    Streams {
        #[command(subcommand)]
        command: StreamsCommand,
    },
    /// Train the oldest untrained stream (or --stream ID) into a candidate adapter;
    /// an interrupted run resumes from its checkpoint.
    Train {
        #[arg(long)]
        stream: Option<i64>,
    },
    /// Learn every waiting stream (or --stream ID) as the feedback policy wants:
    /// train, evaluate, decide, and again while it asks for another attempt.
    /// Prints each attempt, its decision, and the matrix.
    Learn {
        #[arg(long)]
        stream: Option<i64>,
        /// Print the attempts and the matrix as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Adapter versions: list, promote, roll back, merge.
    Adapters {
        #[command(subcommand)]
        command: AdaptersCommand,
    },
    /// Fill missing cells of the perplexity matrix and print it with forgetting.
    Eval {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Measure every cell on its stream's whole eval split (older streams
        /// are otherwise sampled: [eval] eval_tokens_per_stream), replacing
        /// the stored cells.
        #[arg(long)]
        full: bool,
    },
    /// The whole loop offline in a few minutes: two streams of sample
    /// questions about lorastream, trained and judged by the real daemon, and
    /// the chat API asked before and after.
    Demo(DemoArgs),
    /// Model commands.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Chat with the running daemon in the terminal (streams tokens; /reset,
    /// /model V, /quit). Reads one message per line when stdin is not a terminal.
    Chat {
        /// The API's base URL (default: http://<[server] listen>).
        #[arg(long)]
        url: Option<String>,
        /// A version: lorastream (the served one), lorastream@vN, base.
        #[arg(long)]
        model: Option<String>,
        /// Who is chatting: the server remembers a user's conversations.
        #[arg(long)]
        user: Option<String>,
    },
    /// What the chat server remembers of a user.
    Memory {
        #[command(subcommand)]
        command: MemoryCommand,
    },
    /// Benchmarks printing JSON lines: train/eval/generate as the transformers + PEFT
    /// peer script prints them, and chat against any OpenAI-compatible server.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Write a small random model (HF layout) with a BPE tokenizer trained on a corpus.
    Init {
        #[arg(long, value_parser = text_enum_parser::<Arch>(Arch::NAMES))]
        arch: Arch,
        #[arg(long, value_parser = text_enum_parser::<Preset>(Preset::NAMES), default_value = "tiny")]
        preset: Preset,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Text to train the tokenizer on (default: a built-in corpus).
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Target tokenizer vocabulary size.
        #[arg(long, default_value_t = 1024)]
        vocab_size: usize,
    },
    /// De-quantize a GGUF file (llama.cpp) into a Hugging Face model directory.
    Import {
        /// The GGUF file.
        gguf: PathBuf,
        /// Output directory (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Stored dtype of the weights: f32, bf16 or f16.
        #[arg(long, value_parser = text_enum_parser::<DType>(DType::NAMES), default_value = "f32")]
        dtype: DType,
    },
    /// Merge a LoRA adapter into its base model and write a standalone HF model directory.
    Export {
        /// Base model directory.
        #[arg(long)]
        model: PathBuf,
        /// PEFT adapter directory.
        #[arg(long)]
        adapter: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Greedy decoding with a KV cache: new tokens per second.
    Generate(GenerateArgs),
    /// LoRA training throughput: tokens per second over timed optimizer steps.
    Train(TrainArgs),
    /// Perplexity over a data set, and tokens per second.
    Eval(EvalArgs),
    /// A running OpenAI-compatible server as its clients see it: per client
    /// count, aggregate tokens/s and p50/p95 time to first token and between
    /// tokens (one JSON line each).
    Chat(ChatBenchArgs),
}

#[derive(Subcommand)]
pub enum MemoryCommand {
    /// Print a user's stored messages, oldest first.
    List {
        user: String,
        /// The identity (API key name) the user belongs to.
        #[arg(long, default_value = "default")]
        identity: String,
    },
    /// Delete a user's conversations and messages (their search index rows,
    /// and examples made from them not yet learned).
    Forget {
        user: String,
        /// The identity (API key name) the user belongs to.
        #[arg(long, default_value = "default")]
        identity: String,
    },
}

#[derive(Subcommand)]
pub enum StreamsCommand {
    /// Seal a JSONL of chat examples ({"messages": [...]} per line) into a new stream.
    Import {
        file: PathBuf,
        /// Stream name (default: the file name).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AdaptersCommand {
    /// Every version: stream, attempt, state, perplexity on its stream, max
    /// forgetting, probe change, created; the served one marked.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Serve version V (rejected, rolled back, not learned, or an older promoted one).
    Promote { version: i64 },
    /// Stop serving the current version: the one promoted before it (or the base) is served.
    Rollback,
    /// Merge the served adapter into a new base snapshot, served as a version
    /// (`[feedback] merge = "after_final_stream"`: once the last stream is in).
    Merge,
    /// Bring the `[[publish]]` targets in line with the promoted versions
    /// (and publish VERSION too, promoted or not); `--to NAME`: one target.
    Publish {
        version: Option<i64>,
        #[arg(long)]
        to: Option<String>,
    },
    /// Write version V for another engine: `peft` (a directory PEFT, vLLM
    /// and LoRAX load) or `gguf` (a llama.cpp / Ollama LoRA file).
    Export {
        version: i64,
        #[arg(long, value_parser = ["peft", "gguf"], default_value = "peft")]
        format: String,
        /// The directory (peft) or file (gguf) to write; must not exist.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate the config file: exit 0 with a summary, or name each bad key and its line.
    Check,
}
