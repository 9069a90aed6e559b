//! One webhook request: a JSON POST over HTTP/1.1 (hyper's client connection, one connection
//! per request, no pool: tool calls are rare next to the audio), `https://` through rustls
//! with the webpki roots. The caller bounds the whole exchange with the tool's timeout.

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

/// POSTs `body` (JSON) to `url` with `headers`; the answer's body when the status is 2xx.
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
        if !status.is_success() {
            return Err(WebhookError::Status(status.as_u16()));
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
