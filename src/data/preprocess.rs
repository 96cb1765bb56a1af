//! Raw items → chat examples (DESIGN.md §1, Preprocessor). Each raw item is
//! cleaned (HTML to text, Quora boilerplate, Unicode NFC, whitespace, optional
//! e-mail and phone scrubbing), checked against the `[preprocess]` limits and
//! deduplicated; a kept pair becomes a `{"messages": [user, assistant]}`
//! example in state `new` (the summarizer makes it `ready`). The item's state
//! and its example are written in one transaction, and every dropped item
//! keeps its reason, so counts by reason come from the store.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use scraper::{Html, Node};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

use crate::config::PreprocessConfig;
use lorastream_base::text_enum;
use lorastream_store::{NewExample, Origin, RawItem, RawState, Store, StoreError};

text_enum! {
    /// Why an item was dropped; the strings are stored in `raw_items.drop_reason`.
    pub enum DropReason {
        NoQuestion = "no_question",
        NoAnswer = "no_answer",
        QuestionTooShort = "question_too_short",
        AnswerTooShort = "answer_too_short",
        AnswerTooLong = "answer_too_long",
        LowUpvotes = "low_upvotes",
        Duplicate = "duplicate",
        NearDuplicate = "near_duplicate",
    }
}

/// Counts of one preprocessing pass, per source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceCounts {
    pub processed: u64,
    /// Examples made.
    pub examples: u64,
    pub dropped: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PreprocessReport {
    pub by_source: BTreeMap<String, SourceCounts>,
    /// Ids of the examples made, in order.
    pub example_ids: Vec<i64>,
}

impl PreprocessReport {
    pub fn processed(&self) -> u64 {
        self.by_source.values().map(|c| c.processed).sum()
    }
    pub fn examples(&self) -> u64 {
        self.by_source.values().map(|c| c.examples).sum()
    }
}

/// Processes every raw item in state `new`, oldest first.
pub fn run(store: &Store, cfg: &PreprocessConfig) -> Result<PreprocessReport, StoreError> {
    let mut report = PreprocessReport::default();
    loop {
        let batch = store.raw_items_in_state(RawState::New, 256)?;
        if batch.is_empty() {
            break;
        }
        for item in &batch {
            process(store, cfg, item, &mut report)?;
        }
    }
    let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for (reason, n) in report.by_source.values().flat_map(|c| c.dropped.iter()) {
        *by_reason.entry(reason).or_default() += n;
    }
    let m = &crate::util::metrics::METRICS;
    for (reason, n) in &by_reason {
        m.dropped.with_label_values(&[*reason]).inc_by(*n);
    }
    m.examples_made.inc_by(report.examples());
    if report.processed() > 0 {
        tracing::info!(
            items = report.processed(),
            examples = report.examples(),
            dropped = by_reason.values().sum::<u64>(),
            dropped_by_reason = %serde_json::to_string(&by_reason).unwrap_or_default(),
            "preprocessed raw items"
        );
    }
    Ok(report)
}

/// One item: its example and its new state, in one transaction.
pub fn process(
    store: &Store,
    cfg: &PreprocessConfig,
    item: &RawItem,
    report: &mut PreprocessReport,
) -> Result<(), StoreError> {
    let counts = report.by_source.entry(item.source.clone()).or_default();
    counts.processed += 1;
    let outcome = store.in_transaction(|s| {
        let cleaned = match clean_pair(cfg, item) {
            Ok(c) => c,
            Err(reason) => {
                s.set_raw_item_state(item.id, RawState::Dropped, Some(reason.as_str()))?;
                return Ok(Err(reason));
            }
        };
        let norm = norm_hash(&cleaned.question, &cleaned.answer);
        if cfg.dedup_normalized && s.example_by_norm_hash(&norm)?.is_some() {
            s.set_raw_item_state(
                item.id,
                RawState::Dropped,
                Some(DropReason::NearDuplicate.as_str()),
            )?;
            return Ok(Err(DropReason::NearDuplicate));
        }
        let ins = s.insert_example(&NewExample {
            raw_item_id: Some(item.id),
            messages: json!([
                {"role": "user", "content": cleaned.question},
                {"role": "assistant", "content": cleaned.answer},
            ]),
            origin: if item.source == lorastream_store::CONVERSATIONS_SOURCE {
                Origin::Conversation
            } else {
                Origin::Crawl
            },
            quality: json!({
                "source": item.source,
                "url": item.url,
                "upvotes": item.meta.get("upvotes"),
                "html": cleaned.had_html,
                "boilerplate_removed": cleaned.boilerplate,
                "pii_scrubbed": cleaned.pii,
            }),
            norm_hash: Some(norm),
        })?;
        if !ins.is_new() {
            s.set_raw_item_state(
                item.id,
                RawState::Dropped,
                Some(DropReason::Duplicate.as_str()),
            )?;
            return Ok(Err(DropReason::Duplicate));
        }
        s.set_raw_item_state(item.id, RawState::Processed, None)?;
        Ok::<_, StoreError>(Ok(ins.id()))
    })?;
    match outcome {
        Ok(id) => {
            counts.examples += 1;
            report.example_ids.push(id);
        }
        Err(reason) => *counts.dropped.entry(reason.as_str()).or_default() += 1,
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cleaned {
    pub question: String,
    pub answer: String,
    pub had_html: bool,
    pub boilerplate: usize,
    pub pii: usize,
}

/// Cleans both sides and applies the limits.
pub fn clean_pair(cfg: &PreprocessConfig, item: &RawItem) -> Result<Cleaned, DropReason> {
    let (question, qh, qb, qp) = clean_text(cfg, &item.question);
    let (answer, ah, ab, ap) = clean_text(cfg, item.answer.as_deref().unwrap_or(""));
    if question.is_empty() {
        return Err(DropReason::NoQuestion);
    }
    if answer.is_empty() {
        return Err(DropReason::NoAnswer);
    }
    if question.chars().count() < cfg.min_question_chars {
        return Err(DropReason::QuestionTooShort);
    }
    let n = answer.chars().count();
    if n < cfg.min_answer_chars {
        return Err(DropReason::AnswerTooShort);
    }
    if n > cfg.max_answer_chars {
        return Err(DropReason::AnswerTooLong);
    }
    // Items without an upvote count (CSV exports) are kept.
    if let (Some(min), Some(up)) = (
        cfg.min_upvotes,
        item.meta.get("upvotes").and_then(serde_json::Value::as_i64),
    ) && up < min
    {
        return Err(DropReason::LowUpvotes);
    }
    Ok(Cleaned {
        question,
        answer,
        had_html: qh || ah,
        boilerplate: qb + ab,
        pii: qp + ap,
    })
}

static TAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"</?[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?>|&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")
        .expect("tag regex")
});
/// Whole lines of Quora page furniture (matched case-insensitively, trimmed).
static BOILERPLATE_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^(continue reading|\(more\)|related( questions?| answers?)?|(sponsored|promoted)( by .*)?|ad by .*|upvote( ·.*)?|downvote|share|view \d+ (more )?(answers?|upvotes?|shares?|comments?)|\d+(\.\d+)?[km]? (upvotes?|views|shares?|comments?)|(answered|updated) \d+[ymwdh]( ago)?|originally answered:.*|answer requested by.*|your response is private|was this worth your time\??|this helps us sort answers on the page\.?|you might also like|more answers below\.?)$",
    )
    .expect("boilerplate regex")
});
/// "… Continue Reading" / "… (more)" glued to the end of a truncated answer.
static TRAILER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?i)\s*(\(more\)|continue reading)\s*$").expect("trailer regex"));
static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b").expect("email regex")
});
/// Phone numbers written with separators (a bare run of digits may be a year
/// or a count and is left alone).
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\b\d{3}[\s.-])\d{3}[\s.-]\d{4}\b")
        .expect("phone regex")
});

/// (text, had HTML, boilerplate fragments removed, PII replacements).
fn clean_text(cfg: &PreprocessConfig, raw: &str) -> (String, bool, usize, usize) {
    let had_html = TAG.is_match(raw);
    let text = if had_html {
        html_to_text(raw)
    } else {
        raw.to_string()
    };
    let text: String = text.nfc().collect();
    let mut removed = 0;
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if cfg.strip_boilerplate && !line.is_empty() && BOILERPLATE_LINE.is_match(&line) {
            removed += 1;
            continue;
        }
        lines.push(line);
    }
    if cfg.strip_boilerplate
        && let Some(last) = lines.iter_mut().rev().find(|l| !l.is_empty())
        && TRAILER.is_match(last)
    {
        *last = TRAILER.replace(last, "").into_owned();
        removed += 1;
    }
    // Paragraphs: at most one blank line between them.
    let mut out = String::new();
    let mut blank = false;
    for line in lines {
        if line.is_empty() {
            blank = !out.is_empty();
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank { "\n\n" } else { "\n" });
        }
        out.push_str(&line);
        blank = false;
    }
    let mut pii = 0;
    if cfg.scrub_pii {
        pii += EMAIL.find_iter(&out).count();
        out = EMAIL.replace_all(&out, "[email]").into_owned();
        pii += PHONE.find_iter(&out).count();
        out = PHONE.replace_all(&out, "[phone]").into_owned();
    }
    (out, had_html, removed, pii)
}

/// Text of an HTML fragment: block elements and `<br>` become line breaks,
/// scripts and styles go, entities are decoded.
pub fn html_to_text(html: &str) -> String {
    const BLOCK: &[&str] = &[
        "p",
        "div",
        "br",
        "li",
        "ul",
        "ol",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
        "pre",
        "tr",
        "table",
        "section",
        "article",
        "hr",
    ];
    let doc = Html::parse_fragment(html);
    let mut out = String::new();
    let mut stack = vec![(doc.tree.root(), false)];
    while let Some((node, closing)) = stack.pop() {
        match node.value() {
            Node::Text(t) if !closing => out.push_str(t),
            Node::Element(e) => {
                let name = e.name();
                if matches!(name, "script" | "style" | "noscript" | "template") {
                    continue;
                }
                let block = BLOCK.contains(&name);
                if closing {
                    if block {
                        out.push('\n');
                    }
                    continue;
                }
                if block {
                    out.push('\n');
                }
                stack.push((node, true));
                let children: Vec<_> = node.children().collect();
                stack.extend(children.into_iter().rev().map(|c| (c, false)));
            }
            _ if !closing => {
                let children: Vec<_> = node.children().collect();
                stack.extend(children.into_iter().rev().map(|c| (c, false)));
            }
            _ => {}
        }
    }
    out
}

/// SHA-256 of the pair folded to lower-case letters and digits, single-spaced:
/// pairs that differ only in case, punctuation or spacing hash the same.
pub fn norm_hash(question: &str, answer: &str) -> String {
    let fold = |s: &str| -> String {
        let mapped: String = s
            .chars()
            .flat_map(char::to_lowercase)
            .map(|c| if c.is_alphanumeric() { c } else { ' ' })
            .collect();
        mapped.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let mut h = Sha256::new();
    h.update(fold(question).as_bytes());
    h.update([0u8]);
    h.update(fold(answer).as_bytes());
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn item(q: &str, a: Option<&str>, meta: Value) -> RawItem {
        RawItem {
            id: 1,
            source: "s".into(),
            content_hash: String::new(),
            external_id: None,
            url: None,
            question: q.into(),
            answer: a.map(str::to_string),
            meta,
            fetched_at: 0,
            state: RawState::New,
            drop_reason: None,
        }
    }

    #[test]
    fn cleans_html_boilerplate_and_pii() {
        let cfg = PreprocessConfig::default();
        let a = "<div><p>Rust is   a language.</p><p>Mail me at jane.doe@example.com or call +1 415-555-0100.</p>\
                 <p>Related</p><p>Sponsored by Acme</p><script>x()</script>It was 2019 &amp; 1200 people. Continue Reading</div>";
        let c = clean_pair(&cfg, &item("What is Rust?", Some(a), json!({}))).unwrap();
        assert_eq!(
            c.answer,
            "Rust is a language.\n\nMail me at [email] or call [phone].\n\nIt was 2019 & 1200 people."
        );
        assert!(c.had_html);
        assert_eq!(c.boilerplate, 3);
        assert_eq!(c.pii, 2);
    }

    #[test]
    fn keeps_plain_text_and_paragraphs() {
        let cfg = PreprocessConfig::default();
        let a = "First paragraph with 3 < 4 and a Related word.\n\n\n  Second\tparagraph.  \n";
        let c = clean_pair(&cfg, &item("Why is the sky blue?", Some(a), json!({}))).unwrap();
        assert_eq!(
            c.answer,
            "First paragraph with 3 < 4 and a Related word.\n\nSecond paragraph."
        );
        assert!(!c.had_html);
        // NFC: e + combining acute becomes é.
        let c = clean_pair(
            &cfg,
            &item(
                "Cafe\u{301} question?",
                Some("An answer long enough."),
                json!({}),
            ),
        )
        .unwrap();
        assert_eq!(c.question, "Caf\u{e9} question?");
    }

    #[test]
    fn drop_reasons() {
        let cfg = PreprocessConfig {
            min_upvotes: Some(5),
            ..PreprocessConfig::default()
        };
        let long = "x".repeat(cfg.max_answer_chars + 1);
        let cases = [
            (
                item("", Some("An answer long enough."), json!({})),
                DropReason::NoQuestion,
            ),
            (
                item("A real question?", None, json!({})),
                DropReason::NoAnswer,
            ),
            (
                item("A real question?", Some("  <p> </p> "), json!({})),
                DropReason::NoAnswer,
            ),
            (
                item("Why?", Some("An answer long enough."), json!({})),
                DropReason::QuestionTooShort,
            ),
            (
                item("A real question?", Some("Short."), json!({})),
                DropReason::AnswerTooShort,
            ),
            (
                item("A real question?", Some(&long), json!({})),
                DropReason::AnswerTooLong,
            ),
            (
                item(
                    "A real question?",
                    Some("An answer long enough."),
                    json!({"upvotes": 2}),
                ),
                DropReason::LowUpvotes,
            ),
        ];
        for (it, want) in cases {
            assert_eq!(clean_pair(&cfg, &it).unwrap_err(), want, "{it:?}");
        }
        assert!(
            clean_pair(
                &cfg,
                &item(
                    "A real question?",
                    Some("An answer long enough."),
                    json!({})
                )
            )
            .is_ok()
        );
    }

    #[test]
    fn near_duplicates_fold_together() {
        assert_eq!(
            norm_hash("What is Rust?", "A language!"),
            norm_hash("what is rust", "A  language.")
        );
        assert_ne!(
            norm_hash("What is Rust?", "A language"),
            norm_hash("What is Go?", "A language")
        );
    }
}
