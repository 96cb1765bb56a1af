//! `lorastream chat`: a terminal chat against the running daemon's API. It
//! streams tokens as they arrive, keeps its conversation (history and an
//! `X-Conversation-Id`), and takes `/reset`, `/model V` and `/quit`. When stdin
//! is not a terminal it reads one message per line (scriptable).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};

use lorastream::config::Config;

pub struct ChatArgs {
    pub url: Option<String>,
    pub model: Option<String>,
    pub user: Option<String>,
}

pub fn command(config: &Config, args: ChatArgs) -> anyhow::Result<ExitCode> {
    let url = args
        .url
        .unwrap_or_else(|| format!("http://{}", config.server.listen));
    // A key of one's own ([[server.keys]]) from LORASTREAM_API_KEY, else the
    // config's single admin key.
    let key = match std::env::var("LORASTREAM_API_KEY") {
        Ok(k) if !k.trim().is_empty() => Some(k.trim().to_string()),
        _ => lorastream::util::http::read_secret(
            "[server] API key",
            config.server.api_key_file.as_deref(),
            config.server.api_key_env.as_deref(),
        )?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(chat_loop(url, key, args.model, args.user))
}

async fn chat_loop(
    url: String,
    key: Option<String>,
    mut model: Option<String>,
    user: Option<String>,
) -> anyhow::Result<ExitCode> {
    let client = lorastream::util::http::client_builder().build()?;
    let interactive = std::io::stdin().is_terminal();
    // The server names the conversation (X-Conversation-Id) on the first answer.
    let mut conversation: Option<String> = None;
    let mut history: Vec<Value> = Vec::new();
    if interactive {
        eprintln!("chatting with {url} (/reset, /model NAME, /quit)");
    }
    let mut lines = std::io::stdin().lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match slash_command(line, &mut model) {
            Some(Slash::Quit) => break,
            Some(Slash::Reset) => {
                history.clear();
                conversation = None;
                eprintln!("(new conversation)");
                continue;
            }
            Some(Slash::Model) => continue,
            None => {}
        }
        history.push(json!({"role": "user", "content": line}));
        let mut body = json!({"messages": history, "stream": true});
        if let Some(m) = &model {
            body["model"] = json!(m);
        }
        if let Some(u) = &user {
            body["user"] = json!(u);
        }
        let mut req = client
            .post(format!("{}/v1/chat/completions", url.trim_end_matches('/')))
            .json(&body);
        if let Some(c) = &conversation {
            req = req.header("x-conversation-id", c);
        }
        if let Some(k) = &key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            history.pop();
            eprintln!(
                "error {status}: {}",
                v["error"]["message"].as_str().unwrap_or("(no message)")
            );
            continue;
        }
        if let Some(c) = resp.headers().get("x-conversation-id")
            && let Ok(c) = c.to_str()
        {
            conversation = Some(c.to_string());
        }
        let answer = print_stream(resp).await?;
        history.push(json!({"role": "assistant", "content": answer}));
    }
    Ok(ExitCode::SUCCESS)
}

enum Slash {
    Quit,
    Reset,
    /// `/model NAME` (already applied).
    Model,
}

/// The command `line` is, if any (`/model` changes `model` here).
fn slash_command(line: &str, model: &mut Option<String>) -> Option<Slash> {
    match line {
        "/quit" | "/exit" => return Some(Slash::Quit),
        "/reset" => return Some(Slash::Reset),
        _ => {}
    }
    let m = line.strip_prefix("/model")?;
    *model = Some(m.trim().to_string()).filter(|m| !m.is_empty());
    eprintln!("(model: {})", model.as_deref().unwrap_or("the served one"));
    Some(Slash::Model)
}

/// Prints the streamed deltas as they come; returns the whole answer.
async fn print_stream(resp: reqwest::Response) -> anyhow::Result<String> {
    let mut answer = String::new();
    let mut out = std::io::stdout();
    super::sse::each_event(resp, |v| {
        if let Some(msg) = v["error"]["message"].as_str() {
            eprintln!("\nerror: {msg}");
        }
        if let Some(d) = v["choices"][0]["delta"]["content"].as_str() {
            answer.push_str(d);
            write!(out, "{d}")?;
            out.flush()?;
        }
        Ok(())
    })
    .await?;
    writeln!(out)?;
    Ok(answer)
}
