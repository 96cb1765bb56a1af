//! A version's files as every adapter target publishes them, in PEFT's
//! layout: `adapter_config.json` naming the base as the fleet knows it,
//! `adapter_model.safetensors` as trained, and the model card `README.md`.

use super::{PublishError, card, io_err};
use crate::learn::lineage;
use lorastream_store::{AdapterRow, Store};

/// The file names of a published version, in the order they are written.
pub const NAMES: [&str; 3] = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "README.md",
];

/// `v`'s files (name, bytes), its config naming `base_model`.
pub fn peft_files(
    store: &Store,
    all: &[AdapterRow],
    v: &AdapterRow,
    base_model: &str,
) -> Result<Vec<(&'static str, Vec<u8>)>, PublishError> {
    let src = lineage::adapter_path(v).ok_or(PublishError::NotLora(v.id))?;
    let weights = src.join(NAMES[1]);
    let bytes = std::fs::read(&weights).map_err(io_err(&weights))?;
    let cfg_path = src.join(NAMES[0]);
    let text = std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?;
    let mut cfg: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| io_err(&cfg_path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    cfg["base_model_name_or_path"] = serde_json::json!(base_model);
    let cfg = serde_json::to_vec_pretty(&cfg).expect("a JSON value serializes");
    let readme = card::model_card(store, all, v, base_model)?;
    Ok(vec![
        (NAMES[0], cfg),
        (NAMES[1], bytes),
        (NAMES[2], readme.into_bytes()),
    ])
}
