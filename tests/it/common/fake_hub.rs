//! A loopback server that follows the Hugging Face Hub's HTTP API as
//! `huggingface_hub` uses it to push a model: refs (404 for a repository
//! that does not exist), repository creation, `resolve/main/FILE`,
//! preupload (safetensors through LFS), the LFS batch API with an upload
//! URL of its own (the body's sha256 must be the object id), NDJSON commits
//! to `main` (an `lfsFile` must have been uploaded) and tags. Every call but
//! the pre-signed upload must carry the token.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::loopback::{Reply, Req, Server};

#[derive(Debug, Default)]
pub struct Repo {
    pub created: Option<Value>,
    /// (commit id, summary, files) in order.
    pub commits: Vec<(String, String, BTreeMap<String, Vec<u8>>)>,
    pub tags: BTreeMap<String, String>,
    lfs: BTreeMap<String, Vec<u8>>,
    /// Requests without the token.
    pub unauthorized: usize,
}

impl Repo {
    /// The files `main` holds.
    pub fn main(&self) -> BTreeMap<String, Vec<u8>> {
        let mut files = BTreeMap::new();
        for (_, _, f) in &self.commits {
            files.extend(f.clone());
        }
        files
    }
}

pub struct FakeHub {
    pub server: Server,
    pub repo: Arc<Mutex<Repo>>,
}

impl FakeHub {
    pub fn start(name: &str, token: &str) -> FakeHub {
        let repo: Arc<Mutex<Repo>> = Arc::default();
        let r = Arc::clone(&repo);
        let (name, auth) = (name.to_string(), format!("Bearer {token}"));
        let base = Arc::new(Mutex::new(String::new()));
        let b = Arc::clone(&base);
        let server = Server::start(move |req| {
            let mut repo = r.lock().unwrap();
            let upload = req.path.starts_with("/lfs-upload/");
            if !upload && req.headers.get("authorization") != Some(&auth) {
                repo.unauthorized += 1;
                return Reply::json(401, &json!({"error": "Invalid credentials"}));
            }
            handle(&mut repo, &name, req, &b.lock().unwrap())
        });
        *base.lock().unwrap() = server.base.clone();
        FakeHub { server, repo }
    }
}

fn handle(repo: &mut Repo, name: &str, req: &Req, base: &str) -> Reply {
    let api = format!("/api/models/{name}");
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let path = req.path.as_str();
    if path == format!("{api}/refs") {
        if repo.created.is_none() {
            return Reply::json(404, &json!({"error": "Repository not found"}));
        }
        let tags: Vec<Value> = repo
            .tags
            .iter()
            .map(|(t, c)| json!({"name": t, "targetCommit": c}))
            .collect();
        let main = repo.commits.last().map(|c| c.0.clone());
        return Reply::json(
            200,
            &json!({"branches": [{"name": "main", "targetCommit": main}], "tags": tags, "converts": []}),
        );
    }
    if path == "/api/repos/create" {
        if repo.created.is_some() {
            return Reply::json(
                409,
                &json!({"error": "You already created this model repo"}),
            );
        }
        repo.created = Some(body);
        return Reply::json(200, &json!({"url": format!("{base}/{name}")}));
    }
    if let Some(file) = path.strip_prefix(&format!("/{name}/resolve/main/")) {
        return match repo.main().get(file) {
            Some(b) => Reply::Full(200, vec![], b.clone()),
            None => Reply::json(404, &json!({"error": "Entry not found"})),
        };
    }
    if path == format!("{api}/preupload/main") {
        let files: Vec<Value> = body["files"].as_array().into_iter().flatten().map(|f| {
            let lfs = f["path"].as_str().unwrap_or_default().ends_with(".safetensors");
            json!({"path": f["path"], "uploadMode": if lfs { "lfs" } else { "regular" }, "shouldIgnore": false})
        }).collect();
        return Reply::json(200, &json!({"files": files}));
    }
    if path == format!("/{name}.git/info/lfs/objects/batch") {
        let obj = &body["objects"][0];
        let oid = obj["oid"].as_str().unwrap_or_default();
        let actions = json!({"upload": {"href": format!("{base}/lfs-upload/{oid}"), "header": {}},
                             "verify": {"href": format!("{base}/lfs-verify"), "header": {}}});
        return Reply::json(
            200,
            &json!({"objects": [{"oid": oid, "size": obj["size"], "actions": actions}]}),
        );
    }
    if let Some(oid) = path.strip_prefix("/lfs-upload/") {
        if hex::encode(Sha256::digest(&req.body)) != oid {
            return Reply::json(400, &json!({"error": "sha256 mismatch"}));
        }
        repo.lfs.insert(oid.to_string(), req.body.clone());
        return Reply::Full(200, vec![], Vec::new());
    }
    if path == "/lfs-verify" {
        return Reply::json(200, &json!({}));
    }
    if path == format!("{api}/commit/main") {
        return commit(repo, &req.body);
    }
    if let Some(commit) = path.strip_prefix(&format!("{api}/tag/")) {
        let tag = body["tag"].as_str().unwrap_or_default().to_string();
        if repo.tags.contains_key(&tag) {
            return Reply::json(409, &json!({"error": "Tag already exists"}));
        }
        repo.tags.insert(tag, commit.to_string());
        return Reply::json(200, &json!({}));
    }
    Reply::json(404, &json!({"error": format!("no route {path}")}))
}

/// An NDJSON commit: a header line, then `file` (base64) and `lfsFile` lines.
fn commit(repo: &mut Repo, body: &[u8]) -> Reply {
    let mut summary = String::new();
    let mut files = BTreeMap::new();
    for line in String::from_utf8_lossy(body)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        let value = &v["value"];
        let path = value["path"].as_str().unwrap_or_default().to_string();
        match v["key"].as_str() {
            Some("header") => summary = value["summary"].as_str().unwrap_or_default().into(),
            Some("file") => {
                let content = value["content"].as_str().unwrap_or_default();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .unwrap_or_default();
                files.insert(path, bytes);
            }
            Some("lfsFile") => {
                let oid = value["oid"].as_str().unwrap_or_default();
                let Some(bytes) = repo.lfs.get(oid) else {
                    return Reply::json(
                        400,
                        &json!({"error": format!("LFS object {oid} was not uploaded")}),
                    );
                };
                files.insert(path, bytes.clone());
            }
            _ => return Reply::json(400, &json!({"error": format!("bad line {line}")})),
        }
    }
    let id = format!("{:040x}", repo.commits.len() + 1);
    repo.commits.push((id.clone(), summary, files));
    Reply::json(
        200,
        &json!({"commitOid": id, "commitUrl": format!("/commit/{id}")}),
    )
}
