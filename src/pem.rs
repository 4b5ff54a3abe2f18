//! PEM files of certificates: reading them, and the CA roots a peer's certificate is
//! checked against (TLS listeners, `tether client`, PostgreSQL over TLS).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use tether_actors::rustls;

/// The certificates of the PEM file at `path`: at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("{}: cannot read certificates: {err}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certificates)
}

/// The CA certificates of the PEM file at `ca_file` (at least one), as the roots a peer's
/// certificate is checked against; the error names the file.
pub fn root_store(ca_file: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in read_certificates(ca_file)? {
        roots
            .add(certificate)
            .map_err(|err| format!("{}: unusable CA certificate: {err}", ca_file.display()))?;
    }
    Ok(roots)
}
