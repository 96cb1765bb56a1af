//! Binding the listen address, with TLS when `[server] tls_cert_file` and
//! `tls_key_file` are set (rustls, ring; PEM files: the certificate chain,
//! and a PKCS#8, PKCS#1 or SEC1 private key), for deployments without a
//! reverse proxy.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ServerConfig;

/// The TLS configuration `[server]` asks for, if any.
pub fn config(s: &ServerConfig) -> std::io::Result<Option<rustls::ServerConfig>> {
    match (&s.tls_cert_file, &s.tls_key_file) {
        (Some(cert), Some(key)) => server_config(cert, key).map(Some),
        _ => Ok(None),
    }
}

fn server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<rustls::ServerConfig> {
    let invalid = |what: &str, p: &std::path::Path, e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} {}: {e}", p.display()),
        )
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid("TLS certificate", cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("TLS certificate", cert, &e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid("TLS key", key, &e))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| invalid("TLS", cert, &e))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| invalid("TLS certificate and key", cert, &e))
}
