//! The tools' side of TLS: `--ca`, `--cert` and `--key` (before or after the
//! subcommand) make `kv`, `ctl` and `bench` connect over TLS with that certificate, as
//! tikv-client's `Config::with_security` does, and `server` serve with them. Loaded and
//! checked once, by the server's own rules (docs/security.md).

use scandium_server::tls::{SecurityConfig, Tls};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tonic::transport::Channel;

/// The TLS flags every subcommand takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM file of the CA that certificates must chain to. With --cert and --key (all
    /// three or none): a server serves TLS only and asks every connection for a
    /// certificate; the tools connect over TLS (`ca-path` in a node's TOML `[security]`).
    #[arg(long = "ca", id = "tls_ca", global = true)]
    pub ca: Option<PathBuf>,
    /// PEM file of this node's or client's certificate (`cert-path`).
    #[arg(long = "cert", id = "tls_cert", global = true)]
    pub cert: Option<PathBuf>,
    /// PEM file of its private key (`key-path`).
    #[arg(long = "key", id = "tls_key", global = true)]
    pub key: Option<PathBuf>,
}

impl TlsArgs {
    /// As a node's `[security]` settings.
    pub fn security(&self) -> SecurityConfig {
        SecurityConfig {
            ca_path: self.ca.clone(),
            cert_path: self.cert.clone(),
            key_path: self.key.clone(),
            ..SecurityConfig::default()
        }
    }
}

/// The tools' TLS material, if they connect over TLS: the three files (tikv-client
/// reads them itself) and what they hold, checked.
struct ClientTls {
    files: (PathBuf, PathBuf, PathBuf),
    tls: Arc<Tls>,
}

static CLIENT_TLS: OnceLock<Option<ClientTls>> = OnceLock::new();

/// Loads the tools' TLS material from `args` (nothing if no flag is given).
pub fn init(args: &TlsArgs) -> Result<(), String> {
    let security = args.security();
    let tls = Tls::load(&security).map_err(|e| e.to_string())?;
    let tls = tls.and_then(|tls| {
        let (ca, cert, key) = security.paths().ok()??;
        Some(ClientTls { files: (ca.into(), cert.into(), key.into()), tls })
    });
    let _ = CLIENT_TLS.set(tls);
    Ok(())
}

fn client_tls() -> Option<&'static ClientTls> {
    CLIENT_TLS.get().and_then(Option::as_ref)
}

/// `https` with TLS, else `http`.
pub fn scheme() -> &'static str {
    if client_tls().is_some() {
        "https"
    } else {
        "http"
    }
}

/// `address` without any `http://` or `https://` in front.
pub fn bare(address: &str) -> &str {
    address.trim_start_matches("http://").trim_start_matches("https://")
}

/// tikv-client's settings, with the certificate if the tools use TLS.
pub fn tikv_config(config: tikv_client::Config) -> tikv_client::Config {
    match client_tls() {
        Some(ClientTls { files: (ca, cert, key), .. }) => config.with_security(ca, cert, key),
        None => config,
    }
}

/// A gRPC connection to the node at `address` (over TLS if the tools use it).
pub async fn channel(address: &str) -> Result<Channel, String> {
    let address = bare(address);
    let mut endpoint = Channel::from_shared(format!("{}://{address}", scheme()))
        .map_err(|e| format!("bad address {address}: {e}"))?;
    if let Some(tls) = client_tls() {
        endpoint = endpoint.tls_config(tls.tls.client_config()).map_err(|e| e.to_string())?;
    }
    endpoint.connect().await.map_err(|e| format!("cannot connect to {address}: {e}"))
}

/// GETs `path` from the node at `address` (over TLS if the tools use it) and parses the
/// body as JSON; `None` on any failure.
pub async fn get_json(address: &str, path: &str) -> Option<serde_json::Value> {
    serde_json::from_slice(&get(address, path).await?).ok()
}

/// The same, the body as text.
pub async fn get_text(address: &str, path: &str) -> Option<String> {
    String::from_utf8(get(address, path).await?.to_vec()).ok()
}

/// GETs `path` from the node at `address`: the body, `None` on any failure.
async fn get(address: &str, path: &str) -> Option<hyper::body::Bytes> {
    let address = bare(address).trim_end_matches('/');
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, address)
        .body(hyper::Body::empty())
        .ok()?;
    let tcp = tokio::net::TcpStream::connect(address).await.ok()?;
    let response = match client_tls() {
        Some(tls) => {
            let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
            let name = tokio_rustls::rustls::ServerName::try_from(host).ok()?;
            let stream = tls.tls.http_connector().connect(name, tcp).await.ok()?;
            send(stream, request).await?
        }
        None => send(tcp, request).await?,
    };
    hyper::body::to_bytes(response.into_body()).await.ok()
}

/// One HTTP/1.1 request on `stream`.
async fn send<S>(
    stream: S,
    request: hyper::Request<hyper::Body>,
) -> Option<hyper::Response<hyper::Body>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::handshake(stream).await.ok()?;
    tokio::spawn(connection);
    sender.send_request(request).await.ok()
}
