//! SIP over TLS (RFC 3261 §26.2, RFC 5630): the rustls configurations of the TLS listener and
//! of the connections we open, and the PEM loading behind them.
//!
//! TLS connections are carried by the TCP machinery of [`crate::endpoint`] (framing, caps, idle
//! timeout, write-queue bound, keep-alive); this module only makes the configurations. The
//! provider is ring (as for the Realtime WebSocket and webhooks); protocol versions and cipher
//! suites are rustls's safe defaults: TLS 1.2 and 1.3, AEAD suites with forward secrecy only.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// How long a TLS handshake may take, ours or a peer's, before the connection is dropped: a
/// peer that opens a connection and sends nothing holds a slot only this long.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS listener: where, and with which server configuration.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub addr: std::net::SocketAddr,
    pub config: Arc<ServerConfig>,
    /// The certificate `config` presents, replaceable while the listener runs.
    pub certificate: Arc<ServerCertificate>,
    /// A connection whose handshake has not completed after this long is closed.
    pub handshake_timeout: Duration,
    /// Another configuration for some source addresses (a trunk that must present a client
    /// certificate); `None` there, or no selector: `config`.
    pub per_source: Option<ConfigForSource>,
}

/// Picks the server configuration of a TLS connection by its source address, before the
/// handshake: how a trunk's `tls_client_ca` applies to that trunk's `sources` only.
#[derive(Clone)]
pub struct ConfigForSource(Arc<dyn Fn(std::net::IpAddr) -> Option<Arc<ServerConfig>> + Send + Sync>);

impl ConfigForSource {
    pub fn new(select: impl Fn(std::net::IpAddr) -> Option<Arc<ServerConfig>> + Send + Sync + 'static) -> Self {
        ConfigForSource(Arc::new(select))
    }

    /// The configuration for a connection from `ip`, if not the listener's own.
    pub fn config_for(&self, ip: std::net::IpAddr) -> Option<Arc<ServerConfig>> {
        (self.0)(ip)
    }
}

impl std::fmt::Debug for ConfigForSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigForSource")
    }
}

impl TlsListener {
    /// A listener on `addr` presenting `certificate`; with `client_ca`, mutual TLS.
    pub fn new(
        addr: std::net::SocketAddr,
        certificate: Arc<ServerCertificate>,
        client_ca: Option<RootCertStore>,
        handshake_timeout: Duration,
    ) -> Result<TlsListener, TlsSetupError> {
        let config = Arc::new(server_config(certificate.clone(), client_ca)?);
        Ok(TlsListener { addr, config, certificate, handshake_timeout, per_source: None })
    }
}

/// The listener's certificate chain and key, replaceable while it runs: a configuration reload
/// that finds a renewed certificate swaps it in for the handshakes that follow (connections
/// already up keep the one they were made with).
#[derive(Debug)]
pub struct ServerCertificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCertificate {
    /// Checks that `key` is the private key of the chain's first certificate.
    pub fn new(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ServerCertificate, TlsSetupError> {
        let certified =
            CertifiedKey::from_der(certs, key, &provider()).map_err(|e| TlsSetupError::Mismatch(e.to_string()))?;
        Ok(ServerCertificate { current: RwLock::new(Arc::new(certified)) })
    }

    /// Takes `other`'s chain and key if they differ from ours; whether they did.
    pub fn replace_with(&self, other: &ServerCertificate) -> bool {
        let new = other.current();
        let mut current = self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.cert == new.cert {
            return false;
        }
        *current = new;
        true
    }

    /// The leaf certificate presented now.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current().cert.first().cloned()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// How to open a TLS connection to one peer (a trunk): the client configuration (trust
/// anchors, verification) and the name its certificate must carry.
#[derive(Debug, Clone)]
pub struct TlsConnect {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// Why a TLS configuration could not be made; says which file is at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("the certificate and the private key do not match, or the key is unusable: {0}")]
    Mismatch(String),
    #[error("{path}: no usable CA certificate: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("{0}")]
    Rustls(String),
}

/// The crypto provider every configuration here uses (explicit, not the process default).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (a chain: leaf first).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let unreadable = |reason: String| TlsSetupError::Unreadable { path: path.to_path_buf(), reason };
    // Read first so that a missing file says so, not "no certificate".
    let bytes = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| unreadable(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate { path: path.to_path_buf() });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let bytes = std::fs::read(path)
        .map_err(|e| TlsSetupError::Unreadable { path: path.to_path_buf(), reason: e.to_string() })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsSetupError::NoKey { path: path.to_path_buf() })
}

/// A root store holding the CA certificates of a PEM file.
pub fn load_ca(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certificates(path)? {
        roots.add(cert).map_err(|e| TlsSetupError::BadCa { path: path.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(roots)
}

/// The system's trust store (`/etc/ssl/certs` and the like, as OpenSSL finds it). Unreadable
/// entries are skipped; an empty store makes every verification fail, which is logged.
pub fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(errors = found.errors.len(), "no system CA certificates found: TLS peers cannot be verified");
    }
    roots
}

/// The listener's configuration: our certificate; with `client_ca`, every client must present
/// a certificate issued by one of those CAs (mutual TLS).
pub fn server_config(
    certificate: Arc<ServerCertificate>,
    client_ca: Option<RootCertStore>,
) -> Result<ServerConfig, TlsSetupError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let builder = match client_ca {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsSetupError::Rustls(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_cert_resolver(certificate))
}

/// Whose certificate a client connection trusts.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Certificates chaining to these roots (the system's, or a trunk's `tls_ca`).
    Roots(RootCertStore),
    /// Any certificate at all: for labs only, an active attacker can read and change the
    /// signalling. The handshake's signatures are still checked.
    Unverified,
}

/// A client configuration for the connections we open.
pub fn client_config(trust: ServerTrust) -> Result<ClientConfig, TlsSetupError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let config = match trust {
        ServerTrust::Roots(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        ServerTrust::Unverified => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Accepts every server certificate (`tls_verify = false`) but still checks that the server
/// holds the key of the certificate it showed.
#[derive(Debug)]
struct AnyServerCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The name a server's certificate is checked against: a DNS name or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| TlsSetupError::Rustls(format!("`{host}` is not a server name: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn pem_problems_name_the_file_and_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("sb-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(matches!(load_certificates(&missing), Err(TlsSetupError::Unreadable { .. })));
        let empty = write(&dir, "empty.pem", "no pem here\n");
        assert!(matches!(load_certificates(&empty), Err(TlsSetupError::NoCertificate { .. })));
        assert!(matches!(load_private_key(&empty), Err(TlsSetupError::NoKey { .. })));

        let one = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(&dir, "cert.pem", &one.cert.pem());
        let key = write(&dir, "key.pem", &one.signing_key.serialize_pem());
        let wrong_key = write(&dir, "other-key.pem", &other.signing_key.serialize_pem());
        let certs = load_certificates(&cert).unwrap();
        let certificate = ServerCertificate::new(certs.clone(), load_private_key(&key).unwrap()).unwrap();
        assert!(server_config(Arc::new(certificate), None).is_ok());
        let mismatch = ServerCertificate::new(certs, load_private_key(&wrong_key).unwrap());
        assert!(matches!(mismatch, Err(TlsSetupError::Mismatch(_))), "{mismatch:?}");
        assert!(load_ca(&cert).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn server_names_are_dns_names_or_addresses() {
        assert!(matches!(server_name("pbx.example.com"), Ok(ServerName::DnsName(_))));
        assert!(matches!(server_name("192.0.2.7"), Ok(ServerName::IpAddress(_))));
        assert!(matches!(server_name("[2001:db8::1]"), Ok(ServerName::IpAddress(_))));
        assert!(server_name("not a name").is_err());
    }
}
