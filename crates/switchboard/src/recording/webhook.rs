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

use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use crate::config::CdrConfig;
use crate::telemetry;
use crate::webhook::WebhookError;

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

/// One signed POST through the gateway's webhook client ([`crate::webhook`]). Delivered on a
/// 2xx; the answer's body is not used (one longer than the client reads is still a 2xx).
async fn post(url: &str, body: Vec<u8>, headers: &[(&str, String)]) -> Result<(), String> {
    match crate::webhook::post_json(url, body, headers).await {
        Ok(_) | Err(WebhookError::TooLarge) => {
            debug!("CDR posted");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

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
        // Deleted by the poster's own task after the answer: wait for it (10 s only bounds a
        // hang; a loaded CI machine once needed more than the 1 s this used to allow).
        for _ in 0..1000 {
            if count_spooled(&spool) == 0 && spooled.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count_spooled(&spool), 0, "deleted after a 2xx");
        assert_eq!(spooled.load(Ordering::Acquire), 0);
        poster.stop(Duration::ZERO);
    }
}
