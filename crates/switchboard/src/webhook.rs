//! One webhook request (a tool call, a CDR): a JSON POST over HTTP/1.1 (hyper's client
//! connection, one connection per request, no pool: webhooks are rare next to the audio),
//! `https://` through rustls with the webpki roots. The caller signs the body
//! ([`crate::signing`]) and bounds the whole exchange with its timeout.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The longest answer accepted as a tool's output: the model reads every byte of it.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// Why a webhook gave no usable answer (who is at fault: the URL's server, or the network).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("bad URL: {0}")]
    BadUrl(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the server answered HTTP {0}")]
    Status(u16),
    #[error("the answer is longer than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

/// POSTs `body` (JSON) to `url` with `headers`; the answer's body when the status is 2xx
/// ([`WebhookError::TooLarge`] only ever follows a 2xx).
pub async fn post_json(url: &str, body: Vec<u8>, headers: &[(&str, String)]) -> Result<Vec<u8>, WebhookError> {
    let uri: Uri = url.parse().map_err(|e| WebhookError::BadUrl(format!("{e}")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(WebhookError::BadUrl("must be http:// or https://".into())),
    };
    let host = uri.host().ok_or_else(|| WebhookError::BadUrl("no host".into()))?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri.authority().map_or_else(|| host.clone(), |a| a.as_str().to_owned());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    // Brackets off an IPv6 literal for the socket address.
    let connect_host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let tcp =
        TcpStream::connect((connect_host.as_str(), port)).await.map_err(|e| WebhookError::Connect(e.to_string()))?;
    let _ = tcp.set_nodelay(true);

    let mut request = Request::post(path)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .header(USER_AGENT, concat!("Switchboard/", env!("CARGO_PKG_VERSION")));
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|e| WebhookError::Http(e.to_string()))?;

    if https {
        let name = rustls::pki_types::ServerName::try_from(connect_host)
            .map_err(|e| WebhookError::BadUrl(format!("host: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| WebhookError::Tls(e.to_string()))?;
        exchange(TokioIo::new(tls), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await
    }
}

async fn exchange<T>(io: T, request: Request<Full<Bytes>>) -> Result<Vec<u8>, WebhookError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| WebhookError::Http(e.to_string()))?;
    // The connection is driven beside the request; it ends when the sender is dropped (or the
    // task running this is aborted with the call).
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| WebhookError::Http(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(WebhookError::Status(status.as_u16()));
        }
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| WebhookError::Http(e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                if bytes.len() + data.len() > MAX_RESPONSE_BYTES {
                    return Err(WebhookError::TooLarge);
                }
                bytes.extend_from_slice(data);
            }
        }
        Ok(bytes)
    }
    .await;
    driver.abort();
    result
}

/// One client configuration for every webhook (the roots are parsed once).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, WebhookError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(WebhookError::Tls)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A one-shot HTTP server answering `response` to the first request; returns its URL and the
    /// request it received.
    fn serve_once(response: Vec<u8>) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook?x=1", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the Content-Length body.
            loop {
                let n = stream.read(&mut buf).unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            // The client may stop reading a body it finds too long.
            let _ = stream.write_all(&response);
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, handle)
    }

    fn http(status: &str, body: &str) -> Vec<u8> {
        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
    }

    #[tokio::test]
    async fn a_2xx_body_is_the_answer_and_the_request_carries_json_and_headers() {
        let (url, server) = serve_once(http("200 OK", r#"{"ok":true}"#));
        let answer = post_json(&url, br#"{"a":1}"#.to_vec(), &[("X-Test", "yes".into())]).await;
        assert_eq!(answer, Ok(br#"{"ok":true}"#.to_vec()));
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{request}");
        let lower = request.to_ascii_lowercase();
        assert!(lower.contains("content-type: application/json"));
        assert!(lower.contains("x-test: yes"));
        assert!(request.ends_with(r#"{"a":1}"#));
    }

    #[tokio::test]
    async fn a_non_2xx_status_or_a_long_body_is_an_error() {
        let (url, server) = serve_once(http("503 Service Unavailable", "busy"));
        assert_eq!(post_json(&url, b"{}".to_vec(), &[]).await, Err(WebhookError::Status(503)));
        server.join().unwrap();
        let (url, server) = serve_once(http("200 OK", &"x".repeat(MAX_RESPONSE_BYTES + 1)));
        assert_eq!(post_json(&url, b"{}".to_vec(), &[]).await, Err(WebhookError::TooLarge));
        server.join().unwrap();
    }

    #[tokio::test]
    async fn nobody_listening_or_a_bad_url_is_an_error() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let refused = post_json(&format!("http://127.0.0.1:{port}/"), b"{}".to_vec(), &[]).await;
        assert!(matches!(refused, Err(WebhookError::Connect(_))), "{refused:?}");
        let bad = post_json("ftp://example.com/", b"{}".to_vec(), &[]).await;
        assert!(matches!(bad, Err(WebhookError::BadUrl(_))), "{bad:?}");
    }
}
