//! The layers the model families are built of (as `candle-nn` holds
//! candle's): attention with its masks, rotary embeddings, LoRA linears,
//! fused projections, the KV pool, and the ragged batch pass of continuous
//! batching.

pub mod attention;
pub mod fused;
pub mod kv_pool;
pub mod lora;
pub mod pass;
pub mod rope;
