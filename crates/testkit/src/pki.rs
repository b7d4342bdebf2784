//! Certificates for TLS tests, made with OpenSSL in a temporary directory: a CA, server
//! certificates (RSA and ECDSA, for `localhost` and `127.0.0.1`) and charge point client
//! certificates (current or expired), and a TLS client to go with them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
};

use openssl::{
    asn1::{Asn1Integer, Asn1Time},
    bn::BigNum,
    ec::{EcGroup, EcKey},
    hash::MessageDigest,
    nid::Nid,
    pkey::{PKey, Private},
    rsa::Rsa,
    ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion},
    x509::{
        extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName},
        X509Builder, X509NameBuilder, X509,
    },
};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub certificate_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From yesterday for a year.
    Current,
    /// Expired yesterday.
    Expired,
}

/// A certificate authority with its files in a temporary directory.
pub struct Pki {
    dir: TempDir,
    /// The CA certificate (PEM): the bundle clients and the gateway trust.
    pub ca_file: PathBuf,
    ca: X509,
    ca_key: PKey<Private>,
    issued: std::cell::Cell<u32>,
}

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn rsa_key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = ec_key();
        let mut subject = X509NameBuilder::new().unwrap();
        subject.append_entry_by_nid(Nid::COMMONNAME, name).unwrap();
        let subject = subject.build();
        let mut builder = X509Builder::new().unwrap();
        builder.set_version(2).unwrap();
        builder
            .set_serial_number(&Asn1Integer::from_bn(&BigNum::from_u32(1).unwrap()).unwrap())
            .unwrap();
        builder.set_subject_name(&subject).unwrap();
        builder.set_issuer_name(&subject).unwrap();
        builder.set_pubkey(&ca_key).unwrap();
        builder
            .set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::days_from_now(3650).unwrap())
            .unwrap();
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        builder
            .append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()
                    .unwrap(),
            )
            .unwrap();
        builder.sign(&ca_key, MessageDigest::sha256()).unwrap();
        let ca = builder.build();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.to_pem().unwrap()).unwrap();
        Pki {
            dir,
            ca_file,
            ca,
            ca_key,
            issued: std::cell::Cell::new(1),
        }
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server certificate with an RSA key, for `localhost` and `127.0.0.1`.
    pub fn server_rsa(&self) -> Issued {
        self.issue(
            "server-rsa",
            "localhost",
            None,
            rsa_key(),
            Validity::Current,
            true,
        )
    }

    /// A server certificate with an ECDSA P-256 key, for `localhost` and `127.0.0.1`.
    pub fn server_ecdsa(&self) -> Issued {
        self.issue(
            "server-ecdsa",
            "localhost",
            None,
            ec_key(),
            Validity::Current,
            true,
        )
    }

    /// A charge point's client certificate with subject CN `common_name` (and O
    /// `organization`).
    pub fn client(
        &self,
        common_name: &str,
        organization: Option<&str>,
        validity: Validity,
    ) -> Issued {
        let file = format!("client-{}", self.issued.get());
        self.issue(&file, common_name, organization, ec_key(), validity, false)
    }

    fn issue(
        &self,
        file: &str,
        common_name: &str,
        organization: Option<&str>,
        key: PKey<Private>,
        validity: Validity,
        server: bool,
    ) -> Issued {
        let serial = self.issued.get() + 1;
        self.issued.set(serial);
        let mut subject = X509NameBuilder::new().unwrap();
        subject
            .append_entry_by_nid(Nid::COMMONNAME, common_name)
            .unwrap();
        if let Some(organization) = organization {
            subject
                .append_entry_by_nid(Nid::ORGANIZATIONNAME, organization)
                .unwrap();
        }
        let subject = subject.build();
        let mut builder = X509Builder::new().unwrap();
        builder.set_version(2).unwrap();
        builder
            .set_serial_number(&Asn1Integer::from_bn(&BigNum::from_u32(serial).unwrap()).unwrap())
            .unwrap();
        builder.set_subject_name(&subject).unwrap();
        builder.set_issuer_name(self.ca.subject_name()).unwrap();
        builder.set_pubkey(&key).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let day = 86_400;
        let (from, until) = match validity {
            Validity::Current => (now - day, now + 365 * day),
            Validity::Expired => (now - 30 * day, now - day),
        };
        builder
            .set_not_before(&Asn1Time::from_unix(from).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::from_unix(until).unwrap())
            .unwrap();
        builder
            .append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        let usage = if server {
            ExtendedKeyUsage::new().server_auth().build().unwrap()
        } else {
            ExtendedKeyUsage::new().client_auth().build().unwrap()
        };
        builder.append_extension(usage).unwrap();
        if server {
            let context = builder.x509v3_context(Some(&self.ca), None);
            let names = SubjectAlternativeName::new()
                .dns("localhost")
                .ip("127.0.0.1")
                .build(&context)
                .unwrap();
            builder.append_extension(names).unwrap();
        }
        builder.sign(&self.ca_key, MessageDigest::sha256()).unwrap();
        let certificate = builder.build();
        let issued = Issued {
            certificate_file: self.dir.path().join(format!("{file}.pem")),
            key_file: self.dir.path().join(format!("{file}.key")),
        };
        std::fs::write(&issued.certificate_file, certificate.to_pem().unwrap()).unwrap();
        std::fs::write(&issued.key_file, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        issued
    }
}

/// How a test's TLS client connects.
#[derive(Default)]
pub struct TlsClient<'a> {
    /// The CA bundle that verifies the server (none: the server is not verified).
    pub ca_file: Option<&'a Path>,
    /// A client certificate to present.
    pub certificate: Option<&'a Issued>,
    /// The only TLS 1.2 cipher suites to offer (OpenSSL syntax).
    pub cipher_list: Option<&'a str>,
    /// The newest version to offer.
    pub max_version: Option<SslVersion>,
    /// The oldest version to offer.
    pub min_version: Option<SslVersion>,
}

impl TlsClient<'_> {
    /// A TLS connection to `address` as `localhost`, or OpenSSL's reason for failing.
    pub async fn connect(&self, address: SocketAddr) -> Result<SslStream<TcpStream>, String> {
        let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
        match self.ca_file {
            Some(ca_file) => builder.set_ca_file(ca_file).unwrap(),
            None => builder.set_verify(SslVerifyMode::NONE),
        }
        if let Some(certificate) = self.certificate {
            builder
                .set_certificate_file(&certificate.certificate_file, SslFiletype::PEM)
                .unwrap();
            builder
                .set_private_key_file(&certificate.key_file, SslFiletype::PEM)
                .unwrap();
        }
        if let Some(ciphers) = self.cipher_list {
            builder.set_cipher_list(ciphers).unwrap();
        }
        if self.min_version.is_some() || self.max_version.is_some() {
            // TLS 1.0 and 1.1 need security level 0 in OpenSSL 3.
            builder.set_security_level(0);
            builder.set_min_proto_version(self.min_version).unwrap();
            builder.set_max_proto_version(self.max_version).unwrap();
        }
        let connector = builder.build();
        let mut configuration = connector.configure().unwrap();
        if self.ca_file.is_none() {
            configuration.set_verify_hostname(false);
        }
        let ssl = configuration.into_ssl("localhost").unwrap();
        let tcp = TcpStream::connect(address).await.unwrap();
        let mut stream = SslStream::new(ssl, tcp).unwrap();
        Pin::new(&mut stream)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(stream)
    }
}
