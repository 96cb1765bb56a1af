//! The data stages: from a source's records to sealed streams of chat examples.
//!
//! # Layout
//!
//! - [`sources`]: hf_datasets, crawlbase and spool sources (one file each).
//! - [`preprocess`]: raw items to chat examples (cleaning, limits, dedup).
//! - [`summarize`]: condensing long answers (extractive, OpenAI-compatible).
//! - [`streams`]: sealed streams of chat examples and their train/eval files.
//! - [`crawl`]: one pass of sources → preprocess → summarize → seal (the CLI's
//!   `crawl`; the daemon runs the same stages as actors).

pub mod crawl;
pub mod preprocess;
pub mod sources;
pub mod streams;
pub mod summarize;
