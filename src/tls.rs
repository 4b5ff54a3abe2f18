//! The client TLS listener's configuration (SPEC §10): the PEM files of `[server.tls]` read
//! into a rustls `ServerConfig`, at start-up (an error stops it, naming the file), and
//! again on SIGHUP and when the files change (an error keeps the pair in force).

use crate::config::{AdminTls, TlsConfig};
use crate::users::read::{read_contents, Contents};
use crate::users::watch::{watch_file, FileWatch};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tether_actors::rustls;
use tether_actors::rustls::server::WebPkiClientVerifier;
use tether_actors::rustls::sign::CertifiedKey;
use tether_actors::TlsConfigSlot;
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;

/// Reads the certificate chain, the key and the optional client CA named by `tls` and
/// builds the handshakes' configuration (TLS 1.2 and 1.3, ring). The error names the file
/// at fault and why.
pub fn load(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    load_files(&tls.cert_file, &tls.key_file, tls.client_ca_file.as_deref())
}

/// The admin API's configuration from `[admin.tls]` (no client certificates); the error
/// names the file at fault.
pub fn load_admin(tls: &AdminTls) -> Result<rustls::ServerConfig, String> {
    let config = load_files(&tls.cert_file, &tls.key_file, None)?;
    Ok(Arc::unwrap_or_clone(config))
}

/// A server configuration from the PEM files `cert_file` and `key_file`, requiring client
/// certificates signed by `client_ca_file` when given.
fn load_files(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certificates(cert_file)?;
    if let Some(warning) = validity_warning(cert_file, &certs[0]) {
        log::warn!("{warning}");
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|err| format!("{}: no usable private key: {err}", key_file.display()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|err| format!("{}: unusable private key: {err}", key_file.display()))?;
    CertifiedKey::new(certs.clone(), signing_key)
        .keys_match()
        .map_err(|err| {
            format!(
                "{}: the key does not match the certificate in {} ({err})",
                key_file.display(),
                cert_file.display()
            )
        })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("cannot set up TLS: {err}"))?;
    let builder = match client_ca_file {
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
        .map_err(|err| format!("{}: {err}", cert_file.display()))?;
    Ok(Arc::new(config))
}

/// Why the certificate `certificate` (from `cert_file`) is not valid now, if it is not:
/// served anyway (clients refuse it; the server is not the judge of its clock), but said.
fn validity_warning(cert_file: &Path, certificate: &CertificateDer<'_>) -> Option<String> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(certificate.as_ref()).ok()?;
    let validity = &parsed.tbs_certificate.validity;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let shown = cert_file.display();
    if now > validity.not_after.to_unix_duration() {
        Some(format!(
            "{shown}: the certificate expired ({}): clients will refuse it",
            validity.not_after
        ))
    } else if now < validity.not_before.to_unix_duration() {
        Some(format!(
            "{shown}: the certificate is not valid before {}: clients will refuse it",
            validity.not_before
        ))
    } else {
        None
    }
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

/// Keeps the TLS files watched; dropping it stops the watcher threads. SIGHUP keeps
/// triggering reloads for as long as the actix System runs.
pub struct TlsReload {
    /// One watcher per file (certificate, key, client CA).
    _watches: Vec<FileWatch>,
}

/// Reloads the pair into `slot` on each SIGHUP from `hangups` and each time one of the
/// files named by `tls` settles after a change (watched as the users file is, see
/// [`crate::users::watch`]); a change that leaves the files' bytes as they were last
/// loaded is ignored. A pair that cannot be loaded is logged and the pair in force stays.
/// Must be called inside the actix System.
pub fn start_reloading(tls: TlsConfig, slot: TlsConfigSlot, hangups: Option<Signal>) -> TlsReload {
    // One pending request is enough: a watcher waits until it is taken.
    let (requests, changes) = mpsc::channel(1);
    let watches = files(&tls)
        .into_iter()
        .filter_map(|path| {
            let shown = path.display().to_string();
            watch_file("TLS file", path, requests.clone())
                .map_err(|err| {
                    log::warn!("TLS file {shown}: cannot watch it ({err}); SIGHUP reloads it")
                })
                .ok()
        })
        .collect();
    actix_rt::spawn(reload_on_request(tls, slot, changes, hangups));
    TlsReload { _watches: watches }
}

/// The files a TLS configuration is read from.
fn files(tls: &TlsConfig) -> Vec<PathBuf> {
    let mut files = vec![tls.cert_file.clone(), tls.key_file.clone()];
    files.extend(tls.client_ca_file.clone());
    files
}

/// What the files hold now, to tell a real change from a touch.
fn fingerprint(tls: &TlsConfig) -> Vec<Contents> {
    files(tls).iter().map(|path| read_contents(path)).collect()
}

/// Reloads once per SIGHUP and once per change of the files' bytes, one after the other,
/// until both sources are gone.
async fn reload_on_request(
    tls: TlsConfig,
    slot: TlsConfigSlot,
    mut changes: mpsc::Receiver<Contents>,
    mut hangups: Option<Signal>,
) {
    let tls = Arc::new(tls);
    let mut last = {
        let tls = Arc::clone(&tls);
        actix_rt::task::spawn_blocking(move || fingerprint(&tls))
            .await
            .ok()
    };
    loop {
        let hangup = async {
            match &mut hangups {
                Some(hangups) => hangups.recv().await,
                None => std::future::pending().await,
            }
        };
        let on_signal = tokio::select! {
            Some(_) = changes.recv() => false,
            Some(()) = hangup => true,
            else => return,
        };
        let reading = Arc::clone(&tls);
        let read = actix_rt::task::spawn_blocking(move || {
            let now = fingerprint(&reading);
            let loaded = load(&reading);
            (now, loaded)
        })
        .await;
        let Ok((now, loaded)) = read else {
            log::error!("TLS certificate not reloaded: the reading thread failed");
            continue;
        };
        if !on_signal && last.as_ref() == Some(&now) {
            continue;
        }
        last = Some(now);
        let why = if on_signal { "SIGHUP" } else { "files changed" };
        match loaded {
            Ok(config) => {
                slot.replace(config);
                log::info!(
                    "TLS certificate reloaded from {} ({why})",
                    tls.cert_file.display()
                );
            }
            Err(err) => {
                log::error!("TLS certificate not reloaded ({why}), the old one stays: {err}")
            }
        }
    }
}
