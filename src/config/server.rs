//! `[server]`: the chat API — where it listens, who may call it
//! (`[[server.keys]]`: each key an identity with a role and limits), what one
//! request may cost, and memory of past conversations.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use lorastream_base::text_enum;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub enabled: bool,
    pub listen: String,
    /// One admin key, the identity `default` (file or env; unset with no
    /// `keys`: no auth, and only a loopback `listen` is allowed).
    pub api_key_file: Option<PathBuf>,
    pub api_key_env: Option<String>,
    /// API keys, each an identity.
    pub keys: Vec<KeyConfig>,
    /// Host names (with or without port) requests may name besides the listen
    /// address and `localhost`; anything else gets 421 (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed to call the API (CORS); none by default.
    pub cors_origins: Vec<String>,
    /// TLS (PEM files) for deployments without a reverse proxy.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// The model id clients see in `/v1/models`.
    pub model_name: String,
    pub max_tokens: usize,
    pub max_request_bytes: usize,
    /// Messages in one request at most (400 beyond).
    pub max_messages: usize,
    /// Seconds a client has to send its request headers, and its body.
    pub header_timeout_secs: u64,
    pub body_timeout_secs: u64,
    /// A streaming client that reads nothing for this long is dropped and its
    /// generation cancelled.
    pub send_timeout_secs: u64,
    /// Retrieve relevant past messages into the prompt.
    pub memory: bool,
    pub memory_results: usize,
    /// Tokens of recalled memories at most in one prompt.
    pub memory_tokens: usize,
    /// Distinct terms of a message a recall searches for at most (the
    /// longest, stop words left out).
    pub memory_query_terms: usize,
    /// Milliseconds a recall may take; past it the answer goes without memories.
    pub memory_recall_ms: u64,
    /// Days a conversation is kept after its last message (unset: for ever);
    /// applied on the retention schedule.
    pub conversation_retention_days: Option<u64>,
    /// Turn opted-in conversations into training examples.
    pub learn_from_conversations: bool,
    /// Requests waiting for a place in the batch at most; more get 429.
    pub queue: usize,
    /// Sequences generated together in one batch at most.
    pub max_batch: usize,
    /// Prompt tokens read per batch step (a longer prompt is read over
    /// several steps while the others keep streaming).
    pub prefill_chunk: usize,
    /// MiB the batch's KV caches may hold together; 0 = room for
    /// `max_batch` sequences of 2048 tokens on the model served.
    pub kv_cache_mb: usize,
    /// CPU threads generation uses; 0 = every core.
    pub threads: usize,
    /// CPU threads generation uses while a stream trains or evaluates (the
    /// learning work gets the other cores); 0 = half the cores.
    pub threads_while_learning: usize,
    /// Sampling defaults for requests that do not set them.
    pub sampling: SamplingDefaults,
    /// A prompt over the context window: drop the oldest turns, or answer 400.
    pub overflow: OverflowPolicy,
    /// On the CPU with f32 weights, decoding steps read bf16 copies of the
    /// weights (half the bytes; +50% memory for the serving copy). Prompts
    /// still run in f32.
    pub decode_bf16: bool,
    /// Who generates: the built-in engine, or a vLLM fleet the chat API
    /// fronts (identities, memory, feedback and model names stay here).
    pub backend: Backend,
    /// `backend = "vllm"`: the fleet's OpenAI-compatible base URL (a server
    /// or the load balancer in front of the servers).
    pub backend_url: Option<String>,
    /// `backend = "vllm"`: the fleet's API key, from a file or a variable.
    pub backend_key_file: Option<PathBuf>,
    pub backend_key_env: Option<String>,
    /// `backend = "vllm"`: the name the fleet serves the base under (for
    /// requests while no version is served; default: the `[model] source`'s
    /// hub id, else its directory, as publish targets name it).
    pub backend_base_model: Option<String>,
    /// `backend = "vllm"`: seconds to wait for the fleet's first byte.
    pub backend_timeout_secs: u64,
}

text_enum! {
    /// Who generates the answers.
    #[derive(Default)]
    pub enum Backend {
        /// This process (continuous batching on the CPU or GPU).
        #[default]
        Builtin = "builtin",
        /// A vLLM fleet, sent each request under the published name of the
        /// version that answers (`lorastream-vN`, see `[[publish]]`).
        Vllm = "vllm",
    }
}

/// `[server.sampling]`: what a request gets when it does not say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingDefaults {
    /// OpenAI's: subtracted from a token's logit per time it is in the answer.
    pub frequency_penalty: f64,
    /// OpenAI's: subtracted once from every token already in the answer.
    pub presence_penalty: f64,
    /// transformers': > 1 discourages every token already in the prompt or
    /// the answer (1 = off; 1.1 keeps small models from repeating sentences).
    pub repetition_penalty: f64,
}

impl Default for SamplingDefaults {
    fn default() -> Self {
        SamplingDefaults {
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repetition_penalty: 1.1,
        }
    }
}

impl ServerConfig {
    /// Whether any API key is configured.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty() || self.api_key_file.is_some() || self.api_key_env.is_some()
    }
}

/// The identity of the single `api_key_file`/`api_key_env` key (an admin),
/// of every caller when no key is configured, and so the owner of what was
/// stored before keys existed: reserved, no `[[server.keys]]` entry takes it.
pub const DEFAULT_IDENTITY: &str = "default";

/// One `[[server.keys]]` entry: an API key and the identity it opens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The identity; memory, conversations and feedback belong to it.
    pub name: String,
    pub key_file: Option<PathBuf>,
    pub key_env: Option<String>,
    #[serde(default)]
    pub role: KeyRole,
    /// Requests per minute at most (429 with Retry-After past it).
    pub rpm: Option<u32>,
    /// Requests in flight at most.
    pub max_concurrent: Option<u32>,
    /// Whether this identity's opted-in conversations may be learned from.
    #[serde(default)]
    pub learn: bool,
}

text_enum! {
    /// What a key may do.
    #[derive(Default)]
    pub enum KeyRole {
        /// Chat, its own memory and feedback.
        #[default]
        User = "user",
        /// Also `/metrics`, `/api/status` and any identity's memory.
        Admin = "admin",
    }
}

text_enum! {
    /// What the server does with a prompt over the model's context window.
    pub enum OverflowPolicy {
        /// Drop the oldest turns (never the system prompt or the last message).
        Truncate = "truncate",
        /// Answer 400 `context_length_exceeded`.
        Refuse = "refuse",
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            enabled: true,
            listen: "127.0.0.1:8080".into(),
            api_key_file: None,
            api_key_env: None,
            keys: Vec::new(),
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            model_name: "lorastream".into(),
            max_tokens: 256,
            max_request_bytes: 1 << 20,
            max_messages: 256,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            send_timeout_secs: 30,
            memory: true,
            memory_results: 4,
            memory_tokens: 256,
            memory_query_terms: 32,
            memory_recall_ms: 500,
            conversation_retention_days: None,
            learn_from_conversations: false,
            queue: 8,
            max_batch: 16,
            prefill_chunk: 256,
            kv_cache_mb: 0,
            threads: 0,
            threads_while_learning: 0,
            sampling: SamplingDefaults::default(),
            overflow: OverflowPolicy::Truncate,
            decode_bf16: true,
            backend: Backend::Builtin,
            backend_url: None,
            backend_key_file: None,
            backend_key_env: None,
            backend_base_model: None,
            backend_timeout_secs: 60,
        }
    }
}
