//! The model card of a published version (`README.md`, with the metadata
//! header the Hugging Face Hub reads): what it is, its lineage, the data it
//! learned, and its row of the perplexity matrix beside the base's.

use std::fmt::Write;

use super::PublishError;
use lorastream_store::{AdapterRow, Store};

/// The card of `v`, whose base is known to the fleet as `base_model`.
pub fn model_card(
    store: &Store,
    all: &[AdapterRow],
    v: &AdapterRow,
    base_model: &str,
) -> Result<String, PublishError> {
    let mut lineage = vec![v.id];
    let mut at = v.parent_id;
    while let Some(p) = at.filter(|p| !lineage.contains(p)) {
        lineage.push(p);
        at = all.iter().find(|a| a.id == p).and_then(|a| a.parent_id);
    }
    let chain: Vec<String> = lineage.iter().rev().map(|i| format!("v{i}")).collect();
    let streams = store.streams()?;
    let evals = store.evals()?;
    let mut s = String::new();
    let _ = write!(
        s,
        "---\nbase_model: {base_model}\nlibrary_name: peft\ntags:\n- lora\n- lorastream\n---\n\n\
         # lorastream v{id}\n\nA LoRA adapter for `{base_model}`, learned by lorastream from a stream of \
         question/answer data and promoted by its feedback loop.\n\n\
         - version: v{id} ({state}), lineage: {chain} (each trained on top of the one before)\n",
        id = v.id,
        state = v.state,
        chain = chain.join(" → "),
    );
    if let Some(st) = streams.iter().find(|st| st.id == v.stream_id) {
        let _ = writeln!(
            s,
            "- learned stream {} \"{}\": {} training and {} evaluation examples",
            st.id, st.name, st.n_train, st.n_eval
        );
    }
    let row = |adapter: i64| {
        let mut cells: Vec<(i64, f64)> = evals
            .iter()
            .filter(|e| e.adapter_id == adapter && e.perplexity.is_finite())
            .map(|e| (e.stream_id, e.perplexity))
            .collect();
        cells.sort_by_key(|c| c.0);
        cells
    };
    let (mine, base) = (row(v.id), row(0));
    if !mine.is_empty() {
        s.push_str("\n## Perplexity (lower is better)\n\n| stream | this version | base |\n|---|---|---|\n");
        for (stream, p) in mine {
            let b = base
                .iter()
                .find(|c| c.0 == stream)
                .map_or("".into(), |c| format!("{:.3}", c.1));
            let name = if stream == 0 {
                "probe".to_string()
            } else {
                stream.to_string()
            };
            let _ = writeln!(s, "| {name} | {p:.3} | {b} |");
        }
    }
    Ok(s)
}
