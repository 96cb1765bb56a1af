//! The states of the store's tables (`text_enum!` spellings, stored as TEXT
//! through `sql_text!`) and their transition tables.

use std::fmt;

use lorastream_base::text_enum;
use lorastream_base::text_enum::UnknownVariant;

text_enum! {
    /// The kind of a source (`sources.kind`; `[[sources]] kind` in the config).
    pub enum SourceKind {
        /// Hugging Face datasets-server rows API.
        HfDatasets = "hf_datasets",
        /// Quora through the Crawlbase Crawling API.
        Crawlbase = "crawlbase",
        /// A directory where JSON / JSONL / CSV exports are dropped.
        Spool = "spool",
        /// Built in, not configured: helpful chat answers of users who opted in
        /// (`[server] learn_from_conversations`).
        Conversations = "conversations",
    }
}

text_enum! {
    /// The daemon's stages (`stages.name`), as status and the logs name them.
    pub enum Stage {
        Crawler = "crawler",
        Preprocessor = "preprocessor",
        Summarizer = "summarizer",
        Trainer = "trainer",
        Evaluator = "evaluator",
        Feedback = "feedback",
    }
}

/// Store enums read from and written to TEXT columns by their `text_enum!` spelling.
macro_rules! sql_text {
    ($($name:ty),+ $(,)?) => {$(
        impl rusqlite::types::FromSql for $name {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                v.as_str()?
                    .parse()
                    .map_err(|e: UnknownVariant| rusqlite::types::FromSqlError::Other(e.into()))
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(self.as_str().into())
            }
        }
    )+};
}

sql_text!(
    RawState,
    ExampleState,
    StreamState,
    AdapterState,
    AdapterKind,
    Actor,
    StageState,
    ItemKind,
    Origin,
    Split,
    Role,
    SourceKind
);

/// A table whose rows move through states; `can_become` is the transition table.
pub trait StateMachine: Copy + fmt::Display + rusqlite::types::FromSql + 'static {
    const WHAT: &'static str;
    const TABLE: &'static str;
    fn as_str(self) -> &'static str;
    fn can_become(self, to: Self) -> bool;
}

text_enum! {
    /// raw_items.state
    pub enum RawState { New = "new", Processed = "processed", Dropped = "dropped" }
}
text_enum! {
    /// examples.state
    pub enum ExampleState { New = "new", Ready = "ready", Sealed = "sealed", Dropped = "dropped" }
}
text_enum! {
    /// streams.state
    pub enum StreamState {
        Sealed = "sealed",
        Training = "training",
        Trained = "trained",
        Failed = "failed",
        /// Every attempt was rejected; the data stays in the replay reservoir.
        NotLearned = "not_learned",
    }
}
text_enum! {
    /// adapters.state
    pub enum AdapterState {
        Training = "training",
        Candidate = "candidate",
        Promoted = "promoted",
        Rejected = "rejected",
        RolledBack = "rolled_back",
        /// The last attempt at its stream, rejected: the stream was not learned.
        NotLearned = "not_learned",
        Failed = "failed",
    }
}
text_enum! {
    /// adapter_events.actor: who changed a version's state.
    pub enum Actor { Daemon = "daemon", Cli = "cli" }
}
text_enum! {
    /// adapters.kind
    pub enum AdapterKind {
        /// A LoRA adapter (PEFT directory) on the base its lineage names.
        Lora = "lora",
        /// A base snapshot: the lineage merged into the weights (HF model directory).
        Merge = "merge",
    }
}
text_enum! {
    /// examples.origin
    pub enum Origin { Crawl = "crawl", Import = "import", Conversation = "conversation" }
}
text_enum! {
    /// examples.split
    pub enum Split { Train = "train", Eval = "eval" }
}
text_enum! {
    /// messages.role
    pub enum Role { System = "system", User = "user", Assistant = "assistant" }
}

text_enum! {
    /// item_failures.kind: what a poison item is.
    pub enum ItemKind {
        /// A page a source fetches (key: "<source> <url>").
        Url = "url",
        /// A sealed stream the trainer cannot train (key: stream id).
        Stream = "stream",
        /// A version the evaluator cannot load or feedback cannot decide (key: adapter id).
        Version = "version",
    }
}

text_enum! {
    /// stages.state
    pub enum StageState {
        Idle = "idle",
        Running = "running",
        Backoff = "backoff",
        Stopped = "stopped",
    }
}

impl StateMachine for RawState {
    const WHAT: &'static str = "raw item";
    const TABLE: &'static str = "raw_items";
    fn as_str(self) -> &'static str {
        RawState::as_str(self)
    }
    fn can_become(self, to: Self) -> bool {
        use RawState::*;
        matches!((self, to), (New, Processed) | (New, Dropped))
    }
}

impl StateMachine for ExampleState {
    const WHAT: &'static str = "example";
    const TABLE: &'static str = "examples";
    fn as_str(self) -> &'static str {
        ExampleState::as_str(self)
    }
    fn can_become(self, to: Self) -> bool {
        use ExampleState::*;
        matches!(
            (self, to),
            (New, Ready) | (New, Dropped) | (Ready, Sealed) | (Ready, Dropped)
        )
    }
}

impl StateMachine for StreamState {
    const WHAT: &'static str = "stream";
    const TABLE: &'static str = "streams";
    fn as_str(self) -> &'static str {
        StreamState::as_str(self)
    }
    fn can_become(self, to: Self) -> bool {
        use StreamState::*;
        // trained -> sealed: the feedback loop asks for another attempt.
        matches!(
            (self, to),
            (Sealed, Training)
                | (Sealed, Failed)
                | (Training, Trained)
                | (Training, Failed)
                | (Failed, Training)
                | (Trained, Training)
                | (Trained, Sealed)
                | (Trained, NotLearned)
                | (Trained, Failed)
                | (NotLearned, Failed)
        )
    }
}

impl StateMachine for AdapterState {
    const WHAT: &'static str = "adapter";
    const TABLE: &'static str = "adapters";
    fn as_str(self) -> &'static str {
        AdapterState::as_str(self)
    }
    fn can_become(self, to: Self) -> bool {
        use AdapterState::*;
        matches!(
            (self, to),
            (Training, Candidate)
                | (Training, Failed)
                | (Candidate, Promoted)
                | (Candidate, Rejected)
                | (Candidate, NotLearned)
                // Set aside: it could not be evaluated or decided.
                | (Candidate, Failed)
                | (Promoted, RolledBack)
                // An operator may promote by hand what the policy refused or rolled back.
                | (Rejected, Promoted)
                | (NotLearned, Promoted)
                | (RolledBack, Promoted)
        )
    }
}
