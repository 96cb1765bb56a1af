//! Who is calling: API keys (`[[server.keys]]`, and the single
//! `api_key_file`/`api_key_env` key as the admin identity `default`) mapped
//! to identities with a role and limits. Keys are compared in constant time
//! (their SHA-256 digests, so the length leaks nothing either) and never
//! logged. With no key configured the server listens on loopback only and
//! every caller is the admin identity `default`.

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use sha2::{Digest, Sha256};

use crate::config::{KeyRole, ServerConfig};
use crate::serve::error::ApiError;
use crate::serve::guard::limits::Limiter;
use crate::util::http::{SecretError, read_secret};

pub use crate::config::DEFAULT_IDENTITY;

/// An identity: what memory, conversations and feedback belong to.
#[derive(Debug)]
pub struct Identity {
    pub name: String,
    pub role: KeyRole,
    /// The operator lets this identity's opted-in conversations be learned.
    pub learn: bool,
    pub limits: Limiter,
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        self.role == KeyRole::Admin
    }

    fn is_configured_as(&self, k: &crate::config::KeyConfig) -> bool {
        self.name == k.name
            && self.role == k.role
            && self.learn == k.learn
            && self.limits.settings() == (k.rpm, k.max_concurrent)
    }
}

/// The caller of a request, put in its extensions by the guard.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Identity>);

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .ok_or_else(ApiError::unauthorized),
        )
    }
}

/// A caller with an admin key: the extractor of every admin-only handler
/// (`/api/status`, `/metrics`), so the role is checked by what runs, whatever
/// spelling of the path reached it; 403 for a user key.
#[derive(Debug, Clone)]
pub struct Admin(pub Caller);

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Admin, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let admin = Caller::from_request(req, payload)
            .into_inner()
            .and_then(|c| {
                if c.0.is_admin() {
                    Ok(Admin(c))
                } else {
                    Err(ApiError::new(
                        actix_web::http::StatusCode::FORBIDDEN,
                        "invalid_request_error",
                        "this route needs an admin key",
                    )
                    .with_code("forbidden"))
                }
            });
        std::future::ready(admin)
    }
}

impl Caller {
    /// The identity a request acts within: the caller's own, or (admins only)
    /// the one it names, which must be one `keys` open (400 otherwise: an
    /// empty or unknown name acts on nothing); 403 for a user key naming
    /// another.
    pub fn acting_as(&self, named: Option<String>, keys: &Keys) -> Result<String, ApiError> {
        match named {
            Some(other) if other != self.0.name => {
                if !self.0.is_admin() {
                    Err(ApiError::new(
                        actix_web::http::StatusCode::FORBIDDEN,
                        "invalid_request_error",
                        "only an admin key may act for another identity",
                    )
                    .with_code("forbidden"))
                } else if keys.opens(&other) {
                    Ok(other)
                } else {
                    Err(ApiError::invalid(
                        "identity",
                        "`identity` must name a configured identity ([[server.keys]] name)",
                    ))
                }
            }
            _ => Ok(self.0.name.clone()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("identities {0:?} and {1:?} have the same API key: each key must open one identity")]
    SameKey(String, String),
}

/// The configured keys.
pub struct Keys {
    by_digest: Vec<([u8; 32], Arc<Identity>)>,
    /// No key configured: everyone is this identity.
    open: Option<Arc<Identity>>,
}

impl Keys {
    /// Reads every key (files and environment variables) named by `s`.
    pub fn load(s: &ServerConfig) -> Result<Keys, KeysError> {
        Keys::reload(s, None)
    }

    /// As [`Keys::load`], keeping the identities (and their limits' counts)
    /// of `previous` whose settings did not change. On a reload (`previous`
    /// given), a key that cannot be read drops its identity, loudly, and the
    /// others stay: an unreadable file must not keep a key being revoked.
    pub fn reload(s: &ServerConfig, previous: Option<&Keys>) -> Result<Keys, KeysError> {
        let read = |what: &str, file: Option<&std::path::Path>, env: Option<&str>| match read_secret(
            what, file, env,
        ) {
            Err(e) if previous.is_some() => {
                tracing::error!(error = %e, "API key unreadable at reload: its identity is shut out until it can be read");
                Ok(None)
            }
            other => other,
        };
        let mut by_digest: Vec<([u8; 32], Arc<Identity>)> = Vec::new();
        let single = read(
            "[server] API key",
            s.api_key_file.as_deref(),
            s.api_key_env.as_deref(),
        )?;
        if let Some(key) = single {
            by_digest.push((digest(&key), Arc::new(default_identity())));
        }
        for k in &s.keys {
            let what = format!("[[server.keys]] {:?}", k.name);
            let Some(key) = read(&what, k.key_file.as_deref(), k.key_env.as_deref())? else {
                continue;
            };
            let d = digest(&key);
            if let Some((_, other)) = by_digest.iter().find(|(o, _)| *o == d) {
                return Err(KeysError::SameKey(other.name.clone(), k.name.clone()));
            }
            let kept = previous.and_then(|p| {
                p.by_digest
                    .iter()
                    .find(|(pd, i)| *pd == d && i.is_configured_as(k))
                    .map(|(_, i)| Arc::clone(i))
            });
            let identity = kept.unwrap_or_else(|| {
                Arc::new(Identity {
                    name: k.name.clone(),
                    role: k.role,
                    learn: k.learn,
                    limits: Limiter::new(k.rpm, k.max_concurrent),
                })
            });
            by_digest.push((d, identity));
        }
        // Open to all only when no key is configured, never because every
        // configured key was unreadable.
        let open = (by_digest.is_empty() && !s.has_keys()).then(|| Arc::new(default_identity()));
        Ok(Keys { by_digest, open })
    }

    /// How many identities the keys open.
    pub fn identities(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether one of the keys opens the identity `name`.
    pub fn opens(&self, name: &str) -> bool {
        self.open
            .iter()
            .chain(self.by_digest.iter().map(|(_, i)| i))
            .any(|i| i.name == name)
    }

    /// Whether requests must carry a key.
    pub fn required(&self) -> bool {
        self.open.is_none()
    }

    /// The identity the `Authorization` header's key opens (any scheme
    /// spelling of `Bearer`); 401 without a valid key.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Arc<Identity>, ApiError> {
        if let Some(open) = &self.open {
            return Ok(Arc::clone(open));
        }
        let given = authorization
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .ok_or_else(ApiError::unauthorized)?;
        let d = digest(given);
        // Every entry is compared, so the time does not say which one matched.
        let mut found = None;
        for (known, identity) in &self.by_digest {
            if constant_time_eq(known, &d) {
                found = Some(identity);
            }
        }
        found.cloned().ok_or_else(ApiError::unauthorized)
    }
}

fn default_identity() -> Identity {
    Identity {
        name: DEFAULT_IDENTITY.into(),
        role: KeyRole::Admin,
        learn: true,
        limits: Limiter::new(None, None),
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Equality of two digests in time independent of where they differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyConfig;

    fn key(dir: &std::path::Path, name: &str, secret: &str, role: KeyRole) -> KeyConfig {
        let file = dir.join(name);
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        KeyConfig {
            name: name.into(),
            key_file: Some(file),
            key_env: None,
            role,
            rpm: None,
            max_concurrent: None,
            learn: false,
        }
    }

    /// alice (user) and bob (admin), their keys in files under `dir`.
    fn alice_and_bob(dir: &std::path::Path) -> ServerConfig {
        ServerConfig {
            keys: vec![
                key(dir, "alice", "alice-key", KeyRole::User),
                key(dir, "bob", "bob-key", KeyRole::Admin),
            ],
            ..ServerConfig::default()
        }
    }

    #[test]
    fn a_key_unreadable_at_reload_shuts_its_identity_out_and_only_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = alice_and_bob(dir.path());
        let old = Keys::load(&s).unwrap();
        std::fs::remove_file(dir.path().join("bob")).unwrap();
        assert!(
            Keys::load(&s).is_err(),
            "at start an unreadable key stops the server"
        );
        let new = Keys::reload(&s, Some(&old)).unwrap();
        assert_eq!(
            new.authenticate(Some("Bearer alice-key")).unwrap().name,
            "alice"
        );
        assert!(
            new.authenticate(Some("Bearer bob-key")).is_err(),
            "bob is shut out"
        );
        std::fs::remove_file(dir.path().join("alice")).unwrap();
        let none = Keys::reload(&s, Some(&new)).unwrap();
        assert!(
            none.required(),
            "never open to all because every key was unreadable"
        );
        assert!(none.authenticate(None).is_err());
        assert!(none.authenticate(Some("Bearer alice-key")).is_err());
    }

    #[test]
    fn each_key_opens_its_identity_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let s = alice_and_bob(dir.path());
        let keys = Keys::load(&s).unwrap();
        assert!(keys.required());
        let who = |h: &str| keys.authenticate(Some(h)).map(|i| i.name.clone());
        assert_eq!(who("Bearer alice-key").unwrap(), "alice");
        assert_eq!(who("bearer  bob-key ").unwrap(), "bob");
        assert_eq!(who("BEARER alice-key").unwrap(), "alice");
        for bad in [
            "Bearer alice",
            "alice-key",
            "Basic alice-key",
            "Bearer ",
            "",
        ] {
            assert!(who(bad).is_err(), "{bad:?}");
        }
        assert!(keys.authenticate(None).is_err());
        let open = Keys::load(&ServerConfig::default()).unwrap();
        assert!(!open.required());
        assert_eq!(open.authenticate(None).unwrap().name, DEFAULT_IDENTITY);
    }
}
