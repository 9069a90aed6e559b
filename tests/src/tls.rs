//! SIP over TLS in the end-to-end tests: certificates made at test time (a CA and a leaf for
//! `localhost` and 127.0.0.1), a baresip phone that speaks TLS, and a TLS relay so that SIPp,
//! which Debian builds without OpenSSL (`-t l1` is refused), can still reach or be reached over
//! TLS: SIPp speaks TCP to the relay, the relay speaks TLS to the gateway (or the other way).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::baresip::Phone;

/// PEM files of a test CA and a server certificate it issued for `localhost` and 127.0.0.1.
#[derive(Debug, Clone)]
pub struct TestCerts {
    /// The CA certificate (a trunk's `tls_ca`, baresip's `sip_cafile`).
    pub ca: PathBuf,
    /// The leaf certificate (`sip.tls_cert`).
    pub cert: PathBuf,
    /// Its private key (`sip.tls_key`).
    pub key: PathBuf,
    /// Certificate then key in one file (baresip's `sip_certificate`).
    pub cert_and_key: PathBuf,
}

impl TestCerts {
    /// Makes a CA and a leaf under `dir` (`tls-*.pem`).
    pub fn make(dir: &Path) -> TestCerts {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Switchboard test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA");
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("leaf params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        let leaf = params.signed_by(&key, &ca).expect("leaf");
        let certs = TestCerts {
            ca: dir.join("tls-ca.pem"),
            cert: dir.join("tls-cert.pem"),
            key: dir.join("tls-key.pem"),
            cert_and_key: dir.join("tls-cert-and-key.pem"),
        };
        std::fs::write(&certs.ca, ca.pem()).expect("write CA");
        std::fs::write(&certs.cert, leaf.pem()).expect("write cert");
        std::fs::write(&certs.key, key.serialize_pem()).expect("write key");
        std::fs::write(&certs.cert_and_key, format!("{}{}", leaf.pem(), key.serialize_pem())).expect("write pem");
        certs
    }

    /// The environment that makes a gateway listen on TLS at `addr` with these files
    /// (`SWITCHBOARD__SIP__TLS*`: the harness writes `[sip]` itself), for
    /// `Gateway::start_with_env`.
    pub fn gateway_env(&self, addr: SocketAddr) -> Vec<(String, String)> {
        vec![
            ("SWITCHBOARD__SIP__TLS".to_string(), addr.to_string()),
            ("SWITCHBOARD__SIP__TLS_CERT".to_string(), self.cert.display().to_string()),
            ("SWITCHBOARD__SIP__TLS_KEY".to_string(), self.key.display().to_string()),
        ]
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).expect("read CA") {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
        roots
    }
}

impl Phone<'_> {
    /// [`Phone::folder`] for a phone that speaks SIP over TLS: its account says
    /// `;transport=tls`, it trusts the test CA (`sip_cafile`) and presents the test certificate
    /// on its own TLS listener (`sip_certificate`, baresip listens for TLS on `sip_port + 1`).
    pub fn folder_tls(&self, dir: &Path, certs: &TestCerts) -> PathBuf {
        let conf = self.folder(dir);
        let config = conf.join("config");
        let mut text = std::fs::read_to_string(&config).expect("read baresip config");
        text.push_str(&format!(
            "sip_cafile {}\nsip_certificate {}\nsip_trans_def tls\n",
            certs.ca.display(),
            certs.cert_and_key.display()
        ));
        std::fs::write(&config, text).expect("write baresip config");
        let answer = if self.auto_answer { ";answermode=auto" } else { "" };
        std::fs::write(
            conf.join("accounts"),
            format!("<sip:{}@127.0.0.1:{};transport=tls>;regint=0{answer}\n", self.name, self.sip_port),
        )
        .expect("write baresip accounts");
        conf
    }
}

/// A TCP <-> TLS relay on loopback, one TLS connection per TCP connection, run on its own
/// runtime; stopped (every connection dropped) when dropped.
pub struct TlsRelay {
    runtime: Option<tokio::runtime::Runtime>,
    pub listen: SocketAddr,
}

impl TlsRelay {
    /// Plain TCP in on `listen`; TLS out to `target`, verifying its certificate against the test
    /// CA for the name `localhost` (SIPp as a caller of the gateway's TLS listener).
    pub fn tcp_to_tls(listen: SocketAddr, target: SocketAddr, certs: &TestCerts) -> TlsRelay {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(certs.roots())
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        Self::start(listen, move |inbound: tokio::net::TcpStream| {
            let connector = connector.clone();
            async move {
                let outbound = tokio::net::TcpStream::connect(target).await?;
                let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
                let mut tls = connector.connect(name, outbound).await?;
                let mut inbound = inbound;
                tokio::io::copy_bidirectional(&mut inbound, &mut tls).await.map(|_| ())
            }
        })
    }

    /// TLS in on `listen`, presenting the test certificate; plain TCP out to `target` (SIPp as
    /// the callee of a TLS trunk).
    pub fn tls_to_tcp(listen: SocketAddr, target: SocketAddr, certs: &TestCerts) -> TlsRelay {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&certs.cert).expect("read cert").collect::<Result<_, _>>().expect("cert PEM");
        let key = PrivateKeyDer::from_pem_file(&certs.key).expect("read key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start(listen, move |inbound: tokio::net::TcpStream| {
            let acceptor = acceptor.clone();
            async move {
                let mut tls = acceptor.accept(inbound).await?;
                let mut outbound = tokio::net::TcpStream::connect(target).await?;
                tokio::io::copy_bidirectional(&mut tls, &mut outbound).await.map(|_| ())
            }
        })
    }

    fn start<F, Fut>(listen: SocketAddr, relay: F) -> TlsRelay
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("relay runtime");
        let listener = runtime.block_on(tokio::net::TcpListener::bind(listen)).expect("bind the relay");
        runtime.spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let connection = relay(stream);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        eprintln!("TLS relay: connection from {peer} ended: {error}");
                    }
                });
            }
        });
        TlsRelay { runtime: Some(runtime), listen }
    }
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One TCP segment's payload from a capture.
#[derive(Debug, Clone)]
pub struct TcpPayload {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

/// The non-empty TCP payloads of a classic pcap file (IPv4; Ethernet or Linux cooked framing),
/// read independently of the gateway's code.
pub fn read_tcp_payloads(path: &Path) -> Vec<TcpPayload> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(data.len() >= 24, "pcap too short");
    let le = match u32::from_le_bytes([data[0], data[1], data[2], data[3]]) {
        0xa1b2c3d4 | 0xa1b23c4d => true,
        0xd4c3b2a1 | 0x4d3cb2a1 => false,
        other => panic!("not a classic pcap file (magic {other:#x}); capture with -F pcap"),
    };
    let u32_at = |b: &[u8], at: usize| {
        let bytes = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if le { u32::from_le_bytes(bytes) } else { u32::from_be_bytes(bytes) }
    };
    let link = u32_at(&data, 20);
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let caplen = u32_at(&data, at + 8) as usize;
        let start = at + 16;
        at = start + caplen;
        if at > data.len() {
            break;
        }
        let frame = &data[start..at];
        let ip = match link {
            1 if frame.len() > 14 && frame[12..14] == [0x08, 0x00] => &frame[14..],
            113 if frame.len() > 16 && frame[14..16] == [0x08, 0x00] => &frame[16..],
            _ => continue,
        };
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 6 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        if total < ihl + 20 {
            continue;
        }
        let tcp = &ip[ihl..total];
        let data_offset = usize::from(tcp[12] >> 4) * 4;
        let Some(payload) = tcp.get(data_offset..) else { continue };
        if payload.is_empty() {
            continue;
        }
        let addr = |ip_at: usize, port_at: usize| {
            SocketAddr::from((
                [ip[ip_at], ip[ip_at + 1], ip[ip_at + 2], ip[ip_at + 3]],
                u16::from_be_bytes([tcp[port_at], tcp[port_at + 1]]),
            ))
        };
        out.push(TcpPayload { src: addr(12, 0), dst: addr(16, 2), payload: payload.to_vec() });
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Whether a TLS handshake with `addr` succeeds for a client that trusts only `certs`'s CA and
/// expects the name `localhost` (what the gateway's listener presents, seen from outside).
pub fn handshake_trusting(addr: SocketAddr, certs: &TestCerts) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(certs.roots())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    runtime.block_on(async {
        let limit = std::time::Duration::from_secs(5);
        let tcp = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        tokio::time::timeout(limit, connector.connect(name, tcp))
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}
