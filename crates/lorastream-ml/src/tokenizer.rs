//! `tokenizer.json` with the tokenizers crate, and chat templates rendered with
//! minijinja the way transformers renders them (trim_blocks, lstrip_blocks,
//! loop controls, `raise_exception`, Python string methods).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::MlError;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The template used when a model has none (GPT-2): `User: …\nAssistant: …`
/// lines joined by newlines, the end-of-text token after the last message, and
/// `\nAssistant:` as the generation prompt. Override with `[model] chat_template`.
pub const PLAIN_TEMPLATE: &str = "{%- for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}\
{{ m.role | capitalize }}: {{ m.content }}{% endfor %}\
{% if add_generation_prompt %}{{ '\\nAssistant:' }}{% else %}{{ eos_token }}{% endif %}";

pub struct ChatTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    template: String,
    /// True when the model ships its own template (not [`PLAIN_TEMPLATE`]).
    pub has_template: bool,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
}

/// `"<s>"` or `{"content": "<s>", …}` as tokenizer_config.json writes special tokens.
fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

impl ChatTokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` (special tokens, template)
    /// and `chat_template.jinja` from a model directory. `template_override`
    /// replaces the model's template.
    pub fn load(dir: &Path, template_override: Option<&Path>) -> Result<ChatTokenizer, MlError> {
        let path = dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| MlError::Tokenizer {
                path: path.clone(),
                msg: e.to_string(),
            })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| MlError::Tokenizer {
                path: cfg_path.clone(),
                msg: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
            Err(e) => return Err(MlError::io(&cfg_path, e)),
        };
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| MlError::io(p, e));
        let jinja = dir.join("chat_template.jinja");
        let template = if let Some(p) = template_override {
            Some(read(p)?)
        } else if jinja.exists() {
            Some(read(&jinja)?)
        } else {
            match cfg.get("chat_template") {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: take "default".
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(String::from),
                _ => None,
            }
        };
        let tok = ChatTokenizer {
            tokenizer,
            has_template: template.is_some(),
            template: template.unwrap_or_else(|| PLAIN_TEMPLATE.to_string()),
            bos_token: token_str(cfg.get("bos_token")),
            eos_token: token_str(cfg.get("eos_token")),
            pad_token: token_str(cfg.get("pad_token")),
        };
        // Fail at load, not at the first request.
        tok.env()?;
        Ok(tok)
    }

    fn env(&self) -> Result<minijinja::Environment<'_>, MlError> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |fmt: String| {
            chrono::Utc::now().format(&fmt).to_string()
        });
        env.add_template("chat", &self.template)
            .map_err(|e| MlError::Template(format!("{e:#}")))?;
        Ok(env)
    }

    /// Renders messages as transformers' `apply_chat_template(tokenize=False)`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, MlError> {
        let env = self.env()?;
        let tmpl = env
            .get_template("chat")
            .map_err(|e| MlError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_deref().unwrap_or(""),
            eos_token => self.eos_token.as_deref().unwrap_or(""),
            pad_token => self.pad_token.as_deref().unwrap_or(""),
        })
        .map_err(|e| MlError::Template(format!("{e:#}")))
    }

    /// Token ids of `text` without adding special tokens (as `apply_chat_template` does).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, MlError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| MlError::Template(format!("tokenizing: {e}")))
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, false).unwrap_or_default()
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The id of the end-of-sequence token, if the tokenizer knows it.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token.as_deref().and_then(|t| self.token_id(t))
    }

    /// The padding id: pad token, else eos, else 0 (as the peer benchmark does).
    pub fn pad_id(&self) -> u32 {
        self.pad_token
            .as_deref()
            .and_then(|t| self.token_id(t))
            .or_else(|| self.eos_id())
            .unwrap_or(0)
    }
}
