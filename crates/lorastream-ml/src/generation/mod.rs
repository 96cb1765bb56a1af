//! Generation (as `candle-transformers/src/generation/`): decoding with a KV
//! cache and stop tokens, and sampling.

pub mod generate;
pub mod sampling;
