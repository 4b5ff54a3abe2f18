//! TLS as a client (`tether client --tls --ca-file FILE`, PostgreSQL over TLS): what the
//! server's certificate is checked against, and TLS failures said as sentences.
//!
//! `--ca-file` holds CA certificates the server's chain must lead to, or — as its help
//! promises — the server's own self-signed certificate. OpenSSL 3's `req -x509` (the
//! README's recipe) marks such a certificate `CA:TRUE`, and a chain check (webpki's)
//! refuses a CA certificate as a server's own (`CaUsedAsEndEntity`). So a server
//! certificate byte-for-byte equal to one of the file's certificates is trusted as that
//! exact certificate (pinned): it must still be valid now (not before / not after) and
//! name the host of `--addr` (a DNS name or IP address among its subject alternative
//! names), and the server must prove it holds its key (the handshake's signature, checked
//! as for any certificate). Its CA flag, key usages and issuer are not looked at: nothing
//! it signed is trusted, only itself. Any other certificate takes the usual chain check
//! against the file's certificates as roots.

use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme,
};

/// Checks a server's certificate: pinned when it is one of `--ca-file`'s, else chained to
/// them (see the module comment).
#[derive(Debug)]
pub struct PinnedOrChained {
    /// The certificates of `--ca-file`, any of which the server may present as its own.
    pinned: Vec<CertificateDer<'static>>,
    /// The chain check against the same certificates as roots.
    chained: Arc<WebPkiServerVerifier>,
    /// The signature algorithms the handshake's signature is checked with.
    provider: Arc<CryptoProvider>,
}

impl PinnedOrChained {
    /// A verifier trusting `certificates` (as read from `--ca-file`, at least one).
    pub fn new(
        certificates: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in &certificates {
            // One webpki cannot use as a root may still be pinned.
            let _ = roots.add(certificate.clone());
        }
        if roots.is_empty() {
            return Err("no certificate in it can be used".to_owned());
        }
        let chained =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|err| err.to_string())?;
        Ok(Self {
            pinned: certificates,
            chained,
            provider,
        })
    }
}

impl ServerCertVerifier for PinnedOrChained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let is_pinned = self
            .pinned
            .iter()
            .any(|pinned| pinned.as_ref() == end_entity.as_ref());
        if !is_pinned {
            return self.chained.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        check_validity(end_entity, now)?;
        let parsed = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        parsed
            .verify_is_valid_for_subject_name(server_name)
            .map_err(|_| Error::InvalidCertificate(CertificateError::NotValidForName))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Refuses a certificate outside its validity period at `now`.
fn check_validity(certificate: &CertificateDer<'_>, now: UnixTime) -> Result<(), Error> {
    use x509_cert::der::Decode;
    let parsed = x509_cert::Certificate::from_der(certificate.as_ref())
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let validity = &parsed.tbs_certificate.validity;
    let now = now.as_secs();
    if now > validity.not_after.to_unix_duration().as_secs() {
        return Err(Error::InvalidCertificate(CertificateError::Expired));
    }
    if now < validity.not_before.to_unix_duration().as_secs() {
        return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
    }
    Ok(())
}

/// A TLS failure as a sentence for a person (`host` is the name the server was asked to
/// prove); rustls's own text for failures not foreseen here.
pub fn describe(err: &std::io::Error, host: &str) -> String {
    let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                "the server closed the connection during the TLS handshake (is the address \
                 the server's TLS listener? does it want a client certificate?)"
                    .to_owned()
            }
            _ => err.to_string(),
        };
    };
    describe_rustls(tls, host, "--ca-file")
}

/// A rustls failure as a sentence: `host` is the name the server was asked to prove,
/// `trusted` what says which certificates are trusted (`--ca-file`).
pub fn describe_rustls(err: &Error, host: &str, trusted: &str) -> String {
    let certificate = |problem: &str| format!("the server's certificate {problem}");
    match err {
        Error::InvalidCertificate(problem) => match problem {
            CertificateError::UnknownIssuer => certificate(&format!(
                "is not signed by a CA of {trusted}, and is not the certificate of {trusted} \
                 itself"
            )),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                certificate(&format!(
                    "is not valid for {host} (its subject alternative names do not include \
                     it): connect by a name it holds"
                ))
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                certificate("has expired")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                certificate("is not valid yet (or this machine's clock is wrong)")
            }
            CertificateError::Revoked => certificate("is revoked"),
            CertificateError::BadEncoding => certificate("cannot be parsed"),
            CertificateError::BadSignature => certificate("has a bad signature"),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                certificate("is not meant for a TLS server")
            }
            CertificateError::Other(OtherError(other)) => {
                let text = format!("{other:?}");
                if text.contains("CaUsedAsEndEntity") {
                    certificate(&format!(
                        "is a CA certificate not signed by a CA of {trusted}, and not the \
                         certificate of {trusted} itself: give the server's own certificate, \
                         or the CA that signed it"
                    ))
                } else {
                    certificate(&format!("is refused: {other}"))
                }
            }
            other => certificate(&format!("is refused ({other:?})")),
        },
        Error::AlertReceived(alert) => format!(
            "the server refused the TLS handshake ({alert:?}; does it want a client \
             certificate?)"
        ),
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
            "the server does not speak TLS there (is the address the server's TLS listener?)"
                .to_owned()
        }
        Error::NoCertificatesPresented => "the server presented no certificate".to_owned(),
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_errors_become_sentences_without_debug_text() {
        let wrapped = |err: Error| std::io::Error::other(err);
        for (err, says) in [
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "not signed by a CA of --ca-file",
            ),
            (
                Error::InvalidCertificate(CertificateError::NotValidForName),
                "not valid for example.org",
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                "has expired",
            ),
            (
                Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
                "client certificate",
            ),
        ] {
            let said = describe(&wrapped(err), "example.org");
            assert!(said.contains(says), "{said}");
            assert!(!said.contains("InvalidCertificate"), "{said}");
        }
    }
}
