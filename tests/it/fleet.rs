//! Publishing to remote targets and fronting a fleet: a `vllm` target
//! against loopback servers that follow vLLM's runtime-LoRA API (loads in
//! order, `keep`, a rollback, a server down during a promotion, a 500 from
//! one server), an `hf_hub` target against a loopback Hub (repository
//! created private, a commit per version tagged vN, LFS, `main` following
//! the served version, the token never printed), and the daemon in gateway
//! mode (its Publisher converging a failing fleet in the background, memory
//! recalled into the forwarded prompt, streams passed through, fleet errors
//! as clean 502/503 error objects).

use crate::chat::{KEY, ask, rt};
use crate::common::fake_hub::FakeHub;
use crate::common::fake_vllm::{BASE, FakeVllm};
use crate::common::{self, daemon::Daemon};
use crate::serving::with_versions;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use lorastream_store::{Actor, AdapterKind, AdapterState, NewAdapter, Store};
use serde_json::{Value, json};

const FLEET_KEY: &str = "fleet-key-5678";
const HUB_TOKEN: &str = "hf_secret_token_1234";

/// `lorastream --config CONFIG ARGS…` with the fleet key and Hub token set.
fn cli(config: &Path, args: &[&str]) -> Output {
    common::lorastream()
        .env("LS_FLEET_KEY", FLEET_KEY)
        .env("LS_HUB_TOKEN", HUB_TOKEN)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An address nothing listens on (a server that is down).
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// with_versions (v1, v2 promoted; v2 served) plus `targets`.
fn setup(dir: &Path, extra: &str, targets: &str) -> PathBuf {
    let (config, _) = with_versions(dir, "f32", extra);
    let text = std::fs::read_to_string(&config).unwrap();
    let shared = format!(
        "\n[[publish]]\nname = \"shared\"\nkind = \"dir\"\ndir = \"{}\"\nbase_model = \"{BASE}\"\n",
        dir.join("published").display()
    );
    std::fs::write(&config, text + &shared + targets).unwrap();
    config
}

fn vllm_target(urls: &[String]) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "\n[[publish]]\nname = \"fleet\"\nkind = \"vllm\"\nurls = [{}]\nkey_env = \"LS_FLEET_KEY\"\nkeep = 2\n",
        urls.join(", ")
    )
}

/// A third version (a copy of v1's adapter), decided (rejected), which the
/// CLI may promote.
fn add_candidate(config: &Path) -> i64 {
    let cfg = lorastream::config::Config::load(config).unwrap();
    let store = Store::open(&cfg.store_path()).unwrap();
    let v1 = store.adapter(1).unwrap().unwrap();
    let id = store
        .insert_adapter(&NewAdapter {
            parent_id: Some(2),
            stream_id: v1.stream_id,
            attempt: 3,
            kind: AdapterKind::Lora,
            path: &v1.path,
            hyperparams: json!({}),
        })
        .unwrap();
    for to in [AdapterState::Candidate, AdapterState::Rejected] {
        store
            .set_adapter_state(id, to, None, Actor::Cli, "test")
            .unwrap();
    }
    id
}

#[test]
fn a_vllm_fleet_loads_versions_in_order_and_converges_after_failures() {
    let dir = tempfile::tempdir().unwrap();
    let a = FakeVllm::start(Some(FLEET_KEY));
    let down = dead_addr();
    let config = setup(
        dir.path(),
        "",
        &vllm_target(&[a.server.base.clone(), format!("http://{down}")]),
    );

    // One server down: the other still gets v1 then v2; the run says which failed.
    let out = cli(&config, &["adapters", "publish"]);
    assert!(!out.status.success());
    let said = stdout(&out);
    assert!(
        said.contains("fleet: FAILED: 1 of 2 servers failed") && said.contains(&down),
        "{said}"
    );
    assert!(said.contains("shared: published v2, v1;"), "{said}");
    assert_eq!(a.calls(), ["load lorastream-v1", "load lorastream-v2"]);

    // Promote v3: loaded, and v1 unloaded (keep = 2).
    let v3 = add_candidate(&config);
    common::assert_ok(&cli(&config, &["adapters", "promote", &v3.to_string()]));
    assert_eq!(
        a.calls()[2..],
        ["load lorastream-v3", "unload lorastream-v1"]
    );
    assert_eq!(a.loaded(), ["lorastream-v2", "lorastream-v3"]);

    // The server that was down comes back: it converges, never loading v1.
    let c = FakeVllm::start_on(&down, Some(FLEET_KEY));
    let out = cli(&config, &["adapters", "publish"]);
    common::assert_ok(&out);
    assert_eq!(c.calls(), ["load lorastream-v2", "load lorastream-v3"]);

    // A 500 from one server does not stop the other: a rollback reaches it.
    a.set_failing(true);
    common::assert_ok(&cli(&config, &["adapters", "rollback"]));
    assert_eq!(
        c.loaded(),
        ["lorastream-v1", "lorastream-v2"],
        "{:?}",
        c.calls()
    );
    let out = cli(&config, &["adapters", "publish"]);
    assert!(!out.status.success());
    let said = stdout(&out);
    assert!(
        said.contains("HTTP 500") && said.contains(&a.server.base),
        "{said}"
    );
    let status = stdout(&cli(&config, &["status"]));
    assert!(
        status.contains("fleet") && status.contains("DEGRADED"),
        "{status}"
    );

    // Back: the rolled-back fleet serves v2, with v1 kept beside it.
    a.set_failing(false);
    common::assert_ok(&cli(&config, &["adapters", "publish", "--to", "fleet"]));
    assert_eq!(a.loaded(), ["lorastream-v1", "lorastream-v2"]);
    let status = stdout(&cli(&config, &["status"]));
    assert!(status.contains("holds [v2, v1], current v2"), "{status}");
    assert!(!status.contains("DEGRADED"), "{status}");
    println!(
        "BENCH vLLM target calls on the first server: {:?}",
        a.calls()
    );
}

#[test]
fn a_hub_target_commits_and_tags_each_version_and_main_follows_the_served_one() {
    let dir = tempfile::tempdir().unwrap();
    let hub = FakeHub::start("acme/quora-lora", HUB_TOKEN);
    let target = format!(
        "\n[[publish]]\nname = \"hub\"\nkind = \"hf_hub\"\nrepo = \"acme/quora-lora\"\ntoken_env = \"LS_HUB_TOKEN\"\nendpoint = \"{}\"\n",
        hub.server.base
    );
    let config = setup(dir.path(), "", &target);
    let out = cli(&config, &["adapters", "publish", "--to", "hub"]);
    common::assert_ok(&out);
    {
        let repo = hub.repo.lock().unwrap();
        assert_eq!(repo.created.as_ref().unwrap()["private"], true);
        let summaries: Vec<&str> = repo.commits.iter().map(|c| c.1.as_str()).collect();
        assert_eq!(
            summaries,
            ["Publish lorastream-v1", "Publish lorastream-v2"]
        );
        assert_eq!(repo.tags["v1"], repo.commits[0].0);
        assert_eq!(repo.tags["v2"], repo.commits[1].0);
        let main = repo.main();
        let marker: Value = serde_json::from_slice(&main["lorastream.json"]).unwrap();
        assert_eq!(marker["version"], 2);
        let cfg: Value = serde_json::from_slice(&main["adapter_config.json"]).unwrap();
        assert_eq!(cfg["base_model_name_or_path"], BASE);
        assert!(String::from_utf8_lossy(&main["README.md"]).contains("lineage"));
        let store = Store::open(&dir.path().join("state/lorastream.db")).unwrap();
        let v2 = store.adapter(2).unwrap().unwrap();
        let trained = std::fs::read(v2.path.join("adapter_model.safetensors")).unwrap();
        assert_eq!(
            main["adapter_model.safetensors"], trained,
            "the weights, through LFS"
        );
        assert_eq!(repo.unauthorized, 0);
    }
    // Nothing new: nothing committed. A rollback: main holds v1 again.
    common::assert_ok(&cli(&config, &["adapters", "publish", "--to", "hub"]));
    assert_eq!(hub.repo.lock().unwrap().commits.len(), 2);
    let rb = cli(&config, &["adapters", "rollback"]);
    common::assert_ok(&rb);
    {
        let repo = hub.repo.lock().unwrap();
        assert_eq!(repo.commits.len(), 3);
        assert_eq!(repo.commits[2].1, "Serve lorastream-v1 again");
        let marker: Value = serde_json::from_slice(&repo.main()["lorastream.json"]).unwrap();
        assert_eq!(marker["version"], 1);
    }
    for o in [&out, &rb] {
        let all = stdout(o) + &String::from_utf8_lossy(&o.stderr);
        assert!(!all.contains(HUB_TOKEN), "the token was printed");
    }
    // The Hub unreachable: degraded, the error named, the token still unsaid.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(&hub.server.base, &format!("http://{}", dead_addr())),
    )
    .unwrap();
    let out = cli(&config, &["adapters", "publish", "--to", "hub"]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("hub: FAILED: reading the refs of"),
        "{}",
        stdout(&out)
    );
    let status = stdout(&cli(&config, &["status"]));
    assert!(
        status.contains("DEGRADED") && !status.contains(HUB_TOKEN),
        "{status}"
    );
}

/// A daemon on `config` with the chat and fleet keys: it and its URL.
fn start(config: &Path) -> (Daemon, String) {
    let env = [("LS_CHAT_KEY", KEY), ("LS_FLEET_KEY", FLEET_KEY)];
    let d = Daemon::start_with_env(config, &env);
    let listen = d.wait_for("chat server listening")["listen"].clone();
    (d, format!("http://{}", listen.as_str().unwrap()))
}

/// Polls `f` every 200 ms for up to `secs`.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < until, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metrics(url: &str) -> String {
    rt().block_on(async {
        let r = lorastream::util::http::client_builder()
            .build()
            .unwrap()
            .get(format!("{url}/metrics"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        r.text().await.unwrap()
    })
}

#[test]
fn the_gateway_fronts_a_fleet_the_publisher_keeps_in_line() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = FakeVllm::start(Some(FLEET_KEY));
    fleet.set_failing(true);
    let server = format!(
        "backend = \"vllm\"\nbackend_url = \"{}\"\nbackend_key_env = \"LS_FLEET_KEY\"\n",
        fleet.server.base
    );
    let config = setup(
        dir.path(),
        &server,
        &vllm_target(std::slice::from_ref(&fleet.server.base)),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("memory = false", "memory = true")).unwrap();
    let (d, url) = start(&config);

    // The fleet fails: degraded in /metrics; it recovers: the Publisher converges.
    eventually(20, "degraded", || {
        metrics(&url).contains("lorastream_publish_target_up{kind=\"vllm\",target=\"fleet\"} 0")
    });
    fleet.set_failing(false);
    let started = Instant::now();
    eventually(30, "converged", || {
        fleet.loaded() == ["lorastream-v1", "lorastream-v2"]
    });
    println!(
        "BENCH publisher converged {:.1} s after the fleet recovered",
        started.elapsed().as_secs_f64()
    );
    eventually(10, "up", || {
        metrics(&url).contains("lorastream_publish_target_up{kind=\"vllm\",target=\"fleet\"} 1")
    });

    rt().block_on(async {
        // Memory: a fact told in one conversation is in the prompt the fleet gets later.
        let tell = json!({"model": "lorastream", "user": "ann", "max_tokens": 8,
            "messages": [{"role": "user", "content": "Remember this: my cat is called Zorblax."}]});
        let (status, _, c) = ask(&url, tell, &[]).await;
        assert_eq!(status, 200, "{c}");
        assert_eq!(c["choices"][0]["message"]["content"], "echo: Remember this: my");
        assert_eq!(c["model"], "lorastream@v2");
        assert_eq!(c["usage"]["prompt_tokens"], 11, "the fleet's usage: {c}");
        let ask_again = json!({"model": "lorastream", "user": "ann", "stream": true, "max_tokens": 8,
            "messages": [{"role": "user", "content": "What is my cat called?"}]});
        let sse = stream(&url, &ask_again).await;
        assert!(sse.contains("\"content\":\" What\"") && sse.trim_end().ends_with("data: [DONE]"), "{sse}");
        let chats = fleet.chats();
        let last = chats.last().unwrap();
        assert_eq!(last["model"], "lorastream-v2");
        assert!(last["messages"].to_string().contains("Zorblax"), "memory not forwarded: {last}");

        // The fleet fails: 502; a version it lacks: 503; the error objects are clean.
        fleet.set_failing(true);
        let (status, _, e) = ask(&url, crate::chat::hello(json!({})), &[]).await;
        assert_eq!((status, e["error"]["code"].as_str()), (502, Some("fleet_error")), "{e}");
        fleet.set_failing(false);
        fleet.fleet.lock().unwrap().loaded.remove("lorastream-v2");
        let (status, _, e) = ask(&url, crate::chat::hello(json!({})), &[]).await;
        assert_eq!((status, e["error"]["code"].as_str()), (503, Some("version_not_on_fleet")), "{e}");
    });

    // A rollback by the CLI while the daemon runs: the fleet follows, and so do requests.
    common::assert_ok(&cli(&config, &["adapters", "rollback"]));
    eventually(20, "rolled back", || fleet.loaded() == ["lorastream-v1"]);
    rt().block_on(async {
        eventually_async(&url).await;
    });
    assert_eq!(fleet.chats().last().unwrap()["model"], "lorastream-v1");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());

    // A fleet that cannot be reached: 503 fleet_unavailable.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(&fleet.server.base, &format!("http://{}", dead_addr())),
    )
    .unwrap();
    let (d, url) = start(&config);
    rt().block_on(async {
        let (status, h, e) = ask(&url, crate::chat::hello(json!({})), &[]).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (503, Some("fleet_unavailable")),
            "{e}"
        );
        assert!(h.get("retry-after").is_some());
    });
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit().success());
}

/// Asks until the answer comes from v1 (the server sees the rollback within
/// its version watch).
async fn eventually_async(url: &str) {
    for _ in 0..50 {
        let (status, _, c) = ask(url, crate::chat::hello(json!({})), &[]).await;
        if status == 200 && c["model"] == "lorastream@v1" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("requests never went to v1 after the rollback");
}

/// A streamed request's whole body.
async fn stream(url: &str, body: &Value) -> String {
    let r = lorastream::util::http::client_builder()
        .build()
        .unwrap()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.unwrap()
}
