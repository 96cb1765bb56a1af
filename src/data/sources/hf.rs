//! `hf_datasets`: pages through the datasets-server rows API
//! (`GET {base}/rows?dataset=&config=&split=&offset=&length=`, length ≤ 100).
//! The offset is the cursor; it moves in the same transaction as the rows of
//! its page, so a failed page is fetched again next run and none is skipped.

use serde_json::{Value, json};
use url::Url;

use super::{FetchReport, Record, ResponseProblem, SourceError};
use crate::config::SourceConfig;
use crate::util::http::{Http, Policy, parse_json};
use lorastream_store::Store;

/// The API's page limit.
const MAX_PAGE: u32 = 100;

pub async fn run(
    http: &Http,
    store: &Store,
    src: &SourceConfig,
    report: &mut FetchReport,
) -> Result<(), SourceError> {
    let dataset = src
        .dataset
        .as_deref()
        .ok_or_else(|| SourceError::NotConfigured {
            name: src.name.clone(),
            what: "`dataset` is not set",
        })?;
    let policy = Policy::from(src);
    let mut offset: u64 = match store.source(&src.name)?.and_then(|r| r.cursor) {
        Some(c) => c.parse().map_err(|_| SourceError::BadCursor {
            name: src.name.clone(),
            cursor: c.clone(),
        })?,
        None => 0,
    };
    let budget = src.max_rows_per_run();
    let mut taken = 0u64;
    while taken < budget {
        let length = (src.page_size().clamp(1, MAX_PAGE) as u64).min(budget - taken);
        let url = rows_url(
            src.base_url(),
            dataset,
            src.dataset_config(),
            src.split(),
            offset,
            length,
        )?;
        let body = http.get(&url, &policy).await?;
        let page = parse_json(&body, "rows API")?;
        let (records, total) = parse_page(&page, src, dataset, offset)?;
        if records.is_empty() {
            break;
        }
        let n = records.len() as u64;
        let next = offset + n;
        report.commit(store, &src.name, &records, |s| {
            s.set_source_cursor(&src.name, &next.to_string())
        })?;
        tracing::debug!(source = %src.name, offset, rows = n, total, "rows page stored");
        offset = next;
        taken += n;
        if total.is_some_and(|t| offset >= t) {
            break;
        }
    }
    Ok(())
}

fn rows_url(
    base: &str,
    dataset: &str,
    config: &str,
    split: &str,
    offset: u64,
    length: u64,
) -> Result<Url, SourceError> {
    let mut url =
        Url::parse(&format!("{}/rows", base.trim_end_matches('/'))).map_err(|source| {
            SourceError::BaseUrl {
                base: base.to_string(),
                source,
            }
        })?;
    url.query_pairs_mut()
        .append_pair("dataset", dataset)
        .append_pair("config", config)
        .append_pair("split", split)
        .append_pair("offset", &offset.to_string())
        .append_pair("length", &length.to_string());
    Ok(url)
}

fn rows_api(problem: ResponseProblem) -> SourceError {
    SourceError::Response {
        api: "rows API",
        problem,
    }
}

/// The records of one page and the dataset's row count, if given.
pub fn parse_page(
    page: &Value,
    src: &SourceConfig,
    dataset: &str,
    offset: u64,
) -> Result<(Vec<Record>, Option<u64>), SourceError> {
    if let Some(err) = page.get("error").and_then(Value::as_str) {
        return Err(rows_api(ResponseProblem::Error(err.to_string())));
    }
    let rows = page
        .get("rows")
        .and_then(Value::as_array)
        .ok_or_else(|| rows_api(ResponseProblem::Missing("`rows` array")))?;
    let total = page.get("num_rows_total").and_then(Value::as_u64);
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let idx = r
            .get("row_idx")
            .and_then(Value::as_u64)
            .unwrap_or(offset + i as u64);
        let obj = r
            .get("row")
            .and_then(Value::as_object)
            .ok_or_else(|| rows_api(ResponseProblem::RowWithoutObject(idx)))?;
        let mut rec = Record::from_object(obj, &src.fields);
        rec.external_id = Some(format!(
            "{dataset}/{}/{}/{idx}",
            src.dataset_config(),
            src.split()
        ));
        rec.meta.insert("label".into(), json!(dataset));
        out.push(rec);
    }
    Ok((out, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SourceKind;

    #[test]
    fn page_parsing() {
        let mut src = SourceConfig::new("hf", SourceKind::HfDatasets);
        src.fields.answer = "answer_text".into();
        src.fields.upvotes = Some("upvotes".into());
        let page = json!({"features": [], "num_rows_total": 3, "rows": [
            {"row_idx": 5, "row": {"question": "Q1?", "answer_text": "A1", "upvotes": 4}},
            {"row_idx": 6, "row": {"question": "Q2?", "answer_text": null}}]});
        let (recs, total) = parse_page(&page, &src, "d/x", 5).unwrap();
        assert_eq!(total, Some(3));
        assert_eq!(recs[0].external_id.as_deref(), Some("d/x/default/train/5"));
        assert_eq!(recs[0].meta["upvotes"], 4);
        assert_eq!(recs[1].answer, None);
        assert!(parse_page(&json!({"rows": [1]}), &src, "d", 0).is_err());
        assert!(parse_page(&json!({"error": "gone"}), &src, "d", 0).is_err());
    }

    #[test]
    fn url_shape() {
        let u = rows_url("http://127.0.0.1:9/", "a/b c", "default", "train", 200, 100).unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9/rows?dataset=a%2Fb+c&config=default&split=train&offset=200&length=100"
        );
    }
}
