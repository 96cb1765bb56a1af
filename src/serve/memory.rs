//! Memory of past conversations: before generating, the most relevant earlier
//! messages of the same user (SQLite FTS5, BM25) go into the prompt within a
//! token budget; after it, the user's message and the answer are stored.
//! Nothing is recalled or stored for a request without a `user` field or an
//! `X-Conversation-Id` header.

use lorastream_ml::Message;
use lorastream_store::{MessageRow, Role, Store, StoreError};

/// Who a request is from and which conversation it continues.
#[derive(Debug, Clone)]
pub struct Speaker {
    pub user: Option<String>,
    pub conversation: String,
}

impl Speaker {
    /// From the request's `user` field and `X-Conversation-Id` header; `None`
    /// when neither is given (an anonymous request is not remembered).
    pub fn of(user: Option<&str>, conversation: Option<&str>) -> Option<Speaker> {
        let user = user.map(str::trim).filter(|u| !u.is_empty());
        let conversation = conversation.map(str::trim).filter(|c| !c.is_empty());
        let conversation = match (conversation, user) {
            (Some(c), _) => c.to_string(),
            (None, Some(u)) => format!("user:{u}"),
            (None, None) => return None,
        };
        Some(Speaker {
            user: user.map(str::to_string),
            conversation,
        })
    }
}

/// Earlier messages of `speaker`'s user relevant to `messages` (best first),
/// at most `limit` and about `budget_tokens` tokens (4 characters a token),
/// leaving out what the request already contains.
pub fn recall(
    store: &Store,
    speaker: &Speaker,
    messages: &[Message],
    limit: usize,
    budget_tokens: usize,
) -> Result<Vec<MessageRow>, StoreError> {
    let Some(user) = &speaker.user else {
        return Ok(Vec::new());
    };
    let Some(query) = messages.iter().rev().find(|m| m.role == "user") else {
        return Ok(Vec::new());
    };
    let found = store.search_user_messages(user, &query.content, limit * 4 + 8)?;
    let mut budget = budget_tokens * 4;
    let mut out = Vec::new();
    for m in found {
        if out.len() >= limit {
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

/// Stores the request's last user message and the answer in the conversation;
/// returns the answer's message id (what `POST /v1/feedback` rates).
pub fn remember(
    store: &Store,
    speaker: &Speaker,
    messages: &[Message],
    answer: &str,
) -> Result<Option<i64>, StoreError> {
    store.in_transaction(|s| {
        s.ensure_conversation(&speaker.conversation, speaker.user.as_deref())?;
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
    fn recalls_the_users_own_earlier_messages_across_conversations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let ann = Speaker::of(Some("ann"), Some("c1")).unwrap();
        let bob = Speaker::of(Some("bob"), None).unwrap();
        assert_eq!(bob.conversation, "user:bob");
        assert!(Speaker::of(None, None).is_none());
        let said = |s: &Speaker, q: &str, a: &str| {
            remember(&store, s, &[Message::new("user", q)], a).unwrap()
        };
        said(&ann, "My cat is called Miso.", "Nice name.");
        said(&bob, "My cat is called Rex.", "Good.");
        let later = Speaker::of(Some("ann"), Some("c2")).unwrap();
        let ask = vec![Message::new("user", "What is my cat called?")];
        let got = recall(&store, &later, &ask, 4, 256).unwrap();
        assert!(got.iter().any(|m| m.content.contains("Miso")), "{got:?}");
        assert!(
            !got.iter().any(|m| m.content.contains("Rex")),
            "another user's"
        );
        let prompt = with_memories(ask, &got);
        assert_eq!(prompt[0].role, "system");
        assert!(prompt[0].content.contains("Miso"));
        assert_eq!(store.forget_user("ann").unwrap(), 2);
        assert!(recall(&store, &later, &prompt, 4, 256).unwrap().is_empty());
    }
}
