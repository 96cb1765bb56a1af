//! Store tests against a real SQLite file in a temporary directory.

use super::*;
use crate::SourceKind;
use serde_json::json;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state/lorastream.db")).unwrap();
    (dir, store)
}

fn qa(store: &Store, q: &str, a: &str) -> Inserted {
    store
        .insert_raw_item(&NewRawItem {
            source: "spool",
            external_id: None,
            url: Some("https://www.quora.com/q"),
            question: q,
            answer: Some(a),
            meta: json!({"upvotes": 3}),
        })
        .unwrap()
}

fn example(store: &Store, q: &str, a: &str) -> i64 {
    store
        .insert_example(&NewExample {
            raw_item_id: None,
            messages: json!([{"role": "user", "content": q}, {"role": "assistant", "content": a}]),
            origin: Origin::Import,
            quality: json!({}),
            norm_hash: None,
        })
        .unwrap()
        .id()
}

#[test]
fn opens_in_wal_with_current_schema_and_reopens() {
    let (dir, store) = open();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.journal_mode().unwrap(), "wal");
    store.ensure_source("spool", SourceKind::Spool).unwrap();
    drop(store);
    let again = Store::open(&dir.path().join("state/lorastream.db")).unwrap();
    assert_eq!(again.sources().unwrap().len(), 1);
}

#[test]
fn a_version_4_database_with_versions_migrates_keeping_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "foreign_keys", "ON").unwrap();
        for sql in &MIGRATIONS[..4] {
            c.execute_batch(sql).unwrap();
        }
        c.execute_batch(
            "PRAGMA user_version = 4;
             INSERT INTO streams (id, name, created_at, n_train, n_eval, path, state)
                 VALUES (1, 's1', 1, 3, 1, '/s/1', 'trained'), (2, 's2', 2, 3, 1, '/s/2', 'trained');
             INSERT INTO examples (id, content_hash, messages, state, stream_id, split, created_at)
                 VALUES (1, 'h1', '[]', 'sealed', 1, 'train', 1);
             INSERT INTO adapters (id, parent_id, stream_id, attempt, path, state, created_at, updated_at)
                 VALUES (1, NULL, 1, 1, '/a/1', 'promoted', 10, 50),
                        (2, 1, 2, 1, '/a/2', 'promoted', 20, 30),
                        (3, 2, 2, 2, '/a/3', 'rejected', 30, 40);",
        )
        .unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let a = store.adapters().unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(a[2].parent_id, Some(2));
    assert!(a.iter().all(|x| x.kind == AdapterKind::Lora));
    // The promotion order is taken from the old updated_at order: v1 (50)
    // was promoted after v2 (30), so v1 stays the served version it was.
    assert_eq!((a[1].promoted_seq, a[0].promoted_seq), (Some(1), Some(2)));
    assert_eq!(store.served_adapter().unwrap().unwrap().id, 1);
    assert_eq!(store.example(1).unwrap().unwrap().stream_id, Some(1));
    let fk: Option<String> = store
        .conn
        .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
        .optional()
        .unwrap();
    assert_eq!(fk, None);
    // The widened states work.
    store.set_stream_state(2, StreamState::NotLearned).unwrap();
}

#[test]
fn refuses_a_newer_database_without_touching_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE t (x); PRAGMA user_version = 99;")
            .unwrap();
    }
    let err = Store::open(&path)
        .err()
        .expect("a newer schema must be refused");
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 99, .. }),
        "{msg}"
    );
    assert!(msg.contains("99") && msg.contains("future.db"), "{msg}");
    let c = Connection::open(&path).unwrap();
    let v: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!((v, mode.as_str()), (99, "delete"));
}

#[test]
fn raw_items_dedup_by_content_across_sources_and_spacing() {
    let (_d, store) = open();
    store.ensure_source("spool", SourceKind::Spool).unwrap();
    let a = qa(&store, "What is Rust?", "A systems  language.");
    let b = qa(&store, "  What is Rust?\n", "A systems language.");
    let c = qa(&store, "What is Rust?", "Something else.");
    assert!(a.is_new() && !b.is_new() && c.is_new());
    assert_eq!(a.id(), b.id());
    let item = store.raw_item(a.id()).unwrap().unwrap();
    assert_eq!(item.meta["upvotes"], 3);
    assert_eq!(item.state, RawState::New);
}

#[test]
fn raw_item_needs_a_registered_source() {
    let (_d, store) = open();
    let err = store
        .insert_raw_item(&NewRawItem {
            source: "nobody",
            external_id: None,
            url: None,
            question: "q",
            answer: None,
            meta: json!({}),
        })
        .unwrap_err();
    assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
}

#[test]
fn raw_item_states_follow_the_state_machine() {
    let (_d, store) = open();
    store.ensure_source("spool", SourceKind::Spool).unwrap();
    let id = qa(&store, "q1", "a1").id();
    let id2 = qa(&store, "q2", "a2").id();
    store
        .set_raw_item_state(id, RawState::Dropped, Some("no_answer"))
        .unwrap();
    store
        .set_raw_item_state(id2, RawState::Processed, None)
        .unwrap();
    let err = store
        .set_raw_item_state(id, RawState::Processed, None)
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidTransition { .. }), "{err}");
    assert_eq!(
        store.raw_item(id).unwrap().unwrap().drop_reason.as_deref(),
        Some("no_answer")
    );
    assert_eq!(
        store.raw_items_in_state(RawState::New, 10).unwrap().len(),
        0
    );
    let counts = store.raw_item_counts().unwrap();
    assert!(counts.contains(&(RawState::Dropped, Some("no_answer".into()), 1)));
    assert!(matches!(
        store.set_raw_item_state(999, RawState::Dropped, None),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn source_failures_degrade_and_success_recovers() {
    let (_d, store) = open();
    store.ensure_source("hf", SourceKind::HfDatasets).unwrap();
    store.set_source_cursor("hf", "300").unwrap();
    for i in 1..=3 {
        let row = store.record_source_failure("hf", "HTTP 503", 3, 0).unwrap();
        assert_eq!(row.error_count, i);
        assert_eq!(row.degraded, i >= 3);
    }
    store.record_source_success("hf", 40).unwrap();
    let row = store.source("hf").unwrap().unwrap();
    assert_eq!(
        (row.error_count, row.degraded, row.items_total),
        (0, false, 40)
    );
    assert_eq!(row.cursor.as_deref(), Some("300"));
    assert!(row.last_error.is_none());
    // Re-registering keeps the cursor.
    store.ensure_source("hf", SourceKind::HfDatasets).unwrap();
    assert_eq!(
        store.source("hf").unwrap().unwrap().cursor.as_deref(),
        Some("300")
    );
    assert!(matches!(
        store.set_source_cursor("missing", "1"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn examples_dedup_then_seal_into_a_stream_atomically() {
    let (dir, store) = open();
    let ids: Vec<i64> = (0..5)
        .map(|i| example(&store, &format!("q{i}"), "a"))
        .collect();
    assert_eq!(
        example(&store, "q0", "a"),
        ids[0],
        "duplicate example must return the first id"
    );
    for &id in &ids[..4] {
        store
            .mark_example_ready(id, Some(("extractive", "short")))
            .unwrap();
    }
    assert_eq!(store.count_examples(ExampleState::Ready).unwrap(), 4);
    let row = store.example(ids[0]).unwrap().unwrap();
    assert_eq!(row.summary_backend.as_deref(), Some("extractive"));

    // ids[4] is not ready: sealing must fail and change nothing.
    let path = dir.path().join("streams/1");
    let err = store
        .seal_stream("s1", &ids[..3], &[ids[4]], &path)
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidTransition { .. }), "{err}");
    assert!(store.streams().unwrap().is_empty());
    assert_eq!(store.count_examples(ExampleState::Ready).unwrap(), 4);

    let sid = store
        .seal_stream("s1", &ids[..3], &[ids[3]], &path)
        .unwrap();
    let s = store.stream(sid).unwrap().unwrap();
    assert_eq!((s.n_train, s.n_eval, s.state), (3, 1, StreamState::Sealed));
    assert_eq!(
        store.stream_example_ids(sid, Split::Train).unwrap(),
        ids[..3].to_vec()
    );
    assert_eq!(
        store.stream_example_ids(sid, Split::Eval).unwrap(),
        vec![ids[3]]
    );
    assert_eq!(store.count_examples(ExampleState::Sealed).unwrap(), 4);

    store.set_stream_state(sid, StreamState::Training).unwrap();
    store.set_stream_state(sid, StreamState::Trained).unwrap();
    store.set_stream_state(sid, StreamState::Failed).unwrap();
    assert!(store.set_stream_state(sid, StreamState::Trained).is_err());
}

#[test]
fn adapters_promote_roll_back_and_record_who() {
    let (dir, store) = open();
    let e = example(&store, "q", "a");
    store.mark_example_ready(e, None).unwrap();
    let sid = store.seal_stream("s", &[e], &[], dir.path()).unwrap();
    let mk = |parent| {
        store
            .insert_adapter(&NewAdapter {
                parent_id: parent,
                stream_id: sid,
                attempt: 1,
                kind: AdapterKind::Lora,
                path: Path::new("/x"),
                hyperparams: json!({"lr": 2e-4, "r": 8}),
            })
            .unwrap()
    };
    let set = |v, to, by| store.set_adapter_state(v, to, None, by, "test");
    let v1 = mk(None);
    assert!(
        set(v1, AdapterState::Promoted, Actor::Daemon).is_err(),
        "training cannot be promoted"
    );
    set(v1, AdapterState::Candidate, Actor::Daemon).unwrap();
    store
        .set_adapter_state(
            v1,
            AdapterState::Promoted,
            Some(&json!({"reason": "improved"})),
            Actor::Daemon,
            "policy",
        )
        .unwrap();
    assert_eq!(store.served_adapter().unwrap().unwrap().id, v1);

    let v2 = mk(Some(v1));
    store
        .set_adapter_train_log(v2, &json!({"loss": [2.0, 1.5]}))
        .unwrap();
    set(v2, AdapterState::Candidate, Actor::Daemon).unwrap();
    set(v2, AdapterState::Promoted, Actor::Daemon).unwrap();
    assert_eq!(store.served_adapter().unwrap().unwrap().id, v2);
    // The promotion order decides, not the clock: v1's row is touched later
    // (a train log) but v2 stays served.
    store
        .set_adapter_train_log(v1, &json!({"loss": []}))
        .unwrap();
    assert_eq!(store.served_adapter().unwrap().unwrap().id, v2);

    let (from, to) = store.rollback(Actor::Cli, "bad answers").unwrap();
    assert_eq!((from, to), (v2, Some(v1)));
    let served = store.served_adapter().unwrap().unwrap();
    assert_eq!(served.decision.unwrap()["reason"], "improved");
    // Promoting v2 again serves it; promoting v1 (promoted, not served) does too.
    set(v2, AdapterState::Promoted, Actor::Cli).unwrap();
    assert_eq!(store.served_adapter().unwrap().unwrap().id, v2);
    set(v1, AdapterState::Promoted, Actor::Cli).unwrap();
    assert_eq!(store.served_adapter().unwrap().unwrap().id, v1);
    store.rollback(Actor::Cli, "x").unwrap();
    store.rollback(Actor::Cli, "x").unwrap();
    assert!(store.served_adapter().unwrap().is_none(), "the base serves");
    assert!(
        store.rollback(Actor::Cli, "x").is_err(),
        "nothing left to roll back"
    );

    let events = store.adapter_events(Some(v2)).unwrap();
    let trail: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.to_state.as_str(), e.actor.as_str()))
        .collect();
    assert_eq!(
        trail,
        [
            ("candidate", "daemon"),
            ("promoted", "daemon"),
            ("rolled_back", "cli"),
            ("promoted", "cli"),
            ("rolled_back", "cli")
        ]
    );
    assert_eq!(events[2].reason, "bad answers");
    let row = store.adapter(v2).unwrap().unwrap();
    assert_eq!(row.parent_id, Some(v1));
    assert_eq!(row.train_log.unwrap()["loss"][1], 1.5);
}

#[test]
fn a_decision_moves_candidate_and_stream_together() {
    let (dir, store) = open();
    let e = example(&store, "q", "a");
    store.mark_example_ready(e, None).unwrap();
    let sid = store.seal_stream("s", &[e], &[], dir.path()).unwrap();
    store.set_stream_state(sid, StreamState::Training).unwrap();
    store.set_stream_state(sid, StreamState::Trained).unwrap();
    let v = store
        .insert_adapter(&NewAdapter {
            parent_id: None,
            stream_id: sid,
            attempt: 1,
            kind: AdapterKind::Lora,
            path: Path::new("/x"),
            hyperparams: json!({}),
        })
        .unwrap();
    store
        .set_adapter_state(v, AdapterState::Candidate, None, Actor::Daemon, "")
        .unwrap();
    // An impossible stream move rolls the adapter's back too.
    let bad = store.settle_candidate(
        v,
        AdapterState::Rejected,
        sid,
        Some(StreamState::Trained),
        &json!({}),
        Actor::Daemon,
        "",
    );
    assert!(bad.is_err());
    assert_eq!(
        store.adapter(v).unwrap().unwrap().state,
        AdapterState::Candidate
    );
    store
        .settle_candidate(
            v,
            AdapterState::Rejected,
            sid,
            Some(StreamState::Sealed),
            &json!({"action": "retrain"}),
            Actor::Daemon,
            "retrain",
        )
        .unwrap();
    assert_eq!(
        store.adapter(v).unwrap().unwrap().state,
        AdapterState::Rejected
    );
    assert_eq!(
        store.stream(sid).unwrap().unwrap().state,
        StreamState::Sealed
    );
}

#[test]
fn evals_upsert_one_cell_per_pair() {
    let (_d, store) = open();
    let cell = |ppl: f64| EvalRow {
        adapter_id: 0,
        stream_id: 1,
        perplexity: ppl,
        nll_sum: ppl.ln() * 10.0,
        tokens: 10,
        evaluated_at: 0,
        per_example: Vec::new(),
    };
    store.upsert_eval(&cell(f64::NAN)).unwrap();
    let nan = store.evals().unwrap();
    assert!(
        nan[0].perplexity.is_infinite() && nan[0].perplexity > 0.0,
        "a NaN is kept as +inf, never refused: {:?}",
        nan[0]
    );
    store.upsert_eval(&cell(12.0)).unwrap();
    store.upsert_eval(&cell(9.5)).unwrap();
    let all = store.evals().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].perplexity, 9.5);
}

#[test]
fn recall_is_scoped_to_its_owner_and_queries_are_inert() {
    let (_d, mut store) = open();
    let ann = Owner::new("team", Some("ann"));
    let bob = Owner::new("team", Some("bob"));
    let other = Owner::new("other", Some("ann"));
    store.open_conversation("c1", &ann).unwrap();
    store
        .add_message("c1", Role::User, "How do I learn Rust borrowing?")
        .unwrap();
    store
        .add_message("c1", Role::Assistant, "Read the book chapter on ownership.")
        .unwrap();
    store.open_conversation("c2", &bob).unwrap();
    store
        .add_message(
            "c2",
            Role::User,
            "Best pizza in Naples? Ownership of pizza.",
        )
        .unwrap();
    store.open_conversation("c3", &other).unwrap();
    store
        .add_message("c3", Role::User, "ownership secrets")
        .unwrap();
    let recall = |s: &mut Store, owner: &Owner, text: &str| {
        s.recall(&RecallQuery {
            owner,
            conversation: None,
            text,
            max_terms: 4,
            limit: 5,
            budget: std::time::Duration::from_secs(5),
        })
    };
    let hits = recall(&mut store, &ann, "OWNERSHIP").unwrap();
    assert_eq!(hits.len(), 1, "{hits:?}");
    assert_eq!(hits[0].conversation_id, "c1");
    // FTS5 syntax in user text must not error or widen the match.
    for q in ["NEAR(\"pizza\" AND", "\"unterminated", "* OR -", ""] {
        let r = recall(&mut store, &bob, q);
        assert!(r.is_ok(), "{q}: {r:?}");
    }
    assert_eq!(recall(&mut store, &bob, "pizza AND").unwrap().len(), 1);
    assert_eq!(store.messages("c1").unwrap().len(), 2);
    assert_eq!(store.owned_conversation("c1", "team").unwrap(), ann);
    assert!(matches!(
        store.owned_conversation("c1", "other"),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.add_message("nope", Role::User, "hi"),
        Err(StoreError::NotFound { .. })
    ));
    let gone = store.forget("team", Some(Some("ann"))).unwrap();
    assert_eq!((gone.conversations, gone.messages), (1, 2));
    assert!(recall(&mut store, &ann, "ownership").unwrap().is_empty());
    assert_eq!(recall(&mut store, &bob, "ownership").unwrap().len(), 1);
    assert_eq!(store.forget("team", None).unwrap().conversations, 1);
    assert_eq!(recall(&mut store, &other, "ownership").unwrap().len(), 1);
}

#[test]
fn content_hash_ignores_spacing_but_not_text_or_boundaries() {
    assert_eq!(
        content_hash(&["a  b", "c"]),
        content_hash(&[" a b\n", "c "])
    );
    assert_ne!(content_hash(&["a b", "c"]), content_hash(&["a", "b c"]));
    assert_ne!(content_hash(&["a", "b"]), content_hash(&["a", "c"]));
}

/// Before: every commit was `synchronous = NORMAL`, so a power loss could keep
/// a spool file's move to done/ and lose the rows it depended on.
#[test]
fn a_durable_commit_is_synced_then_normal_again() {
    let (_dir, store) = open();
    let sync = |s: &Store| -> i64 {
        s.conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(sync(&store), 1, "NORMAL");
    let inside = store.durably(|| Ok::<_, StoreError>(sync(&store))).unwrap();
    assert_eq!(inside, 2, "FULL inside");
    assert_eq!(sync(&store), 1);
    store.checkpoint().unwrap();
}

#[test]
fn forgetting_takes_derived_examples_and_lists_learned_ones() {
    let (_d, store) = open();
    let ann = Owner::new("team", Some("ann"));
    store.open_conversation("old", &ann).unwrap();
    store.add_message("old", Role::User, "q").unwrap();
    store.open_conversation("new", &ann).unwrap();
    store
        .add_message("new", Role::User, "What is LoRA?")
        .unwrap();
    store
        .add_message("new", Role::Assistant, "Low-rank adapters.")
        .unwrap();
    assert!(
        store
            .learn_exchange("new", &ann, "What is LoRA?", "Low-rank adapters.")
            .unwrap()
            .is_new()
    );
    store
        .conn
        .execute(
            "UPDATE conversations SET updated_at = 0 WHERE id = 'old'",
            [],
        )
        .unwrap();
    let gone = store.forget_conversations_before(1).unwrap();
    assert_eq!((gone.conversations, gone.messages), (1, 1), "retention");
    assert!(store.conversation_owner("new").unwrap().is_some());
    let gone = store.forget("team", Some(Some("ann"))).unwrap();
    assert_eq!(
        (gone.conversations, gone.messages, gone.raw_items),
        (1, 2, 1)
    );
    assert!(gone.learned.is_empty());
    assert!(store.conversation_owner("new").unwrap().is_none());
}
