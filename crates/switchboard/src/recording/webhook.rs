//! CDRs to `cdr.webhook_url`: a durable spool on disk and one async poster.
//!
//! The writer thread puts each CDR in `<spool>/webhook/` as a file named so that names sort in
//! the order the calls ended. The poster sends the oldest first, signed like tool webhooks
//! (`X-Switchboard-Timestamp`, `X-Switchboard-Signature`, [`crate::signing`]), deletes it on a
//! 2xx, and on anything else waits (backoff doubling from `cdr.retry_initial_ms` to
//! `cdr.retry_max_ms`) and tries again. The spool outlives the process: what was not sent is
//! sent after the next start. It is bounded by `cdr.spool_max_files` (beyond it new CDRs are
//! not queued for the webhook, and counted; the CDR file still has them).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::config::CdrConfig;
use crate::telemetry;

/// `<unix ms>-<sequence>-<call id>.json`: sorts in the order the CDRs were spooled.
pub fn spool_name(id: &str) -> String {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed) % 1_000_000;
    format!("{now:013}-{sequence:06}-{}.json", super::safe_file_name(id))
}

fn spooled_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    files.sort();
    files
}

/// CDRs waiting in the spool (at start-up).
pub fn count_spooled(dir: &Path) -> usize {
    spooled_files(dir).len()
}

/// The task that empties the spool.
pub struct Poster {
    notify: Arc<Notify>,
    stop: watch::Sender<bool>,
}

struct Target {
    url: String,
    secret: Vec<u8>,
    timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
}

impl Poster {
    /// Starts the poster (inside the runtime); it sends what an earlier run left at once.
    pub fn start(cdr: &CdrConfig, dir: PathBuf, spooled: Arc<AtomicUsize>) -> Poster {
        let notify = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let target = Target {
            url: cdr.webhook_url.clone(),
            secret: cdr.secret.expose().as_bytes().to_vec(),
            timeout: Duration::from_millis(cdr.webhook_timeout_ms),
            retry_initial: Duration::from_millis(cdr.retry_initial_ms),
            retry_max: Duration::from_millis(cdr.retry_max_ms),
        };
        tokio::spawn(run(target, dir, spooled, Arc::clone(&notify), stopped));
        Poster { notify, stop }
    }

    /// What the writer thread wakes the poster with.
    pub fn notify(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }

    /// Stops after the POST in flight (what is left stays spooled for the next start).
    pub fn stop(&self, _grace: Duration) {
        self.stop.send_replace(true);
    }
}

async fn run(
    target: Target,
    dir: PathBuf,
    spooled: Arc<AtomicUsize>,
    notify: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = target.retry_initial;
    loop {
        if *stop.borrow() {
            return;
        }
        let files = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || spooled_files(&dir)).await.unwrap_or_default()
        };
        if files.is_empty() {
            tokio::select! {
                () = notify.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
                // A file put there by hand (or missed) is found again within a minute.
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            continue;
        }
        for file in files {
            if *stop.borrow() {
                return;
            }
            let Ok(body) = tokio::fs::read(&file).await else { continue };
            match send(&target, body).await {
                Ok(()) => {
                    metrics::counter!(telemetry::CDR_WEBHOOK_POSTS_TOTAL, "result" => "ok").increment(1);
                    if tokio::fs::remove_file(&file).await.is_ok() {
                        let _ =
                            spooled.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n.saturating_sub(1)));
                    }
                    backoff = target.retry_initial;
                }
                Err(why) => {
                    metrics::counter!(telemetry::CDR_WEBHOOK_POSTS_TOTAL, "result" => "failed").increment(1);
                    warn!(error = %why, retry_in_ms = backoff.as_millis() as u64, spooled = spooled.load(Ordering::Acquire), "CDR webhook failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(target.retry_max);
                    break;
                }
            }
        }
    }
}

async fn send(target: &Target, body: Vec<u8>) -> Result<(), String> {
    let timestamp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let headers: Vec<(&str, String)> = if target.secret.is_empty() {
        Vec::new()
    } else {
        crate::signing::headers(&target.secret, timestamp, &body).into_iter().collect()
    };
    match tokio::time::timeout(target.timeout, post(&target.url, body, &headers)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", target.timeout.as_millis())),
    }
}

/// One JSON POST over HTTP/1.1 (hyper's client connection, one connection per request: CDRs
/// are one per call); `https://` through rustls with the webpki roots. Ok on a 2xx.
async fn post(url: &str, body: Vec<u8>, headers: &[(&str, String)]) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("the URL must be http:// or https://".into()),
    };
    let host = uri.host().ok_or("no host in the URL")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri.authority().map_or_else(|| host.clone(), |a| a.as_str().to_owned());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let connect_host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let tcp = TcpStream::connect((connect_host.as_str(), port)).await.map_err(|e| format!("connect: {e}"))?;
    let mut request = Request::post(path)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .header(USER_AGENT, concat!("Switchboard/", env!("CARGO_PKG_VERSION")));
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| e.to_string())?;
    let status = if https {
        let name = rustls::pki_types::ServerName::try_from(connect_host).map_err(|e| format!("host: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(TokioIo::new(tls), request).await?
    } else {
        exchange(TokioIo::new(tcp), request).await?
    };
    if (200..300).contains(&status) {
        debug!(status, "CDR posted");
        Ok(())
    } else {
        Err(format!("the server answered HTTP {status}"))
    }
}

async fn exchange<T>(io: T, request: Request<Full<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        // The answer's body is not used; read (bounded by the caller's timeout) and dropped.
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| e.to_string())?;
        }
        Ok(status)
    }
    .await;
    driver.abort();
    result
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::Secret;

    /// One HTTP request read off `stream` (headers and the Content-Length body), answered `status`.
    async fn answer(stream: &mut TcpStream, status: u16) -> (String, Vec<u8>) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head, body_start, length) = loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before a whole request");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0usize);
                break (head, end + 4, length);
            }
        };
        while buf.len() < body_start + length {
            let n = stream.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        stream.write_all(reply.as_bytes()).await.unwrap();
        (head, buf[body_start..body_start + length].to_vec())
    }

    #[tokio::test]
    async fn spooled_cdrs_are_posted_signed_oldest_first_and_kept_until_a_2xx() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("webhook");
        std::fs::create_dir_all(&spool).unwrap();
        // Left by an earlier run: sent first.
        std::fs::write(spool.join("0000000000001-000000-old.json"), br#"{"call_id":"old"}"#).unwrap();
        let cdr = CdrConfig {
            webhook_url: format!("http://{addr}/cdr"),
            secret: Secret::new("s3cret"),
            retry_initial_ms: 50,
            retry_max_ms: 100,
            ..CdrConfig::default()
        };
        let spooled = Arc::new(AtomicUsize::new(count_spooled(&spool)));
        let poster = Poster::start(&cdr, spool.clone(), Arc::clone(&spooled));

        // The first attempt fails (503): the file stays and is retried after the backoff.
        let (mut stream, _) = listener.accept().await.unwrap();
        let (head, body) = answer(&mut stream, 503).await;
        assert!(head.starts_with("POST /cdr HTTP/1.1"), "{head}");
        assert_eq!(body, br#"{"call_id":"old"}"#);
        assert_eq!(count_spooled(&spool), 1, "kept after a failure");

        let (mut stream, _) = listener.accept().await.unwrap();
        let (head, body) = answer(&mut stream, 200).await;
        let header = |name: &str| {
            head.lines()
                .find_map(|l| {
                    l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
                })
                .unwrap()
        };
        let timestamp: u64 = header(crate::signing::TIMESTAMP_HEADER).parse().unwrap();
        assert!(crate::signing::verify(b"s3cret", timestamp, &body, &header(crate::signing::SIGNATURE_HEADER)));
        assert_eq!(body, br#"{"call_id":"old"}"#, "the retry sends the same CDR");

        // A new CDR spooled and announced: sent at once, then the spool is empty.
        std::fs::write(spool.join(spool_name("new")), br#"{"call_id":"new"}"#).unwrap();
        spooled.fetch_add(1, Ordering::AcqRel);
        poster.notify().notify_one();
        let (mut stream, _) = listener.accept().await.unwrap();
        let (_, body) = answer(&mut stream, 204).await;
        assert_eq!(body, br#"{"call_id":"new"}"#);
        for _ in 0..100 {
            if count_spooled(&spool) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count_spooled(&spool), 0, "deleted after a 2xx");
        assert_eq!(spooled.load(Ordering::Acquire), 0);
        poster.stop(Duration::ZERO);
    }
}
