//! `tokenizer.json` with the tokenizers crate, and chat templates rendered with
//! minijinja the way transformers renders them (trim_blocks, lstrip_blocks,
//! loop controls, `raise_exception`, Python string methods).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::MlError;

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
    /// The same tokenizer with special tokens' spellings read as text: what
    /// message contents are encoded with (see [`ChatTokenizer::encode_chat`]).
    text_tokenizer: tokenizers::Tokenizer,
    /// Spellings of the special tokens, longest first.
    specials: Vec<(String, u32)>,
    template: String,
    /// True when the model ships its own template (not [`PLAIN_TEMPLATE`]).
    pub has_template: bool,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    /// The template refuses a system message (Gemma 1/2 raise): a leading
    /// system message goes at the start of the first user message instead,
    /// as Gemma 3's template puts it.
    pub folds_system: bool,
}

/// `"<s>"` or `{"content": "<s>", …}` as tokenizer_config.json writes special tokens.
fn token_str(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(String::from),
        _ => None,
    }
}

/// The template a multimodal processor saves beside the tokenizer:
/// `chat_template.json`, `{"chat_template": "…"}`.
fn processor_template(dir: &Path) -> Result<Option<String>, MlError> {
    let path = dir.join("chat_template.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(MlError::io(&path, e)),
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| MlError::Tokenizer {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    Ok(v["chat_template"].as_str().map(String::from))
}

impl ChatTokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` (special tokens, template)
    /// and `chat_template.jinja` from a model directory (or a multimodal
    /// processor's `chat_template.json`). `template_override` replaces the
    /// model's template.
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
                _ => processor_template(dir)?,
            }
        };
        let mut text_tokenizer = tokenizer.clone();
        text_tokenizer.set_encode_special_tokens(true);
        let mut specials: Vec<(String, u32)> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && !t.content.is_empty())
            .map(|(id, t)| (t.content, id))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let tok = ChatTokenizer {
            tokenizer,
            text_tokenizer,
            specials,
            has_template: template.is_some(),
            template: template.unwrap_or_else(|| PLAIN_TEMPLATE.to_string()),
            bos_token: token_str(cfg.get("bos_token")),
            eos_token: token_str(cfg.get("eos_token")),
            pad_token: token_str(cfg.get("pad_token")),
            folds_system: false,
        };
        // Fail at load, not at the first request.
        tok.env()?;
        let probe = |m: &[Message]| tok.render_as_is(m, true).is_ok();
        let (system, user) = (Message::new("system", "s"), Message::new("user", "u"));
        let folds_system = !probe(&[system, user.clone()]) && probe(&[user]);
        Ok(ChatTokenizer {
            folds_system,
            ..tok
        })
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

    /// Renders messages as transformers' `apply_chat_template(tokenize=False)`
    /// (a system message folded where the template refuses one).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, MlError> {
        self.render_as_is(&self.folded(messages), add_generation_prompt)
    }

    /// `messages` with a leading system message put at the start of the
    /// first user message, where the template refuses system messages.
    fn folded<'m>(&self, messages: &'m [Message]) -> std::borrow::Cow<'m, [Message]> {
        match messages.split_first() {
            Some((system, rest)) if self.folds_system && system.role == "system" => {
                let mut rest = rest.to_vec();
                match rest.first_mut() {
                    Some(user) if user.role == "user" => {
                        user.content = format!("{}\n\n{}", system.content, user.content);
                    }
                    _ => rest.insert(0, Message::new("user", &system.content)),
                }
                std::borrow::Cow::Owned(rest)
            }
            _ => std::borrow::Cow::Borrowed(messages),
        }
    }

    fn render_as_is(
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

    /// Token ids of `messages` rendered by the chat template, with every
    /// message's content encoded as text: a special token's spelling typed in
    /// a message stays text, only the template's own markers are special
    /// tokens. Equal to `encode(render(..))` whenever no content spells one.
    pub fn encode_chat(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, MlError> {
        let messages = &self.folded(messages);
        let rendered = self.render(messages, add_generation_prompt)?;
        let spans = match self.content_spans(messages, add_generation_prompt, &rendered) {
            Some(spans) => spans,
            None => {
                // The template rewrites contents, so they cannot be found in
                // its output: refuse the spellings it would turn into tokens.
                if let Some((i, (tok, _))) = messages.iter().enumerate().find_map(|(i, m)| {
                    self.specials
                        .iter()
                        .find(|(t, _)| m.content.contains(t.as_str()))
                        .map(|t| (i, t))
                }) {
                    return Err(MlError::Template(format!(
                        "message {i} contains the special token {tok:?}, which this chat \
                         template cannot keep as text"
                    )));
                }
                Vec::new()
            }
        };
        let mut ids = Vec::new();
        let mut start = 0;
        for (at, len, id) in self.markers(&rendered, &spans) {
            ids.extend(self.encode_text(&rendered[start..at])?);
            ids.push(id);
            start = at + len;
        }
        ids.extend(self.encode_text(&rendered[start..])?);
        Ok(ids)
    }

    /// Where each message's content sits in `rendered`: found by rendering
    /// the template with placeholders for the contents and putting them back
    /// (as they are, or trimmed, as templates do); `None` when neither gives
    /// `rendered` (the template changes contents).
    fn content_spans(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        rendered: &str,
    ) -> Option<Vec<std::ops::Range<usize>>> {
        const OPEN: char = '\u{F8F0}';
        const CLOSE: char = '\u{F8F1}';
        let marked: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| Message::new(&m.role, &format!("{OPEN}{i}{CLOSE}")))
            .collect();
        let skeleton = self.render(&marked, add_generation_prompt).ok()?;
        for trim in [false, true] {
            let (mut out, mut spans, mut rest) = (String::new(), Vec::new(), skeleton.as_str());
            while let Some((before, after)) = rest.split_once(OPEN) {
                let (index, tail) = after.split_once(CLOSE)?;
                let content = &messages.get(index.parse::<usize>().ok()?)?.content;
                let content = if trim {
                    content.trim()
                } else {
                    content.as_str()
                };
                out.push_str(before);
                spans.push(out.len()..out.len() + content.len());
                out.push_str(content);
                rest = tail;
            }
            out.push_str(rest);
            if out == rendered {
                return Some(spans);
            }
        }
        None
    }

    /// The template's special tokens in `rendered` (offset, length, id),
    /// outside the message contents `spans`, in order.
    fn markers(
        &self,
        rendered: &str,
        spans: &[std::ops::Range<usize>],
    ) -> Vec<(usize, usize, u32)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < rendered.len() {
            if let Some(span) = spans.iter().find(|s| s.contains(&i)) {
                i = span.end;
                continue;
            }
            match self
                .specials
                .iter()
                .find(|(t, _)| rendered[i..].starts_with(t.as_str()))
            {
                Some((t, id)) => {
                    out.push((i, t.len(), *id));
                    i += t.len();
                }
                None => i += rendered[i..].chars().next().map_or(1, char::len_utf8),
            }
        }
        out
    }

    /// Token ids of `text` with special tokens' spellings read as text.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, MlError> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        self.text_tokenizer
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::init::{InitOptions, Preset, init_model};

    /// Gemma 2's template, which refuses system messages.
    const GEMMA2: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";

    #[test]
    fn a_template_that_refuses_system_messages_gets_them_in_the_first_user_turn() {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            arch: crate::Arch::Gemma2,
            preset: Preset::Tiny,
            corpus: None,
            seed: 1,
            vocab_size: 300,
        };
        init_model(dir.path(), &opts).unwrap();
        let plain = ChatTokenizer::load(dir.path(), None).unwrap();
        assert!(!plain.folds_system, "ChatML takes system messages");
        let template = dir.path().join("gemma2.jinja");
        std::fs::write(&template, GEMMA2).unwrap();
        let tok = ChatTokenizer::load(dir.path(), Some(&template)).unwrap();
        assert!(tok.folds_system);
        let chat = [
            Message::new("system", "Be brief."),
            Message::new("user", "What is LoRA?"),
        ];
        let text = tok.render(&chat, true).unwrap();
        let bos = tok.bos_token.clone().unwrap_or_default();
        let want = format!(
            "{bos}<start_of_turn>user\nBe brief.\n\nWhat is LoRA?<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(text, want);
        assert!(!tok.encode_chat(&chat, true).unwrap().is_empty());
        let alone = [Message::new("system", "Only a note.")];
        assert!(
            tok.render(&alone, true)
                .unwrap()
                .contains("user\nOnly a note.")
        );
    }
}
