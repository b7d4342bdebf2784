//! TLS for charge points (`wss://`, security profiles 2 and 3), with OpenSSL.
//!
//! OpenSSL rather than rustls: OCPP requires the CSMS to offer
//! `TLS_RSA_WITH_AES_128_GCM_SHA256` and `TLS_RSA_WITH_AES_256_GCM_SHA384` (RSA key
//! exchange), which rustls never offers. [`TlsServer`] holds the current acceptor (built
//! from `[tls]` and its files) and swaps in a new one when the files change, so that a
//! renewed certificate needs no restart and open connections keep their sessions.
//!
//! A client certificate is optional at the TLS layer (profile 2 clients have none); when
//! one is presented it must verify against `tls.client_ca_file` (and its CRL), or the
//! handshake fails. Whether a charge point *needs* one, and whether it names the right
//! charge point, is decided by [`crate::auth`] from its record.

pub mod config;
pub mod metrics;
pub mod reload;

use std::{path::PathBuf, pin::Pin, sync::Arc, time::SystemTime};

use openssl::{
    nid::Nid,
    ssl::{
        Ssl, SslAcceptor, SslFiletype, SslMethod, SslMode, SslOptions, SslSessionCacheMode,
        SslVerifyMode, SslVersion,
    },
    x509::{store::X509Lookup, verify::X509VerifyFlags, X509NameRef, X509VerifyResult, X509},
};
use parking_lot::RwLock;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

pub use self::config::{CertificateBinding, CertificateFiles, TlsConfig, TlsVersion};
use self::metrics::TlsMetrics;
use crate::labels::TlsHandshakeResult;

/// What a verified client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The subject's common names (CN).
    pub common_names: Vec<String>,
    /// The subject's organisations (O).
    pub organizations: Vec<String>,
}

impl ClientCertificate {
    fn of(certificate: &X509) -> ClientCertificate {
        let subject = certificate.subject_name();
        ClientCertificate {
            common_names: entries(subject, Nid::COMMONNAME),
            organizations: entries(subject, Nid::ORGANIZATIONNAME),
        }
    }
}

fn entries(name: &X509NameRef, nid: Nid) -> Vec<String> {
    name.entries_by_nid(nid)
        .filter_map(|entry| entry.data().to_string().ok())
        .collect()
}

/// Why the TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS {what} ({path}): {reason}")]
pub struct TlsSetupError {
    /// What was being set up.
    pub what: &'static str,
    /// The file involved, if any.
    pub path: String,
    /// OpenSSL's reason.
    pub reason: String,
}

/// How a TLS handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The client's certificate did not verify (expired, unknown CA, revoked...): what
    /// OpenSSL said.
    CertificateRefused(String),
    /// Anything else: no shared version or cipher, not TLS, a reset.
    Handshake(String),
}

/// The current TLS acceptor and the settings it was built from.
pub struct TlsServer {
    config: TlsConfig,
    acceptor: RwLock<Arc<SslAcceptor>>,
    metrics: TlsMetrics,
}

impl TlsServer {
    /// Builds the acceptor from `config`'s files.
    pub fn new(config: TlsConfig, metrics: TlsMetrics) -> Result<TlsServer, TlsSetupError> {
        let acceptor = build_acceptor(&config)?;
        metrics.certificates_loaded(&config);
        Ok(TlsServer {
            config,
            acceptor: RwLock::new(Arc::new(acceptor)),
            metrics,
        })
    }

    /// The settings.
    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// Builds a new acceptor from the files and uses it for new connections; on error the
    /// current one stays.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        let acceptor = build_acceptor(&self.config)?;
        *self.acceptor.write() = Arc::new(acceptor);
        self.metrics.certificates_loaded(&self.config);
        Ok(())
    }

    /// The files the acceptor is built from, for change detection.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .config
            .certificates
            .iter()
            .flat_map(|c| [c.certificate_file.clone(), c.key_file.clone()])
            .collect();
        files.extend(self.config.client_ca_file.clone());
        files.extend(self.config.crl_file.clone());
        files
    }

    /// The TLS handshake on `stream`: the encrypted stream and the client's certificate,
    /// if it presented one (verified). Counted in `ocppgw_tls_handshakes_total`.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(SslStream<TcpStream>, Option<ClientCertificate>), TlsFailure> {
        let acceptor = self.acceptor.read().clone();
        let handshake = |reason: String| TlsFailure::Handshake(reason);
        let ssl = Ssl::new(acceptor.context()).map_err(|e| handshake(e.to_string()))?;
        let mut tls = SslStream::new(ssl, stream).map_err(|e| handshake(e.to_string()))?;
        if let Err(e) = Pin::new(&mut tls).accept().await {
            let verified = tls.ssl().verify_result();
            let failure = if verified != X509VerifyResult::OK {
                TlsFailure::CertificateRefused(verified.error_string().to_owned())
            } else {
                handshake(e.to_string())
            };
            self.metrics.handshake(match failure {
                TlsFailure::CertificateRefused(_) => TlsHandshakeResult::CertificateRefused,
                TlsFailure::Handshake(_) => TlsHandshakeResult::Failed,
            });
            return Err(failure);
        }
        self.metrics.handshake(if tls.ssl().session_reused() {
            TlsHandshakeResult::Resumed
        } else {
            TlsHandshakeResult::Full
        });
        let certificate = tls
            .ssl()
            .peer_certificate()
            .map(|c| ClientCertificate::of(&c));
        Ok((tls, certificate))
    }
}

/// The modification times of `files` (absent files as `None`), to notice a change.
pub fn modification_times(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|file| std::fs::metadata(file).and_then(|m| m.modified()).ok())
        .collect()
}

fn build_acceptor(config: &TlsConfig) -> Result<SslAcceptor, TlsSetupError> {
    let error = |what: &'static str, path: &std::path::Path| {
        let path = path.display().to_string();
        move |e: openssl::error::ErrorStack| TlsSetupError {
            what,
            path: path.clone(),
            reason: e.to_string(),
        }
    };
    let none = std::path::Path::new("-");
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(error("context", none))?;
    for files in &config.certificates {
        builder
            .set_certificate_chain_file(&files.certificate_file)
            .map_err(error("certificate", &files.certificate_file))?;
        builder
            .set_private_key_file(&files.key_file, SslFiletype::PEM)
            .map_err(error("private key", &files.key_file))?;
        builder.check_private_key().map_err(error(
            "private key does not match its certificate",
            &files.key_file,
        ))?;
    }
    let legacy = matches!(config.min_version, TlsVersion::V1_0 | TlsVersion::V1_1);
    let min_version = match config.min_version {
        TlsVersion::V1_0 => SslVersion::TLS1,
        TlsVersion::V1_1 => SslVersion::TLS1_1,
        TlsVersion::V1_2 => SslVersion::TLS1_2,
        TlsVersion::V1_3 => SslVersion::TLS1_3,
    };
    if legacy {
        builder.clear_options(SslOptions::NO_TLSV1 | SslOptions::NO_TLSV1_1);
        // OpenSSL 3 refuses TLS 1.0 and 1.1 (SHA-1 signatures) above security level 0.
        builder.set_security_level(0);
    }
    builder
        .set_min_proto_version(Some(min_version))
        .map_err(error("tls.min_version", none))?;
    let cipher_list = if legacy {
        format!(
            "{}:ECDHE-RSA-AES128-SHA:AES128-SHA:AES256-SHA",
            config.cipher_list
        )
    } else {
        config.cipher_list.clone()
    };
    builder
        .set_cipher_list(&cipher_list)
        .map_err(error("tls.cipher_list", none))?;
    builder
        .set_ciphersuites(&config.ciphersuites)
        .map_err(error("tls.ciphersuites", none))?;
    builder.set_options(SslOptions::NO_COMPRESSION | SslOptions::CIPHER_SERVER_PREFERENCE);
    // An idle connection keeps no read or write buffer: most of a wss:// connection's
    // memory otherwise.
    builder.set_mode(SslMode::RELEASE_BUFFERS);
    // Resumption (a session id cache, and TLS 1.3 tickets) needs a context id once client
    // certificates are verified.
    builder
        .set_session_id_context(b"charge-point-gateway")
        .map_err(error("session id context", none))?;
    // Tickets resume TLS 1.2 and 1.3 sessions without any state kept here; the cache is
    // for TLS 1.2 clients without ticket support.
    if config.session_cache_size == 0 {
        builder.set_session_cache_mode(SslSessionCacheMode::OFF);
    } else {
        builder.set_session_cache_mode(SslSessionCacheMode::SERVER);
        builder
            .set_session_cache_size(i32::try_from(config.session_cache_size).unwrap_or(i32::MAX));
    }
    if !config.session_tickets {
        builder.set_options(SslOptions::NO_TICKET);
    }
    if let Some(ca_file) = &config.client_ca_file {
        builder
            .set_ca_file(ca_file)
            .map_err(error("client CA bundle", ca_file))?;
        let names = X509::stack_from_pem(&std::fs::read(ca_file).map_err(|e| TlsSetupError {
            what: "client CA bundle",
            path: ca_file.display().to_string(),
            reason: e.to_string(),
        })?)
        .map_err(error("client CA bundle", ca_file))?;
        let mut list = openssl::stack::Stack::new().map_err(error("client CA list", ca_file))?;
        for certificate in names {
            list.push(
                certificate
                    .subject_name()
                    .to_owned()
                    .map_err(error("client CA list", ca_file))?,
            )
            .map_err(error("client CA list", ca_file))?;
        }
        builder.set_client_ca_list(list);
        if let Some(crl_file) = &config.crl_file {
            let store = builder.cert_store_mut();
            store
                .add_lookup(X509Lookup::file())
                .map_err(error("CRL", crl_file))?
                .load_crl_file(crl_file, SslFiletype::PEM)
                .map_err(error("CRL", crl_file))?;
            store
                .set_flags(X509VerifyFlags::CRL_CHECK)
                .map_err(error("CRL", crl_file))?;
        }
        // Asked for, not required: profile 2 clients have none. A certificate that is
        // presented must verify, or the handshake fails.
        builder.set_verify(SslVerifyMode::PEER);
    }
    Ok(builder.build())
}

/// The earliest `notAfter` of the configured certificates, in seconds since the epoch.
pub fn earliest_expiry(config: &TlsConfig) -> Option<i64> {
    config
        .certificates
        .iter()
        .filter_map(|files| std::fs::read(&files.certificate_file).ok())
        .filter_map(|pem| X509::from_pem(&pem).ok())
        .filter_map(|certificate| {
            let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
            let diff = epoch.diff(certificate.not_after()).ok()?;
            Some(i64::from(diff.days) * 86_400 + i64::from(diff.secs))
        })
        .min()
}
