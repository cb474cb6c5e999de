//! TLS for outbound connections: which roots are trusted, and the certificate presented.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where trust comes from, and what to present to servers that ask for a client certificate:
/// the config's `[outbound]` (or an API's own) settings.
pub use clientele_core::config::OutboundTls as TlsSettings;

/// Builds the rustls configuration for `settings`. Errors name the file and the reason.
pub fn client_config(settings: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    let roots = match &settings.ca_file {
        Some(path) => roots_from_file(path)?,
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(roots);
    match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                format!(
                    "{}: cannot read a PEM private key ({e}); give the key that goes with client_cert",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: {e}", cert.display()))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("client_cert and client_key go together: set both or neither".into()),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: a certificate in it is not a CA: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The platform's trust store (on Linux the OpenSSL locations, or `SSL_CERT_FILE`/`SSL_CERT_DIR`),
/// read once per process: every client shares it.
fn system_roots() -> Result<RootCertStore, String> {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    Ok(ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                // Plain-HTTP set-ups need no roots, so this is not fatal; https requests fail
                // with "unknown issuer" and this line says why.
                let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                tracing::warn!(
                    errors = %why.join("; "),
                    "no trusted root certificates found on this system; https endpoints will be refused: install ca-certificates, or set SSL_CERT_FILE or ca_file to a PEM bundle"
                );
            }
            roots
        })
        .clone())
}
