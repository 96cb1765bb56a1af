//! `conversations` and `messages`: chat history. A conversation belongs to an
//! [`Owner`] (an identity and the end user inside it); every call that reads
//! or writes one names its owner, and a conversation of another owner is
//! [`StoreError::NotFound`], exactly as one that does not exist.

use rusqlite::{OptionalExtension, params};

use crate::SourceKind;

use super::{Inserted, MessageRow, NewRawItem, Result, Role, Store, StoreError, now_ms};

/// The `raw_items.source` of what users taught through the chat API.
pub const CONVERSATIONS_SOURCE: &str = "conversations";

/// Who a conversation belongs to: the identity (an API key's name) and the
/// end user inside it (OpenAI's `user` field; `None`: the identity itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub identity: String,
    pub user: Option<String>,
}

impl Owner {
    pub fn new(identity: &str, user: Option<&str>) -> Owner {
        Owner {
            identity: identity.to_string(),
            user: user.map(str::to_string),
        }
    }
}

/// A rated exchange: what `rate_message` found.
#[derive(Debug, Clone)]
pub struct RatedExchange {
    pub owner: Owner,
    /// The user message the rated answer replied to, and the answer.
    pub question: Option<String>,
    pub answer: String,
    /// The conversation opted in to training.
    pub learn: bool,
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        what: "conversation",
        id: id.into(),
    }
}

impl Store {
    /// Creates conversation `id` (an id the server made) for `owner`.
    pub fn open_conversation(&self, id: &str, owner: &Owner) -> Result<()> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO conversations (id, identity, user, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![id, owner.identity, owner.user, now],
        )?;
        Ok(())
    }

    /// The owner of conversation `id`, if it exists.
    pub fn conversation_owner(&self, id: &str) -> Result<Option<Owner>> {
        Ok(self
            .conn
            .query_row(
                "SELECT identity, user FROM conversations WHERE id = ?1",
                [id],
                |r| {
                    Ok(Owner {
                        identity: r.get(0)?,
                        user: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Conversation `id` of `identity` (any of its users): its owner, or
    /// [`StoreError::NotFound`] when it is unknown or another identity's.
    pub fn owned_conversation(&self, id: &str, identity: &str) -> Result<Owner> {
        match self.conversation_owner(id)? {
            Some(o) if o.identity == identity => Ok(o),
            _ => Err(not_found(id)),
        }
    }

    pub fn add_message(&self, conversation_id: &str, role: Role, content: &str) -> Result<i64> {
        self.atomically(|tx| {
            let now = now_ms();
            let n = tx.execute(
                "UPDATE conversations SET updated_at = ?2 WHERE id = ?1",
                params![conversation_id, now],
            )?;
            if n == 0 {
                return Err(not_found(conversation_id));
            }
            tx.execute(
                "INSERT INTO messages (conversation_id, role, content, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![conversation_id, role.as_str(), content, now],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    pub fn messages(&self, conversation_id: &str) -> Result<Vec<MessageRow>> {
        self.rows("WHERE conversation_id = ?1 ORDER BY id", [conversation_id])
    }

    /// Every message of `owner`'s conversations, oldest first.
    pub fn owner_messages(&self, owner: &Owner) -> Result<Vec<MessageRow>> {
        self.rows(
            "WHERE conversation_id IN (SELECT id FROM conversations WHERE identity = ?1 AND user IS ?2)
             ORDER BY id",
            params![owner.identity, owner.user],
        )
    }

    /// Records a rating of assistant message `message_id` (unset: the last
    /// answer) of conversation `conversation`, which must be `identity`'s
    /// (and the conversation's opt-in to training, once given). Returns the
    /// exchange it rated.
    pub fn rate_message(
        &self,
        identity: &str,
        conversation: &str,
        message_id: Option<i64>,
        rating: i64,
        learn: bool,
    ) -> Result<RatedExchange> {
        self.atomically(|tx| {
            let owner = self.owned_conversation(conversation, identity)?;
            let not_found = || StoreError::NotFound {
                what: "assistant message",
                id: format!("{conversation}/{}", message_id.map_or("last".into(), |m| m.to_string())),
            };
            let (id, answer): (i64, String) = tx
                .query_row(
                    "SELECT id, content FROM messages WHERE conversation_id = ?1 AND role = 'assistant'
                     AND (?2 IS NULL OR id = ?2) ORDER BY id DESC LIMIT 1",
                    params![conversation, message_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .ok_or_else(not_found)?;
            let question: Option<String> = tx
                .query_row(
                    "SELECT content FROM messages WHERE conversation_id = ?1 AND role = 'user' AND id < ?2
                     ORDER BY id DESC LIMIT 1",
                    params![conversation, id],
                    |r| r.get(0),
                )
                .optional()?;
            tx.execute(
                "INSERT INTO message_feedback (message_id, rating, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(message_id) DO UPDATE SET rating = excluded.rating, created_at = excluded.created_at",
                params![id, rating, now_ms()],
            )?;
            if learn {
                tx.execute("UPDATE conversations SET learn = 1 WHERE id = ?1", [conversation])?;
            }
            let learn: bool = tx.query_row(
                "SELECT learn FROM conversations WHERE id = ?1",
                [conversation],
                |r| r.get(0),
            )?;
            Ok(RatedExchange {
                owner,
                question,
                answer,
                learn,
            })
        })
    }

    /// Stores a helpful exchange of `owner`'s conversation as a raw item of
    /// the `conversations` source, for the normal preprocessing path.
    pub fn learn_exchange(
        &self,
        conversation: &str,
        owner: &Owner,
        question: &str,
        answer: &str,
    ) -> Result<Inserted> {
        self.ensure_source(CONVERSATIONS_SOURCE, SourceKind::Conversations)?;
        let external = format!(
            "{conversation}:{}",
            crate::content_hash(&[question, answer])
        );
        self.insert_raw_item(&NewRawItem {
            source: CONVERSATIONS_SOURCE,
            external_id: Some(&external),
            url: None,
            question,
            answer: Some(answer),
            meta: serde_json::json!({
                "label": CONVERSATIONS_SOURCE,
                "identity": owner.identity,
                "user": owner.user,
                "conversation": conversation,
            }),
        })
    }
}
