//! The client TLS listener's configuration (SPEC §10): the PEM files of `[server.tls]` read
//! into a rustls `ServerConfig`, at start-up (an error stops it, naming the file) and on
//! SIGHUP (an error keeps the pair in force).

use crate::config::TlsConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use tether_actors::rustls;
use tether_actors::rustls::server::WebPkiClientVerifier;
use tether_actors::rustls::sign::CertifiedKey;

/// Reads the certificate chain, the key and the optional client CA named by `tls` and
/// builds the handshakes' configuration (TLS 1.2 and 1.3, ring). The error names the file
/// at fault and why.
pub fn load(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certificates(&tls.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|err| format!("{}: no usable private key: {err}", tls.key_file.display()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|err| format!("{}: unusable private key: {err}", tls.key_file.display()))?;
    CertifiedKey::new(certs.clone(), signing_key)
        .keys_match()
        .map_err(|err| {
            format!(
                "{}: the key does not match the certificate in {} ({err})",
                tls.key_file.display(),
                tls.cert_file.display()
            )
        })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("cannot set up TLS: {err}"))?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in read_certificates(ca_file)? {
                roots.add(certificate).map_err(|err| {
                    format!("{}: unusable CA certificate: {err}", ca_file.display())
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| format!("{}: {err}", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|err| format!("{}: {err}", tls.cert_file.display()))?;
    Ok(Arc::new(config))
}

/// The certificates of the PEM file at `path`: at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("{}: cannot read certificates: {err}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certificates)
}
