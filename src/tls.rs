//! The TLS configurations (SPEC §10): the PEM files of `[server.tls]` and `[admin.tls]`
//! read into rustls `ServerConfig`s, at start-up (an error stops it, naming the file), and
//! again on SIGHUP and when the files change (an error keeps the pair in force). The client
//! listener's whole configuration is replaced in its [`TlsConfigSlot`]; the admin API's
//! certificate is replaced in the [`AdminCertificate`] its configuration asks.

use crate::config::{AdminTls, Config, TlsConfig};
use crate::pem::{read_certificates, root_store};
use crate::users::read::{read_contents, Contents};
use crate::users::watch::{watch_file, FileWatch};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use tether_actors::rustls;
use tether_actors::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tether_actors::rustls::sign::CertifiedKey;
use tether_actors::TlsConfigSlot;
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;

/// Reads the certificate chain, the key and the optional client CA named by `tls` and
/// builds the handshakes' configuration (TLS 1.2 and 1.3, ring, resumption with stateless
/// tickets). The error names the file at fault and why.
pub fn load(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    load_with_client_check(tls).map(|(config, _)| config)
}

/// The verifier of client certificates a configuration uses, when it asks for them.
pub type ClientCheck = Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>;

/// Like [`load`], with the configuration's client-certificate verifier, for a reload to
/// check the connections already open against.
fn load_with_client_check(
    tls: &TlsConfig,
) -> Result<(Arc<rustls::ServerConfig>, ClientCheck), String> {
    load_files(&tls.cert_file, &tls.key_file, tls.client_ca_file.as_deref())
}

/// The admin API's configuration from `[admin.tls]` (no client certificates), and the
/// certificate it serves, replaceable while it runs; the error names the file at fault.
pub fn load_admin(tls: &AdminTls) -> Result<(rustls::ServerConfig, Arc<AdminCertificate>), String> {
    let certificate = Arc::new(AdminCertificate(RwLock::new(load_admin_key(tls)?)));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| format!("cannot set up TLS: {err}"))?
    .with_no_client_auth()
    .with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
    Ok((config, certificate))
}

/// The admin API's certificate and key from `[admin.tls]`, checked as the client
/// listener's are.
fn load_admin_key(tls: &AdminTls) -> Result<Arc<CertifiedKey>, String> {
    let provider = rustls::crypto::ring::default_provider();
    let (certs, key) = load_pair(&tls.cert_file, &tls.key_file, &provider)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|err| format!("{}: unusable private key: {err}", tls.key_file.display()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing_key)))
}

/// The certificate the admin API's handshakes are given: the one in force, which a reload
/// replaces (connections already open keep theirs).
#[derive(Debug)]
pub struct AdminCertificate(RwLock<Arc<CertifiedKey>>);

impl AdminCertificate {
    /// Puts `key` in force for the handshakes that begin from now on.
    fn replace(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = key;
    }
}

impl ResolvesServerCert for AdminCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// The certificate chain of `cert_file` and the key of `key_file`, checked to match (and
/// the chain's first certificate's validity said when it is not valid now).
fn load_pair(
    cert_file: &Path,
    key_file: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
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
    Ok((certs, key))
}

/// A server configuration from the PEM files `cert_file` and `key_file`, requiring client
/// certificates signed by `client_ca_file` when given.
fn load_files(
    cert_file: &Path,
    key_file: &Path,
    client_ca_file: Option<&Path>,
) -> Result<(Arc<rustls::ServerConfig>, ClientCheck), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client_check: ClientCheck = None;
    let (certs, key) = load_pair(cert_file, key_file, &provider)?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("cannot set up TLS: {err}"))?;
    let builder = match client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(root_store(ca_file)?),
                provider,
            )
            .build()
            .map_err(|err| format!("{}: {err}", ca_file.display()))?;
            client_check = Some(Arc::clone(&verifier));
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| format!("{}: {err}", cert_file.display()))?;
    offer_resumption(&mut config)?;
    Ok((Arc::new(config), client_check))
}

/// Offers session resumption with stateless tickets (SECURITY.md, "TLS"): the session is
/// sealed into the ticket under a key only this configuration holds, in memory, replaced
/// every 6 hours (a ticket lives 12 at most), so the server keeps nothing per client and
/// any number of clients can resume. A reload makes new keys: tickets issued before it
/// (maybe under another `client_ca_file`) no longer resume. One ticket per handshake, not
/// rustls's two: a client reconnects one connection at a time, and each resumption brings
/// a fresh ticket.
fn offer_resumption(config: &mut rustls::ServerConfig) -> Result<(), String> {
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|err| format!("cannot make TLS session ticket keys: {err}"))?;
    config.send_tls13_tickets = 1;
    Ok(())
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

/// Keeps the TLS files watched; dropping it stops the watcher threads. SIGHUP keeps
/// triggering reloads for as long as the actix System runs.
pub struct TlsReload {
    /// One watcher per file (certificate, key, client CA).
    _watches: Vec<FileWatch>,
}

/// Reloads the client listener's pair into `slot` on each SIGHUP from `hangups` and each
/// time one of the files named by `tls` settles after a change (see `reload_files`).
/// Must be called inside the actix System.
pub fn start_reloading(tls: TlsConfig, slot: TlsConfigSlot, hangups: Option<Signal>) -> TlsReload {
    let mut files = vec![tls.cert_file.clone(), tls.key_file.clone()];
    files.extend(tls.client_ca_file.clone());
    let shown = tls.cert_file.display().to_string();
    reload_files(
        ReloadTarget {
            what: "TLS certificate",
            shown,
            files,
        },
        move || load_with_client_check(&tls),
        move |(config, client_check)| {
            // Open connections whose client certificate the (new) client CA refuses are
            // closed with io_error (SECURITY.md, "TLS").
            let closed = slot.replace_checking_clients(config, client_check);
            if closed > 0 {
                log::warn!(
                    "TLS: closed {closed} connection(s) whose client certificate the client \
                     CA in force no longer accepts"
                );
            }
        },
        hangups,
    )
}

/// Reloads the admin API's pair into `certificate` on each SIGHUP from `hangups` and each
/// time its files settle after a change (see `reload_files`). Must be called inside the
/// actix System.
pub fn start_reloading_admin(
    tls: AdminTls,
    certificate: Arc<AdminCertificate>,
    hangups: Option<Signal>,
) -> TlsReload {
    let files = vec![tls.cert_file.clone(), tls.key_file.clone()];
    let shown = tls.cert_file.display().to_string();
    reload_files(
        ReloadTarget {
            what: "admin API TLS certificate",
            shown,
            files,
        },
        move || load_admin_key(&tls),
        move |key| certificate.replace(key),
        hangups,
    )
}

/// What a reload reads, for its watchers and its log lines.
struct ReloadTarget {
    /// What is reloaded, as the log says it ("TLS certificate").
    what: &'static str,
    /// The certificate file, as the log shows it.
    shown: String,
    /// Every file it is read from.
    files: Vec<PathBuf>,
}

/// Calls `load` (on a blocking thread) and hands its result to `apply` on each SIGHUP from
/// `hangups` and each time one of `target`'s files settles after a change (watched as the
/// users file is, see [`crate::users::watch`]); a change that leaves the files' bytes as
/// they were last loaded is ignored. What cannot be loaded is logged and what is in force
/// stays. Must be called inside the actix System.
fn reload_files<T: Send + 'static>(
    target: ReloadTarget,
    load: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    apply: impl Fn(T) + 'static,
    hangups: Option<Signal>,
) -> TlsReload {
    // One pending request is enough: a watcher waits until it is taken.
    let (requests, changes) = mpsc::channel(1);
    let watches = target
        .files
        .iter()
        .filter_map(|path| {
            let shown = path.display().to_string();
            watch_file("TLS file", path.clone(), requests.clone())
                .map_err(|err| {
                    log::warn!("TLS file {shown}: cannot watch it ({err}); SIGHUP reloads it")
                })
                .ok()
        })
        .collect();
    actix_rt::spawn(reload_on_request(
        target,
        Arc::new(load),
        apply,
        changes,
        hangups,
    ));
    TlsReload { _watches: watches }
}

/// What the files hold now, to tell a real change from a touch.
fn fingerprint(files: &[PathBuf]) -> Vec<Contents> {
    files.iter().map(|path| read_contents(path)).collect()
}

/// Reloads once per SIGHUP and once per change of the files' bytes, one after the other,
/// until both sources are gone.
async fn reload_on_request<T: Send + 'static>(
    target: ReloadTarget,
    load: Arc<dyn Fn() -> Result<T, String> + Send + Sync>,
    apply: impl Fn(T),
    mut changes: mpsc::Receiver<Contents>,
    mut hangups: Option<Signal>,
) {
    let what = target.what;
    let files = Arc::new(target.files);
    let mut last = {
        let files = Arc::clone(&files);
        actix_rt::task::spawn_blocking(move || fingerprint(&files))
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
        let reading = Arc::clone(&files);
        let loading = Arc::clone(&load);
        let read = actix_rt::task::spawn_blocking(move || {
            let now = fingerprint(&reading);
            let loaded = loading();
            (now, loaded)
        })
        .await;
        let Ok((now, loaded)) = read else {
            log::error!("{what} not reloaded: the reading thread failed");
            continue;
        };
        if !on_signal && last.as_ref() == Some(&now) {
            continue;
        }
        last = Some(now);
        let why = if on_signal { "SIGHUP" } else { "files changed" };
        match loaded {
            Ok(loaded) => {
                apply(loaded);
                log::info!("{what} reloaded from {} ({why})", target.shown);
            }
            Err(err) => {
                log::error!("{what} not reloaded ({why}), the old one stays: {err}")
            }
        }
    }
}

/// What start-up reads from certificate files (SPEC §4, §8, §10): the client listener's
/// TLS configuration, the CA bundle for `rediss://`, the admin API's TLS configuration.
pub struct Certificates {
    /// `server.tls`, loaded.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `cluster.redis_ca_file`'s contents, checked.
    pub redis_ca: Option<Vec<u8>>,
    /// `admin.tls`, loaded, with the slot its reloads replace.
    pub admin_tls: Option<(rustls::ServerConfig, Arc<AdminCertificate>)>,
}

/// Reads and checks every certificate file the configuration names, as start-up does
/// (`tether check-config` too): the first failure, naming its file, or what was read.
pub fn load_certificates(config: &Config) -> Result<Certificates, String> {
    let tls = config.server.tls.as_ref().map(load).transpose()?;
    let redis_ca = config
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.redis_ca_file.as_ref().map(|file| (cluster, file)))
        .map(|(cluster, file)| read_redis_ca(&cluster.redis, file))
        .transpose()?;
    let admin_tls = config.admin.tls.as_ref().map(load_admin).transpose()?;
    Ok(Certificates {
        tls,
        redis_ca,
        admin_tls,
    })
}

/// Reads `cluster.redis_ca_file` and checks it holds certificates for the `rediss://` URL.
fn read_redis_ca(url: &str, file: &std::path::Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(file).map_err(|err| {
        format!(
            "cluster.redis_ca_file: cannot read {}: {err}",
            file.display()
        )
    })?;
    tether_cluster::ClusterSettings::check_tls(url, &pem)
        .map_err(|err| format!("cluster.redis_ca_file: {}: {err}", file.display()))?;
    Ok(pem)
}
