//! Memory of past conversations: before generating, the most relevant earlier
//! messages of the same owner (identity and end user; SQLite FTS5, BM25) go
//! into the prompt within a token budget; after it, the user's message and
//! the answer are stored. A request is remembered when it names a `user` (a
//! new conversation, whose server-made id comes back in `X-Conversation-Id`)
//! or continues a conversation of its caller's by that id. A request that
//! continues a conversation without naming its `user` recalls from that
//! conversation alone: holding one conversation's id never opens the rest of
//! its end user's memory.
//!
//! Recall runs on read-only connections of its own (WAL readers never wait
//! for the writer), with at most `memory_query_terms` terms and a time budget,
//! so a long message cannot hold what other requests need.

pub mod feedback;
pub mod forget;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use lorastream_ml::Message;
use lorastream_store::{MessageRow, Owner, RecallQuery, Role, Store, StoreError};

use crate::serve::error::ApiError;

/// Longest `user` and conversation id accepted (characters).
pub const MAX_USER_CHARS: usize = 256;
pub const MAX_CONVERSATION_CHARS: usize = 128;

/// Who a request is from and which conversation it continues.
#[derive(Debug, Clone)]
pub struct Speaker {
    pub owner: Owner,
    pub conversation: String,
    /// The conversation is created when the exchange is stored.
    pub new: bool,
    /// Recall reads this conversation only (continued by id without `user`).
    pub this_conversation_only: bool,
}

/// The request's `user` field, checked: at most [`MAX_USER_CHARS`]
/// characters, no control characters; blank is none.
pub fn check_user(user: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(u) = user.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if u.chars().count() > MAX_USER_CHARS {
        return Err(ApiError::invalid(
            "user",
            &format!("`user` is limited to {MAX_USER_CHARS} characters"),
        ));
    }
    if u.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "user",
            "`user` must not contain control characters",
        ));
    }
    Ok(Some(u.to_string()))
}

/// The `X-Conversation-Id` header, checked: at most
/// [`MAX_CONVERSATION_CHARS`] letters, digits, `-` or `_`.
pub fn check_conversation(id: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(id) = id.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let ok = id.len() <= MAX_CONVERSATION_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(ApiError::invalid(
            "x-conversation-id",
            &format!(
                "a conversation id is at most {MAX_CONVERSATION_CHARS} letters, digits, - or _"
            ),
        ));
    }
    Ok(Some(id.to_string()))
}

/// The speaker of a request by `identity`: a conversation it owns (`user`,
/// when given, must be the conversation's), or a new one for `user`; `None`
/// when it names neither (an anonymous request is not remembered).
pub fn speaker(
    store: &Store,
    identity: &str,
    user: Option<&str>,
    conversation: Option<&str>,
) -> Result<Option<Speaker>, StoreError> {
    match (conversation, user) {
        (Some(id), _) => {
            let owner = store.owned_conversation(id, identity)?;
            if user.is_some() && owner.user.as_deref() != user {
                return Err(StoreError::NotFound {
                    what: "conversation",
                    id: id.into(),
                });
            }
            Ok(Some(Speaker {
                owner,
                conversation: id.to_string(),
                new: false,
                this_conversation_only: user.is_none(),
            }))
        }
        (None, Some(u)) => Ok(Some(Speaker {
            owner: Owner::new(identity, Some(u)),
            conversation: crate::util::ids::random_hex(16),
            new: true,
            this_conversation_only: false,
        })),
        (None, None) => Ok(None),
    }
}

/// Read-only store connections for recall, opened on demand and reused.
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Store>>,
}

impl Readers {
    pub fn new(path: PathBuf) -> Readers {
        Readers {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on an idle reader (or a new one), then keeps it for the next.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut store = match idle {
            Some(s) => s,
            None => Store::open_read_only(&self.path)?,
        };
        let r = f(&mut store);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < 4 {
            idle.push(store);
        }
        r
    }
}

/// Limits of one recall (`[server]` memory_*).
#[derive(Debug, Clone, Copy)]
pub struct RecallLimits {
    pub results: usize,
    pub tokens: usize,
    pub terms: usize,
    pub budget: Duration,
}

/// Earlier messages of `speaker`'s owner (or of its conversation alone,
/// see [`Speaker::this_conversation_only`]) relevant to `messages` (best
/// first), at most `limits.results` and about `limits.tokens` tokens (4
/// characters a token), leaving out what the request already contains.
pub fn recall(
    store: &mut Store,
    speaker: &Speaker,
    messages: &[Message],
    limits: RecallLimits,
) -> Result<Vec<MessageRow>, StoreError> {
    let Some(query) = messages.iter().rev().find(|m| m.role == "user") else {
        return Ok(Vec::new());
    };
    let found = store.recall(&RecallQuery {
        owner: &speaker.owner,
        conversation: speaker
            .this_conversation_only
            .then_some(speaker.conversation.as_str()),
        text: &query.content,
        max_terms: limits.terms,
        limit: limits.results * 4 + 8,
        budget: limits.budget,
    })?;
    let mut budget = limits.tokens * 4;
    let mut out = Vec::new();
    for m in found {
        if out.len() >= limits.results {
            break;
        }
        if messages
            .iter()
            .any(|r| r.content.trim() == m.content.trim())
        {
            continue;
        }
        if m.content.len() > budget {
            continue;
        }
        budget -= m.content.len();
        out.push(m);
    }
    Ok(out)
}

/// `messages` with the recalled ones put in front of the conversation, in the
/// system prompt (merged with the client's own, if any).
pub fn with_memories(messages: Vec<Message>, memories: &[MessageRow]) -> Vec<Message> {
    if memories.is_empty() {
        return messages;
    }
    let mut note = String::from(
        "Relevant things from earlier conversations with this user (use them if they help):",
    );
    for m in memories {
        let who = match m.role {
            Role::User => "the user said",
            Role::Assistant => "you said",
            Role::System => "note",
        };
        note.push_str(&format!("\n- {who}: {}", m.content.trim()));
    }
    let mut out = messages;
    match out.first_mut() {
        Some(first) if first.role == "system" => {
            first.content = format!("{}\n\n{note}", first.content);
        }
        _ => out.insert(0, Message::new("system", &note)),
    }
    out
}

/// Stores the request's last user message and the answer in the conversation
/// (created first when new); returns the answer's message id (what `POST
/// /v1/feedback` rates).
pub fn remember(
    store: &Store,
    speaker: &Speaker,
    messages: &[Message],
    answer: &str,
) -> Result<Option<i64>, StoreError> {
    store.in_transaction(|s| {
        if speaker.new {
            s.open_conversation(&speaker.conversation, &speaker.owner)?;
        }
        if let Some(q) = messages.iter().rev().find(|m| m.role == "user") {
            s.add_message(&speaker.conversation, Role::User, &q.content)?;
        }
        if answer.trim().is_empty() {
            return Ok(None);
        }
        Ok(Some(s.add_message(
            &speaker.conversation,
            Role::Assistant,
            answer,
        )?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recalls_the_owners_own_earlier_messages_across_conversations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        let ann = speaker(&store, "team", Some("ann"), None).unwrap().unwrap();
        let bob = speaker(&store, "team", Some("bob"), None).unwrap().unwrap();
        assert_eq!(ann.conversation.len(), 32, "128 random bits");
        assert!(speaker(&store, "team", None, None).unwrap().is_none());
        let said = |s: &Speaker, q: &str, a: &str| {
            remember(&store, s, &[Message::new("user", q)], a).unwrap()
        };
        said(&ann, "My cat is called Miso.", "Nice name.");
        said(&bob, "My cat is called Rex.", "Good.");
        // Another identity cannot continue ann's conversation, nor bob.
        for (identity, user) in [("other", None), ("team", Some("bob"))] {
            assert!(matches!(
                speaker(&store, identity, user, Some(&ann.conversation)),
                Err(StoreError::NotFound { .. })
            ));
        }
        let readers = Readers::new(path);
        let limits = RecallLimits {
            results: 4,
            tokens: 256,
            terms: 32,
            budget: Duration::from_secs(5),
        };
        let ask = vec![Message::new("user", "What is my cat called?")];
        let got = readers.with(|s| recall(s, &ann, &ask, limits)).unwrap();
        assert!(got.iter().any(|m| m.content.contains("Miso")), "{got:?}");
        assert!(
            !got.iter().any(|m| m.content.contains("Rex")),
            "another user's"
        );
        let prompt = with_memories(ask, &got);
        assert_eq!(prompt[0].role, "system");
        assert!(prompt[0].content.contains("Miso"));
        assert_eq!(store.forget("team", Some(Some("ann"))).unwrap().messages, 2);
        let after = readers.with(|s| recall(s, &ann, &prompt, limits)).unwrap();
        assert!(after.is_empty());
        assert!(check_user(Some("a\u{7}b")).is_err());
        assert!(check_user(Some(&"x".repeat(MAX_USER_CHARS + 1))).is_err());
        assert!(check_conversation(Some("../etc")).is_err());
    }
}
