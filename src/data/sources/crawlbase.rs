//! `crawlbase`: Quora through the Crawlbase Crawling API
//! (`GET {base}/?token=&url=<encoded>&format=json[&scraper=quora-question]`,
//! JSON `{"original_status", "pc_status", "url", "body"}`).
//!
//! Topic mode fetches topic pages and takes the question links out of the
//! returned HTML with an HTML parser; question mode starts from configured
//! question URLs. Each new question page is fetched with the `quora-question`
//! scraper and becomes one record per answer. Question URLs are remembered
//! (`seen_urls`) in the same transaction as their answers, so each run fetches
//! only new ones. The token is read from a file or the environment at run time
//! and appears in no log line or error (URLs are printed redacted).

use scraper::{Html, Selector};
use serde_json::{Map, Value, json};
use url::Url;

use super::{FetchReport, Record, ResponseProblem, SourceError};
use crate::config::{CrawlMode, SourceConfig};
use crate::util::http::{Http, Policy, parse_json, read_secret};
use lorastream_store::{ItemKind, Store};

/// First path segments of quora.com links that are not questions.
const NOT_QUESTIONS: &[&str] = &[
    "topic",
    "profile",
    "search",
    "about",
    "careers",
    "contact",
    "press",
    "settings",
    "answer",
    "answers",
    "spaces",
    "q",
    "unanswered",
    "notifications",
    "following",
    "stats",
    "content",
    "bookmarks",
    "drafts",
    "privacy",
    "login",
    "signup",
    "partners",
    "ads",
    "business",
    "challenges",
    "api",
    "qemail",
    "log",
    "sitemap",
];

pub async fn run(
    http: &Http,
    store: &Store,
    src: &SourceConfig,
    max_item_failures: u32,
    report: &mut FetchReport,
) -> Result<(), SourceError> {
    let token = read_secret(
        &format!("source {}: Crawlbase token", src.name),
        src.token_file.as_deref(),
        src.token_env.as_deref(),
    )?
    .ok_or_else(|| SourceError::NotConfigured {
        name: src.name.clone(),
        what: "set token_file or token_env for the Crawlbase token",
    })?;
    let api = Api {
        http,
        policy: Policy::from(src),
        base: src.base_url().to_string(),
        token,
    };
    // (question URL, label) in the order found.
    let mut queue: Vec<(String, String)> = Vec::new();
    match src.mode() {
        CrawlMode::Question => {
            for q in src.questions.iter().flatten() {
                queue.push((q.clone(), "questions".into()));
            }
        }
        CrawlMode::Topic => {
            for topic in src.topics.iter().flatten() {
                let topic_url = topic_url(topic);
                let page = api.fetch(&topic_url, None).await?;
                let html = body_text(&page)?;
                let found = question_links(&html, &topic_url);
                tracing::info!(source = %src.name, topic = %topic_url, questions = found.len(), "topic page read");
                let label = topic_label(&topic_url);
                queue.extend(found.into_iter().map(|u| (u, label.clone())));
            }
        }
    }
    let mut fetched_pages = 0u32;
    let mut queued = std::collections::HashSet::new();
    // Pages that failed this run, counted once the run is over, unless
    // several were tried and all failed (then the source is the problem).
    let mut failed: Vec<(String, SourceError)> = Vec::new();
    let mut worked = 0u32;
    for (question_url, label) in queue {
        if fetched_pages >= src.max_questions_per_run() {
            break;
        }
        if !queued.insert(question_url.clone()) || store.url_seen(&src.name, &question_url)? {
            continue;
        }
        fetched_pages += 1;
        match question(&api, store, src, &question_url, &label, report).await {
            Ok(()) => {
                worked += 1;
                store.item_succeeded(ItemKind::Url, &format!("{} {question_url}", src.name))?;
            }
            // One page that always fails must not end every run before the
            // newer questions are reached.
            Err(e) if e.is_item_specific() => failed.push((question_url, e)),
            Err(e) => return Err(e),
        }
    }
    if worked == 0 && failed.len() > 1 {
        // Several pages and every one failed: the source (token, account,
        // outage) is the problem, not the pages; none is counted against.
        return Err(failed.swap_remove(0).1);
    }
    count_failed_pages(store, src, max_item_failures, failed, report)
}

/// Counts each failed page; one that failed `max_item_failures` runs is set
/// aside (remembered as seen, so it is not asked for again).
fn count_failed_pages(
    store: &Store,
    src: &SourceConfig,
    max: u32,
    failed: Vec<(String, SourceError)>,
    report: &mut FetchReport,
) -> Result<(), SourceError> {
    for (url, e) in failed {
        report.items_failed += 1;
        let key = format!("{} {url}", src.name);
        let f = store.item_failed(ItemKind::Url, &key, &e.to_string(), max)?;
        if f.set_aside {
            store.mark_url_seen(&src.name, &url)?;
            tracing::error!(source = %src.name, url = %url, failures = f.failures, error = %e, "question page set aside after repeated failures");
        } else {
            tracing::warn!(source = %src.name, url = %url, failures = f.failures, max, error = %e, "question page failed; the run goes on, the page is retried next run");
        }
    }
    Ok(())
}

/// Fetches one question page and stores its answers with the URL as seen.
async fn question(
    api: &Api<'_>,
    store: &Store,
    src: &SourceConfig,
    question_url: &str,
    label: &str,
    report: &mut FetchReport,
) -> Result<(), SourceError> {
    let page = api.fetch(question_url, Some("quora-question")).await?;
    let original = page.get("original_status").and_then(super::count);
    if matches!(original, Some(404) | Some(410)) {
        // The question is gone; remember it so it is not asked for again.
        store.mark_url_seen(&src.name, question_url)?;
        return Ok(());
    }
    let data = scraped(&page)?;
    let records = question_records(&data, question_url, label);
    report.commit(store, &src.name, &records, |s| {
        s.mark_url_seen(&src.name, question_url)
    })?;
    Ok(())
}

struct Api<'a> {
    http: &'a Http,
    policy: Policy,
    base: String,
    token: String,
}

impl Api<'_> {
    /// One Crawling API call; fails unless Crawlbase and the page both answered 200.
    async fn fetch(&self, target: &str, scraper: Option<&str>) -> Result<Value, SourceError> {
        let mut url = Url::parse(&self.base).map_err(|source| SourceError::BaseUrl {
            base: self.base.clone(),
            source,
        })?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("token", &self.token)
                .append_pair("url", target)
                .append_pair("format", "json");
            if let Some(s) = scraper {
                q.append_pair("scraper", s);
            }
        }
        let body = self.http.get(&url, &self.policy).await?;
        let v = parse_json(&body, "Crawlbase")?;
        let pc = v.get("pc_status").and_then(super::count);
        let original = v.get("original_status").and_then(super::count);
        match (pc, original) {
            (Some(200), _) | (None, Some(200)) => Ok(v),
            (_, Some(404 | 410)) => Ok(v),
            _ => Err(SourceError::NotFetched {
                target: target.to_string(),
                pc: pc.map_or("?".into(), |n| n.to_string()),
                original: original.map_or("?".into(), |n| n.to_string()),
            }),
        }
    }
}

/// `Technology` → `https://www.quora.com/topic/Technology`; URLs stay as they are.
fn topic_url(topic: &str) -> String {
    if topic.starts_with("http://") || topic.starts_with("https://") {
        topic.to_string()
    } else {
        format!(
            "https://www.quora.com/topic/{}",
            topic.trim().replace(' ', "-")
        )
    }
}

fn topic_label(topic_url: &str) -> String {
    Url::parse(topic_url)
        .ok()
        .and_then(|u| u.path_segments()?.next_back().map(|s| s.replace('-', " ")))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| topic_url.to_string())
}

/// The HTML of a page fetched with `format=json`.
fn body_text(page: &Value) -> Result<String, SourceError> {
    page.get("body")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or(SourceError::Response {
            api: "Crawlbase",
            problem: ResponseProblem::Missing("`body` text"),
        })
}

/// The scraper's object: `body` as an object, or as a JSON string.
pub fn scraped(page: &Value) -> Result<Value, SourceError> {
    match page.get("body") {
        Some(Value::Object(_)) => Ok(page["body"].clone()),
        Some(Value::String(s)) => Ok(parse_json(s.as_bytes(), "Crawlbase scraper body")?),
        _ if page.get("question_title").is_some() => Ok(page.clone()),
        _ => Err(SourceError::Response {
            api: "Crawlbase",
            problem: ResponseProblem::Missing("scraper `body`"),
        }),
    }
}

/// Question links in a topic page, absolute, without query or fragment, in
/// page order, each once.
pub fn question_links(html: &str, page_url: &str) -> Vec<String> {
    let doc = Html::parse_document(html);
    let Ok(anchors) = Selector::parse("a[href]") else {
        return Vec::new();
    };
    let base = Url::parse(page_url).ok();
    let mut out: Vec<String> = Vec::new();
    for a in doc.select(&anchors) {
        let Some(href) = a.value().attr("href") else {
            continue;
        };
        let Some(mut u) = (match &base {
            Some(b) => b.join(href).ok(),
            None => Url::parse(href).ok(),
        }) else {
            continue;
        };
        let host = u.host_str().unwrap_or("");
        if !(host == "quora.com" || host.ends_with(".quora.com")) {
            continue;
        }
        let segments: Vec<&str> = u
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).collect())
            .unwrap_or_default();
        let [slug] = segments[..] else { continue };
        if !slug.contains('-') || NOT_QUESTIONS.contains(&slug.to_ascii_lowercase().as_str()) {
            continue;
        }
        u.set_query(None);
        u.set_fragment(None);
        let s = u.to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// One record per answer of a scraped question page (one without an answer
/// when there is none, so the preprocessor counts it as dropped).
pub fn question_records(data: &Value, question_url: &str, label: &str) -> Vec<Record> {
    let text = |o: &Value, keys: &[&str]| -> Option<String> {
        keys.iter()
            .find_map(|k| o.get(*k).and_then(Value::as_str))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let title = text(data, &["question_title", "title", "question"]).unwrap_or_default();
    let question = match text(data, &["question_details", "details"]) {
        Some(d) if d != title => format!("{title}\n\n{d}"),
        _ => title,
    };
    let base_meta = |m: &mut Map<String, Value>| {
        m.insert("label".into(), json!(label));
    };
    let answers = data
        .get("answers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        let mut meta = Map::new();
        base_meta(&mut meta);
        for (name, keys) in [
            ("upvotes", &["upvotes", "upvote_count", "num_upvotes"][..]),
            ("comment_count", &["comments", "comment_count"][..]),
            ("shares", &["shares", "share_count"][..]),
            ("views", &["views", "view_count"][..]),
        ] {
            if let Some(n) = keys.iter().find_map(|k| a.get(*k).and_then(super::count)) {
                meta.insert(name.into(), json!(n));
            }
        }
        if let Some(d) = text(a, &["date", "answer_date", "created_at"]) {
            meta.insert("date".into(), json!(d));
        }
        if let Some(who) = text(a, &["author", "author_name"]) {
            meta.insert("author".into(), json!(who));
        }
        out.push(Record {
            question: question.clone(),
            answer: text(a, &["answer", "text", "content", "answer_text"]),
            url: Some(text(a, &["url", "answer_url"]).unwrap_or_else(|| question_url.to_string())),
            external_id: Some(format!("{question_url}#{i}")),
            meta,
        });
    }
    if out.is_empty() {
        let mut meta = Map::new();
        base_meta(&mut meta);
        out.push(Record {
            question,
            answer: None,
            url: Some(question_url.to_string()),
            external_id: Some(question_url.to_string()),
            meta,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_question_links_only() {
        let html = r#"<html><body>
          <a href="/What-is-Rust-used-for">q1</a>
          <a href="https://www.quora.com/How-do-I-learn-C++?ch=1#x">q2</a>
          <a href="/topic/Programming-Languages">topic</a>
          <a href="/profile/Jane-Doe">profile</a>
          <a href="https://example.com/What-is-this">other host</a>
          <a href="/What-is-Rust-used-for">dup</a>
          <a href="/Rust">one word</a>
          <a href="/What-is-X/answer/Jane-Doe">answer link</a>
          <a>no href</a>
        </body></html>"#;
        let links = question_links(html, "https://www.quora.com/topic/Technology");
        assert_eq!(
            links,
            vec![
                "https://www.quora.com/What-is-Rust-used-for",
                "https://www.quora.com/How-do-I-learn-C++"
            ]
        );
    }

    #[test]
    fn maps_scraped_question() {
        let data = json!({"question_title": "What is Rust?", "question_details": "For systems work",
            "answers": [{"author": "A", "upvotes": "1.5K", "text": "A language."},
                        {"content": "Another answer.", "upvote_count": 3}]});
        let r = question_records(&data, "https://www.quora.com/What-is-Rust", "Technology");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].question, "What is Rust?\n\nFor systems work");
        assert_eq!(r[0].answer.as_deref(), Some("A language."));
        assert_eq!(r[0].meta["upvotes"], 1500);
        assert_eq!(r[1].meta["upvotes"], 3);
        assert_eq!(r[1].meta["label"], "Technology");
        let none = question_records(&json!({"question_title": "Q?"}), "u", "t");
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].answer, None);
    }

    #[test]
    fn topics() {
        assert_eq!(
            topic_url("Technology"),
            "https://www.quora.com/topic/Technology"
        );
        assert_eq!(
            topic_label("https://www.quora.com/topic/Machine-Learning"),
            "Machine Learning"
        );
    }
}
