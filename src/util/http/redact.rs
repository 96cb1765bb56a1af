//! URLs as the daemon shows them (logs, errors, status, responses): without
//! user name and password, secret query values replaced; and whether two
//! URLs share an origin, so a credential meant for one may go to the other.

use url::Url;

/// Query parameters whose values are replaced in every URL we print
/// (compared without case): API tokens, and the signatures and credentials
/// of pre-signed storage URLs (S3, GCS, Azure).
const SECRET_PARAMS: &[&str] = &[
    "token",
    "api_key",
    "apikey",
    "key",
    "access_token",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "signature",
    "sig",
];

fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// The URL without its user name and password and with secret query values
/// replaced, for logs, errors and status (never the URL a request is sent to).
pub fn redact(url: &Url) -> String {
    let mut shown = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        // Only URLs that cannot have credentials refuse these, and they have none.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
    }
    if url.query_pairs().any(|(k, _)| is_secret_param(&k)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    "REDACTED".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// [`redact`] for a URL held as text; one that does not parse (or has no
/// host) is shown from after its last `@` (whatever came before may be
/// credentials) without its query.
pub fn shown(url: &str) -> String {
    match Url::parse(url) {
        // `u:pw@host` parses as scheme `u`, no host: not a URL we can read.
        Ok(u) if u.host().is_some() => redact(&u),
        _ => {
            let tail = url.rsplit('@').next().unwrap_or(url);
            tail.split('?').next().unwrap_or(tail).to_string()
        }
    }
}

/// Whether `a` and `b` are the same origin (scheme, host and port), so a
/// credential meant for one may go to the other; URLs that do not parse are not.
pub fn same_origin(a: &str, b: &str) -> bool {
    match (Url::parse(a), Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin() && !matches!(a.origin(), url::Origin::Opaque(_)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_tokens() {
        let u = Url::parse("https://api.crawlbase.com/?token=s3cr3t&url=https%3A%2F%2Fx").unwrap();
        let r = redact(&u);
        assert!(!r.contains("s3cr3t"), "{r}");
        assert!(r.contains("token=REDACTED"), "{r}");
        assert!(r.contains("url=https"), "{r}");
    }

    #[test]
    fn redacts_credentials_and_signatures() {
        for (url, secret) in [
            ("http://u:pw-9@fleet.example:8000/v1", "pw-9"),
            ("http://only-user-9@fleet.example/", "only-user-9"),
            (
                "https://s3.example/b/k?X-Amz-Signature=abc123sig&X-Amz-Date=1",
                "abc123sig",
            ),
            ("https://blob.example/c?sv=1&Sig=abc123sig", "abc123sig"),
        ] {
            let r = shown(url);
            assert!(!r.contains(secret), "{url} shown as {r}");
            assert!(r.contains("example"), "{r}");
        }
        assert_eq!(shown("u:pw@host:80:bad url?token=x"), "host:80:bad url");
        assert!(same_origin(
            "https://huggingface.co",
            "https://huggingface.co/api/x"
        ));
        for other in [
            "https://huggingface.co.evil.example/x",
            "http://huggingface.co/x",
            "https://huggingface.co:8443/x",
            "https://huggingface.co@evil.example/x",
        ] {
            assert!(!same_origin("https://huggingface.co", other), "{other}");
        }
    }
}
