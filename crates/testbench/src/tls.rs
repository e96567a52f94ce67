//! The throw-away PKI: a CA generated at start and a server certificate it signs for
//! `127.0.0.1`, `::1` and `localhost`. Clients trust the CA PEM, never "accept invalid certs".

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The generated CA and the rustls server configuration using its leaf certificate.
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    pub(crate) server_config: Arc<rustls::ServerConfig>,
    /// The same certificate without ALPN, for the Kafka front (librdkafka offers no ALPN).
    pub(crate) kafka_server_config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// A loopback PKI as PEM: a fresh CA and a server certificate it signs for `127.0.0.1`, `::1`
/// and `localhost` (IP SANs, because TLS clients such as librdkafka verify the host name).
#[derive(Clone)]
pub struct LoopbackPki {
    /// The CA certificate; clients trust it.
    pub ca_pem: String,
    /// The server certificate followed by the CA certificate (the chain a server presents).
    pub cert_pem: String,
    /// The server's private key, PKCS#8.
    pub key_pem: String,
}

impl std::fmt::Debug for LoopbackPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopbackPki")
            .field("ca_pem", &self.ca_pem)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Generates a [`LoopbackPki`].
///
/// # Errors
///
/// If key generation or signing fails.
pub fn loopback_pki() -> anyhow::Result<LoopbackPki> {
    let g = generate_certs()?;
    Ok(LoopbackPki {
        cert_pem: format!("{}{}", g.leaf_pem, g.ca_pem),
        ca_pem: g.ca_pem,
        key_pem: g.key_pem,
    })
}

struct Generated {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    leaf_pem: String,
    leaf_der: CertificateDer<'static>,
    key_pem: String,
    key_der: Vec<u8>,
}

fn generate_certs() -> anyhow::Result<Generated> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "falcon-sentinel-bridge testbench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "testbench");
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer)?;

    Ok(Generated {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        leaf_pem: leaf_cert.pem(),
        leaf_der: leaf_cert.der().clone(),
        key_pem: leaf_key.serialize_pem(),
        key_der: leaf_key.serialize_der(),
    })
}

/// A TLS server configuration (aws-lc-rs, TLS 1.2 and 1.3, no client certificates) serving
/// `chain` (leaf first) with `key`.
pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?)
}

pub(crate) fn generate() -> anyhow::Result<Pki> {
    let g = generate_certs()?;
    let chain: Vec<CertificateDer<'static>> = vec![g.leaf_der, g.ca_der];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(g.key_der));
    let mut config = server_config(chain, key)?;
    let kafka = config.clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Pki {
        ca_pem: g.ca_pem,
        server_config: Arc::new(config),
        kafka_server_config: Arc::new(kafka),
    })
}
