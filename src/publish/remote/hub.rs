//! An `hf_hub` target: a Hugging Face Hub model repository (created private
//! if missing) that holds every published version as a commit of its PEFT
//! files and model card, tagged `vN`, with `main` following the served
//! version (a rollback commits the rolled-back files again). `lorastream.json`
//! in each commit names the version, so a run knows what `main` holds.
//!
//! The Hub's HTTP API as `huggingface_hub` uses it: `GET /api/models/{repo}/refs`,
//! `POST /api/repos/create`, `POST /api/models/{repo}/preupload/main` (which
//! files go through LFS), the LFS batch API (`{repo}.git/info/lfs/objects/batch`,
//! then the upload URL it gives), `POST /api/models/{repo}/commit/main`
//! (NDJSON), and `POST /api/models/{repo}/tag/{commit}`.

use std::collections::BTreeSet;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{authed, send, shown};
use crate::publish::{RemoteError, published_name};

/// How to reach the repository.
pub struct Hub<'a> {
    pub client: &'a reqwest::Client,
    pub endpoint: &'a str,
    pub repo: &'a str,
    /// Never logged, never in an error.
    pub token: &'a str,
    pub private: bool,
}

/// One file of a commit.
pub type File = (&'static str, Vec<u8>);

/// What the repository holds: the versions tagged, and the one `main` holds.
#[derive(Debug, Default, PartialEq)]
pub struct Holds {
    pub tagged: BTreeSet<i64>,
    pub main: Option<i64>,
}

impl Hub<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.trim_end_matches('/'))
    }

    async fn send(
        &self,
        what: &'static str,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<String, RemoteError> {
        send(authed(req, Some(self.token)), what, url).await
    }

    fn answer(&self, what: &'static str, url: &str, problem: impl Into<String>) -> RemoteError {
        RemoteError::Answer {
            what,
            url: shown(url),
            problem: problem.into(),
        }
    }

    /// The tags and `main`'s version, creating the repository if missing.
    pub async fn holds(&self) -> Result<Holds, RemoteError> {
        let url = self.url(&format!("/api/models/{}/refs", self.repo));
        let refs = match self
            .send("reading the refs of", &url, self.client.get(&url))
            .await
        {
            Err(RemoteError::Status { status: 404, .. }) => {
                self.create().await?;
                return Ok(Holds::default());
            }
            r => r?,
        };
        let v: Value = serde_json::from_str(&refs)
            .map_err(|e| self.answer("reading the refs of", &url, format!("not JSON ({e})")))?;
        let tagged = v["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["name"].as_str()?.strip_prefix('v')?.parse().ok())
            .collect();
        Ok(Holds {
            tagged,
            main: self.main_version().await?,
        })
    }

    async fn create(&self) -> Result<(), RemoteError> {
        let url = self.url("/api/repos/create");
        let (owner, name) = self.repo.split_once('/').unwrap_or(("", self.repo));
        let body =
            json!({"name": name, "organization": owner, "private": self.private, "type": "model"});
        match self
            .send("creating", &url, self.client.post(&url).json(&body))
            .await
        {
            Err(RemoteError::Status { status: 409, .. }) | Ok(_) => {
                tracing::info!(repo = %self.repo, private = self.private, "Hub repository created");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The version `main` holds (its `lorastream.json`), if any.
    async fn main_version(&self) -> Result<Option<i64>, RemoteError> {
        let url = self.url(&format!("/{}/resolve/main/lorastream.json", self.repo));
        match self
            .send("reading lorastream.json of", &url, self.client.get(&url))
            .await
        {
            Err(RemoteError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
            Ok(text) => Ok(serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["version"].as_i64())),
        }
    }

    /// Commits `files` (plus `lorastream.json`) of version `id` to `main`;
    /// tags the commit `vN` when `tag`. The commit's id.
    pub async fn commit(
        &self,
        id: i64,
        mut files: Vec<File>,
        summary: &str,
        tag: bool,
    ) -> Result<String, RemoteError> {
        let marker = json!({"version": id, "name": published_name(id)});
        files.push((
            "lorastream.json",
            serde_json::to_vec_pretty(&marker).unwrap_or_default(),
        ));
        let modes = self.preupload(&files).await?;
        let mut lines =
            vec![json!({"key": "header", "value": {"summary": summary, "description": ""}})];
        for ((path, bytes), lfs) in files.iter().zip(modes) {
            if lfs {
                let oid = hex::encode(Sha256::digest(bytes));
                self.upload_lfs(&oid, bytes).await?;
                lines.push(json!({"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid, "size": bytes.len()}}));
            } else {
                let content = base64::engine::general_purpose::STANDARD.encode(bytes);
                lines.push(json!({"key": "file", "value": {"content": content, "path": path, "encoding": "base64"}}));
            }
        }
        let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let url = self.url(&format!("/api/models/{}/commit/main", self.repo));
        let req = self
            .client
            .post(&url)
            .header("content-type", "application/x-ndjson")
            .body(body);
        let text = self.send("committing to", &url, req).await?;
        let commit = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["commitOid"].as_str().map(String::from))
            .ok_or_else(|| self.answer("committing to", &url, "no commitOid"))?;
        if tag {
            let url = self.url(&format!("/api/models/{}/tag/{commit}", self.repo));
            let body = json!({"tag": format!("v{id}"), "message": summary});
            match self
                .send("tagging", &url, self.client.post(&url).json(&body))
                .await
            {
                Err(RemoteError::Status { status: 409, .. }) | Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(commit)
    }

    /// Which files go through LFS (the Hub decides, by size and content).
    async fn preupload(&self, files: &[File]) -> Result<Vec<bool>, RemoteError> {
        let url = self.url(&format!("/api/models/{}/preupload/main", self.repo));
        let list: Vec<Value> = files
            .iter()
            .map(|(path, b)| {
                let sample =
                    base64::engine::general_purpose::STANDARD.encode(&b[..b.len().min(512)]);
                json!({"path": path, "sample": sample, "size": b.len()})
            })
            .collect();
        let text = self
            .send(
                "asking how to upload to",
                &url,
                self.client.post(&url).json(&json!({"files": list})),
            )
            .await?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| self.answer("asking how to upload to", &url, format!("not JSON ({e})")))?;
        let modes = v["files"].as_array().cloned().unwrap_or_default();
        Ok(files
            .iter()
            .map(|(path, _)| {
                modes
                    .iter()
                    .find(|m| m["path"] == *path)
                    .is_some_and(|m| m["uploadMode"] == "lfs")
            })
            .collect())
    }

    /// Uploads `bytes` through the LFS batch API (nothing when the Hub has them).
    async fn upload_lfs(&self, oid: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        let what = "uploading to";
        let url = self.url(&format!("/{}.git/info/lfs/objects/batch", self.repo));
        let body = json!({"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
            "objects": [{"oid": oid, "size": bytes.len()}]});
        let req = self
            .client
            .post(&url)
            .header("accept", "application/vnd.git-lfs+json")
            .header("content-type", "application/vnd.git-lfs+json")
            .body(body.to_string());
        let text = self.send(what, &url, req).await?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| self.answer(what, &url, format!("not JSON ({e})")))?;
        let obj = &v["objects"][0];
        if let Some(err) = obj.get("error") {
            return Err(self.answer(what, &url, format!("LFS: {err}")));
        }
        let Some(upload) = obj["actions"].get("upload") else {
            return Ok(());
        };
        let href = upload["href"]
            .as_str()
            .ok_or_else(|| self.answer(what, &url, "no upload href"))?;
        let mut put = self.client.put(href).body(bytes.to_vec());
        for (k, v) in upload["header"].as_object().into_iter().flatten() {
            put = put.header(k.as_str(), v.as_str().unwrap_or_default());
        }
        // The upload URL is pre-signed: it carries its own credentials.
        send(put, what, href).await?;
        if let Some(verify) = obj["actions"].get("verify") {
            let vurl = verify["href"].as_str().unwrap_or_default();
            let mut req = self
                .client
                .post(vurl)
                .json(&json!({"oid": oid, "size": bytes.len()}));
            for (k, v) in verify["header"].as_object().into_iter().flatten() {
                req = req.header(k.as_str(), v.as_str().unwrap_or_default());
            }
            // The token goes only to the Hub itself, never to a storage host.
            if crate::util::http::same_origin(self.endpoint, vurl) {
                req = authed(req, Some(self.token));
            }
            send(req, what, vurl).await?;
        }
        Ok(())
    }
}
