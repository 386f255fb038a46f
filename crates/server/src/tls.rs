//! TLS on the one port: the node's certificate and key, and the CA that every peer's
//! certificate must chain to (docs/security.md).
//!
//! With TLS on, a node serves gRPC and HTTP over TLS only, offering ALPN `h2` (which
//! tikv-client requires the server to select) and `http/1.1` (browsers, curl), and asks
//! every connection for a client certificate from the CA: TiKV and PD require one on
//! every connection too, and tikv-client always sends one. Nodes dial each other with
//! the same certificate, so a node certificate carries both `serverAuth` and
//! `clientAuth`, and a SAN for every address anyone dials.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Where a node's TLS material is (TiKV's `[security]` names; `cacert-path` as PD
/// spells it). All three or none.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// PEM file of the CA certificates that peers' and clients' certificates must chain to.
    #[serde(rename = "ca-path", alias = "cacert-path")]
    pub ca_path: Option<PathBuf>,
    /// PEM file of this node's certificate (and any intermediates after it).
    #[serde(rename = "cert-path")]
    pub cert_path: Option<PathBuf>,
    /// PEM file of this node's private key (PKCS#8, PKCS#1 or SEC1, unencrypted).
    #[serde(rename = "key-path")]
    pub key_path: Option<PathBuf>,
    /// Milliseconds between looks at the three files: changed contents are loaded,
    /// checked and put in use for new connections, without a restart (0: never).
    #[serde(rename = "reload-interval-ms")]
    pub reload_interval_ms: u64,
    /// Milliseconds a connection may take to finish its TLS handshake: one that connects
    /// and says nothing holds a socket and a task this long at most.
    #[serde(rename = "handshake-timeout-ms")]
    pub handshake_timeout_ms: u64,
    /// Common names of node certificates (exact match): only they may join, send Raft
    /// messages and snapshots, and call the inter-node service. `scandium cert
    /// create-node` names its certificates `node`.
    #[serde(rename = "node-cn")]
    pub node_cn: Vec<String>,
    /// Common names of the client certificates allowed (exact match; TiKV's name, not its
    /// substring match); empty: any client certificate from the CA.
    #[serde(rename = "cert-allowed-cn")]
    pub cert_allowed_cn: Vec<String>,
    /// Common names of the clients allowed cluster operations through `scandium ctl`
    /// (leader transfers, store removal, scheduler settings).
    #[serde(rename = "admin-cn")]
    pub admin_cn: Vec<String>,
    /// User keys in log lines and error messages: `false` as they are, `true` as `?`,
    /// `"marker"` between `‹` and `›` (TiKV's setting).
    #[serde(rename = "redact-info-log")]
    pub redact_info_log: crate::redact::Redact,
    /// Serve `GET /metrics` to connections without a client certificate (a Prometheus
    /// that has none); everything else still needs one.
    #[serde(rename = "metrics-without-client-cert")]
    pub metrics_without_client_cert: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            ca_path: None,
            cert_path: None,
            key_path: None,
            reload_interval_ms: 5_000,
            handshake_timeout_ms: 10_000,
            node_cn: vec!["node".into()],
            cert_allowed_cn: Vec::new(),
            admin_cn: vec!["root".into()],
            redact_info_log: crate::redact::Redact::Off,
            metrics_without_client_cert: false,
        }
    }
}

impl SecurityConfig {
    /// The three paths, if TLS is on; an error naming what is missing if only some are
    /// set (a node that quietly served plaintext would be worse than one that stops).
    pub fn paths(&self) -> Result<Option<(&Path, &Path, &Path)>, String> {
        if let (Some(ca), Some(cert), Some(key)) = (&self.ca_path, &self.cert_path, &self.key_path)
        {
            return Ok(Some((ca, cert, key)));
        }
        let named = [("ca-path", &self.ca_path), ("cert-path", &self.cert_path)];
        let missing: Vec<&str> = (named.into_iter().chain([("key-path", &self.key_path)]))
            .filter(|(_, path)| path.is_none())
            .map(|(name, _)| name)
            .collect();
        if missing.len() == 3 {
            return Ok(None);
        }
        Err(format!(
            "ca-path, cert-path and key-path (--ca, --cert, --key) must be set together, or \
             none for plaintext; {} missing",
            missing.join(" and ")
        ))
    }
}

/// TLS material that cannot be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file it is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds nothing usable.
    #[error("{what} {path}: {reason}")]
    Invalid {
        /// Which file it is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A node's TLS material, loaded and checked: what its listener accepts with and what it
/// dials other nodes with.
pub struct Tls {
    /// The three files' contents, hashed: what a reload compares.
    files: u64,
    /// When this node's certificate and the CA file's first-expiring certificate expire
    /// (seconds since the Unix epoch).
    cert_expires: i64,
    ca_expires: i64,
    server: Arc<rustls::ServerConfig>,
    /// For HTTP/1.1 over TLS (the tools' HTTP calls).
    http_client: Arc<rustls::ClientConfig>,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })
}

fn pem_items(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<rustls_pemfile::Item>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid { what, path: path.to_owned(), reason };
    rustls_pemfile::read_all(&mut BufReader::new(pem)).map_err(|e| invalid(format!("not PEM: {e}")))
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<rustls::Certificate>, TlsError> {
    let certs: Vec<rustls::Certificate> = pem_items(what, path, pem)?
        .into_iter()
        .filter_map(|item| match item {
            rustls_pemfile::Item::X509Certificate(der) => Some(rustls::Certificate(der)),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        let reason = "holds no certificate (a PEM \"CERTIFICATE\" block)".to_string();
        return Err(TlsError::Invalid { what, path: path.to_owned(), reason });
    }
    Ok(certs)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<rustls::PrivateKey, TlsError> {
    let what = "key file";
    let mut keys = pem_items(what, path, pem)?.into_iter().filter_map(|item| match item {
        rustls_pemfile::Item::PKCS8Key(der)
        | rustls_pemfile::Item::RSAKey(der)
        | rustls_pemfile::Item::ECKey(der) => Some(rustls::PrivateKey(der)),
        _ => None,
    });
    let key = keys.next().ok_or_else(|| TlsError::Invalid {
        what,
        path: path.to_owned(),
        reason: "holds no unencrypted private key (PKCS#8, PKCS#1 or SEC1)".into(),
    })?;
    if keys.next().is_some() {
        let reason = "holds more than one private key".to_string();
        return Err(TlsError::Invalid { what, path: path.to_owned(), reason });
    }
    Ok(key)
}

/// Whether `key` is the private key of `cert`: a signature made with it verifies with
/// the certificate's public key. rustls takes a key that does not fit and fails every
/// handshake later; a node must refuse it at start (and a reload must keep the old one).
fn key_fits(cert: &rustls::Certificate, key: &rustls::PrivateKey) -> Result<(), String> {
    use rustls::SignatureScheme as Scheme;
    let signing = rustls::sign::any_supported_type(key)
        .map_err(|_| "is not a key type TLS can use (ECDSA P-256/P-384, Ed25519, RSA)")?;
    let schemes = [
        Scheme::ECDSA_NISTP256_SHA256,
        Scheme::ECDSA_NISTP384_SHA384,
        Scheme::ED25519,
        Scheme::RSA_PSS_SHA256,
        Scheme::RSA_PKCS1_SHA256,
    ];
    let signer = signing.choose_scheme(&schemes).ok_or("signs with no scheme TLS offers")?;
    let algorithm = match signer.scheme() {
        Scheme::ECDSA_NISTP256_SHA256 => &webpki::ECDSA_P256_SHA256,
        Scheme::ECDSA_NISTP384_SHA384 => &webpki::ECDSA_P384_SHA384,
        Scheme::ED25519 => &webpki::ED25519,
        Scheme::RSA_PSS_SHA256 => &webpki::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        _ => &webpki::RSA_PKCS1_2048_8192_SHA256,
    };
    let message = b"does this key fit its certificate?";
    let signature = signer.sign(message).map_err(|e| format!("cannot sign: {e}"))?;
    let cert = webpki::EndEntityCert::try_from(cert.0.as_slice())
        .map_err(|e| format!("the certificate cannot be parsed: {e:?}"))?;
    cert.verify_signature(algorithm, message, &signature)
        .map_err(|_| "does not fit the certificate".to_string())
}

/// When `cert` expires (seconds since the Unix epoch); an error if it is not valid now
/// (expired, or not yet valid: a clock far behind, or a certificate made for later).
fn expiry(what: &'static str, path: &Path, cert: &rustls::Certificate) -> Result<i64, TlsError> {
    let invalid = |reason: String| TlsError::Invalid { what, path: path.to_owned(), reason };
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert.0)
        .map_err(|e| invalid(format!("a certificate that cannot be parsed: {e}")))?;
    let validity = parsed.validity();
    if !validity.is_valid() {
        return Err(invalid(format!(
            "a certificate valid only from {} to {}, not now",
            validity.not_before, validity.not_after
        )));
    }
    Ok(validity.not_after.timestamp())
}

/// Whether `chain` (a certificate and its intermediates) chains to one of `cas`, as a
/// client certificate: a peer checks it so, and a certificate from another CA would fail
/// every handshake (a reload must refuse it).
fn chains_to(chain: &[rustls::Certificate], cas: &[rustls::Certificate]) -> Result<(), String> {
    let anchors: Vec<webpki::TrustAnchor> =
        cas.iter().filter_map(|ca| webpki::TrustAnchor::try_from_cert_der(&ca.0).ok()).collect();
    let intermediates: Vec<&[u8]> = chain[1..].iter().map(|c| c.0.as_slice()).collect();
    let cert = webpki::EndEntityCert::try_from(chain[0].0.as_slice())
        .map_err(|e| format!("the certificate cannot be parsed: {e:?}"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let now = webpki::Time::from_seconds_since_unix_epoch(now.map_or(0, |d| d.as_secs()));
    let algorithms = [
        &webpki::ECDSA_P256_SHA256,
        &webpki::ECDSA_P256_SHA384,
        &webpki::ECDSA_P384_SHA256,
        &webpki::ECDSA_P384_SHA384,
        &webpki::ED25519,
        &webpki::RSA_PKCS1_2048_8192_SHA256,
        &webpki::RSA_PKCS1_2048_8192_SHA384,
        &webpki::RSA_PKCS1_2048_8192_SHA512,
        &webpki::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        &webpki::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        &webpki::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    ];
    let usage = webpki::KeyUsage::client_auth();
    cert.verify_for_usage(&algorithms, &anchors, &intermediates, now, usage, &[])
        .map_err(|e| format!("is not signed by the CA, or not for client use: {e:?}"))
}

fn hash_files(files: &Files) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut hasher);
    hasher.finish()
}

/// The three files' paths: CA, certificate, key.
type Paths<'a> = (&'a Path, &'a Path, &'a Path);

/// The three files' contents, in the order of [`Paths`].
type Files = (Vec<u8>, Vec<u8>, Vec<u8>);

fn read_files((ca, cert, key): Paths<'_>) -> Result<Files, TlsError> {
    Ok((read("CA file", ca)?, read("certificate file", cert)?, read("key file", key)?))
}

impl Tls {
    /// Loads and checks the material `config` names: `None` if TLS is off.
    pub fn load(config: &SecurityConfig) -> Result<Option<Arc<Tls>>, TlsError> {
        let Some(paths) = config.paths().map_err(|reason| TlsError::Invalid {
            what: "security settings",
            path: PathBuf::new(),
            reason,
        })?
        else {
            return Ok(None);
        };
        let files = read_files(paths)?;
        Tls::from_files(config, paths, files).map(Some)
    }

    /// Checks `files`, read from `paths`, and builds what serves and dials with them.
    fn from_files(
        config: &SecurityConfig,
        (ca_path, cert_path, key_path): Paths<'_>,
        files: Files,
    ) -> Result<Arc<Tls>, TlsError> {
        let hash = hash_files(&files);
        let (ca_pem, cert_pem, key_pem) = files;
        let cas = certificates("CA file", ca_path, &ca_pem)?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in &cas {
            roots.add(ca).map_err(|e| TlsError::Invalid {
                what: "CA file",
                path: ca_path.to_owned(),
                reason: format!("a certificate that cannot be a trust anchor: {e}"),
            })?;
        }
        let chain = certificates("certificate file", cert_path, &cert_pem)?;
        let key = private_key(key_path, &key_pem)?;
        let (cert_expires, ca_expires) = (
            expiry("certificate file", cert_path, &chain[0])?,
            (cas.iter().map(|ca| expiry("CA file", ca_path, ca)))
                .try_fold(i64::MAX, |soonest, expires| Ok(soonest.min(expires?)))?,
        );
        chains_to(&chain, &cas).map_err(|reason| TlsError::Invalid {
            what: "certificate file",
            path: cert_path.to_owned(),
            reason: format!("{reason} (the CA file {})", ca_path.display()),
        })?;
        key_fits(&chain[0], &key).map_err(|reason| TlsError::Invalid {
            what: "key file",
            path: key_path.to_owned(),
            reason: format!("{reason} (the certificate in {})", cert_path.display()),
        })?;
        let mut http_client = rustls::ClientConfig::builder()
            .with_safe_defaults()
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key.clone())
            .map_err(|e| TlsError::Invalid {
                what: "key file",
                path: key_path.to_owned(),
                reason: format!("cannot be a client with {}: {e}", cert_path.display()),
            })?;
        http_client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let verifier = match config.metrics_without_client_cert {
            true => rustls::server::AllowAnyAnonymousOrAuthenticatedClient::new(roots).boxed(),
            false => rustls::server::AllowAnyAuthenticatedClient::new(roots).boxed(),
        };
        let mut server = rustls::ServerConfig::builder()
            .with_safe_defaults()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Invalid {
                what: "key file",
                path: key_path.to_owned(),
                reason: format!("cannot serve with {}: {e}", cert_path.display()),
            })?;
        // `h2` first: gRPC clients abort unless the server selects it.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let (server, http_client) = (Arc::new(server), Arc::new(http_client));
        Ok(Arc::new(Tls {
            files: hash,
            cert_expires,
            ca_expires,
            server,
            http_client,
            ca_pem,
            cert_pem,
            key_pem,
        }))
    }

    /// What the listener accepts connections with.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    /// What HTTP/1.1 calls over TLS connect with (the tools' `GET`s of `/health` and
    /// the PD HTTP API), presenting the same certificate.
    pub fn http_connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.http_client.clone())
    }

    /// What this node dials other nodes with: their certificates must chain to the CA
    /// and name the address dialled; this node presents its own.
    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// Who is at the other end of a TLS connection, by the certificate it presented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's common name.
    pub name: String,
    /// A node certificate (its name is in `node-cn`).
    pub node: bool,
    /// The certificate's DNS and IP subject alternative names, as text.
    pub hosts: Vec<String>,
    /// Whether it presented a certificate at all (without one, with
    /// `metrics-without-client-cert`, only `GET /metrics` is served).
    pub certified: bool,
}

impl PeerIdentity {
    /// The identity of the certificate chain a peer presented (its first certificate);
    /// an error if it has none or its name cannot be trusted to compare (not UTF-8, or
    /// holding a NUL: such a name has been used to pass substring and C-string checks).
    pub fn of(
        certs: Option<&[rustls::Certificate]>,
        config: &SecurityConfig,
    ) -> Result<PeerIdentity, String> {
        let Some(cert) = certs.and_then(|c| c.first()) else {
            if config.metrics_without_client_cert {
                let anonymous = PeerIdentity {
                    name: String::new(),
                    node: false,
                    hosts: Vec::new(),
                    certified: false,
                };
                return Ok(anonymous);
            }
            return Err("no client certificate".into());
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert.0)
            .map_err(|e| format!("a certificate that cannot be parsed: {e}"))?;
        let mut names = parsed.subject().iter_common_name();
        let name = match (names.next().map(|n| n.as_str()), names.next()) {
            (Some(Ok(name)), None) if !name.contains('\0') => name.to_string(),
            (None, _) => String::new(),
            _ => return Err("a certificate whose common name cannot be compared".into()),
        };
        let mut hosts = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for general in &san.value.general_names {
                match general {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        hosts.push(dns.to_string())
                    }
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).map(std::net::IpAddr::from).ok(),
                            16 => <[u8; 16]>::try_from(*bytes).map(std::net::IpAddr::from).ok(),
                            _ => None,
                        };
                        hosts.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        let node = config.node_cn.contains(&name);
        Ok(PeerIdentity { name, node, hosts, certified: true })
    }

    /// Whether this certificate names the host of `address` (`HOST:PORT`): a node
    /// speaks for the store at an address only with a certificate for that address.
    pub fn covers(&self, address: &str) -> bool {
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

/// HTTP paths for nodes and admins only: those that show user keys (Region boundaries,
/// replicas' digests), and the grants.
const SHOWS_KEYS: [&str; 4] =
    ["/pd/api/v1/regions", "/api/v1/regions", "/debug/", "/api/v1/grants"];

/// Methods of the inter-node service an admin client may call (`scandium ctl`); every
/// other one is for nodes only.
const ADMIN_METHODS: [&str; 3] = ["TransferLeader", "ProposeMeta", "Operators"];

/// May `identity` call `path` (`/package.Service/Method`, or an HTTP path)? Checked
/// for every request before its handler runs; a refusal names the identity and the
/// call (gRPC `UNAUTHENTICATED` for a name not allowed at all, `PERMISSION_DENIED` for
/// a call not allowed to it).
pub fn check_call(
    config: &SecurityConfig,
    identity: &PeerIdentity,
    admin: impl FnOnce() -> bool,
    path: &str,
) -> Result<(), Box<tonic::Status>> {
    if identity.node {
        return Ok(());
    }
    if !identity.certified {
        return match path {
            "/metrics" => Ok(()),
            _ => Err(Box::new(tonic::Status::unauthenticated(format!(
                "{path} needs a client certificate (only /metrics is served without one)"
            )))),
        };
    }
    let allowed = &config.cert_allowed_cn;
    if !allowed.is_empty() && !allowed.contains(&identity.name) {
        return Err(Box::new(tonic::Status::unauthenticated(format!(
            "client certificate {:?} is not in cert-allowed-cn",
            identity.name
        ))));
    }
    let admin = admin();
    if !admin && SHOWS_KEYS.iter().any(|prefix| path.starts_with(prefix)) {
        return Err(Box::new(tonic::Status::permission_denied(format!(
            "client {:?} may not read {path}: it shows user keys or grants, for admins \
             only",
            identity.name
        ))));
    }
    if let Some(method) = path.strip_prefix("/scandium.Cluster/") {
        if !(admin && ADMIN_METHODS.contains(&method)) {
            return Err(Box::new(tonic::Status::permission_denied(format!(
                "client {:?} may not call scandium.Cluster/{method}: only nodes (node-cn) \
                 may, and admins (admin-cn) only {}",
                identity.name,
                ADMIN_METHODS.join(", ")
            ))));
        }
    }
    Ok(())
}

/// What a look at the TLS files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files hold what is in use (or what was refused last time).
    Unchanged,
    /// New material passed every check and is in use for new connections.
    Reloaded,
    /// New material failed a check; the old stays in use.
    Refused(String),
}

/// A node's TLS material, re-read when its files change (see [`Reloadable::reload`]).
/// New connections, accepted and dialled, take the material in use when they start;
/// established ones keep the session they have.
pub struct Reloadable {
    config: SecurityConfig,
    current: std::sync::RwLock<Arc<Tls>>,
    /// The contents last refused, so that a bad file is logged once, not at every look.
    refused: std::sync::Mutex<Option<u64>>,
}

impl Reloadable {
    /// TLS as `config` names it, if on, loaded now (an error if unusable).
    pub fn load(config: &SecurityConfig) -> Result<Option<Arc<Reloadable>>, TlsError> {
        let Some(tls) = Tls::load(config)? else { return Ok(None) };
        let reloadable = Reloadable {
            config: config.clone(),
            current: std::sync::RwLock::new(tls),
            refused: std::sync::Mutex::new(None),
        };
        reloadable.export_expiry();
        Ok(Some(Arc::new(reloadable)))
    }

    /// The settings it was loaded with (names allowed, reload interval).
    pub fn config(&self) -> &SecurityConfig {
        &self.config
    }

    /// The material in use.
    pub fn current(&self) -> Arc<Tls> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How long a connection may take to finish its handshake.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.config.handshake_timeout_ms)
    }

    /// How often [`Reloadable::reload`] should run (`None`: never).
    pub fn interval(&self) -> Option<Duration> {
        (self.config.reload_interval_ms > 0)
            .then(|| Duration::from_millis(self.config.reload_interval_ms))
    }

    /// Reads the three files; if they hold anything but the material in use, loads and
    /// checks it (every file parses, the key fits the certificate, which chains to the
    /// CA and is valid now) and puts it in use, or refuses it with a log line and a
    /// metric, keeping the old. Files written one at a time pass once the last is in:
    /// the looks between are refused, harmlessly.
    pub fn reload(&self) -> Reload {
        let outcome = self.look();
        // At every look, not only on a change: the seconds left run down meanwhile.
        self.export_expiry();
        outcome
    }

    fn look(&self) -> Reload {
        let metrics = &crate::metrics::METRICS;
        let Ok(Some(paths)) = self.config.paths() else { return Reload::Unchanged };
        // A file missing for a moment (replaced by a rename): look again later.
        let Ok(files) = read_files(paths) else { return Reload::Unchanged };
        let seen = hash_files(&files);
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if seen == self.current().files || *refused == Some(seen) {
            return Reload::Unchanged;
        }
        match Tls::from_files(&self.config, paths, files) {
            Ok(tls) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = tls;
                *refused = None;
                tracing::info!("TLS certificate files changed: new connections use them");
                metrics.tls_reloads.with_label_values(&["reloaded"]).inc();
                Reload::Reloaded
            }
            Err(error) => {
                *refused = Some(seen);
                tracing::warn!(%error, "TLS certificate files changed but cannot be used; the old ones stay in use");
                metrics.tls_reloads.with_label_values(&["refused"]).inc();
                Reload::Refused(error.to_string())
            }
        }
    }

    /// Seconds until this node's certificate and the CA expire, as metrics.
    pub fn export_expiry(&self) {
        let tls = self.current();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let now = now.map_or(0, |d| d.as_secs() as i64);
        let expiry = &crate::metrics::METRICS.tls_expiry_seconds;
        expiry.with_label_values(&["node"]).set(tls.cert_expires.saturating_sub(now));
        expiry.with_label_values(&["ca"]).set(tls.ca_expires.saturating_sub(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert_path, key_path) =
            (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.serialize_pem().unwrap()).unwrap();
        std::fs::write(&key_path, cert.serialize_private_key_pem()).unwrap();
        (cert_path, key_path)
    }

    fn settings(ca: &Path, cert: &Path, key: &Path) -> SecurityConfig {
        SecurityConfig {
            ca_path: Some(ca.to_owned()),
            cert_path: Some(cert.to_owned()),
            key_path: Some(key.to_owned()),
            ..SecurityConfig::default()
        }
    }

    /// A node with unusable TLS files stops at start, with the file and the reason.
    #[test]
    fn unusable_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_cert(dir.path(), "node");
        let (_, other_key) = write_cert(dir.path(), "other");
        assert!(Tls::load(&SecurityConfig::default()).unwrap().is_none(), "no TLS");
        Tls::load(&settings(&cert, &cert, &key)).unwrap().expect("TLS on");
        let missing = dir.path().join("missing.pem");
        let error = Tls::load(&settings(&missing, &cert, &key)).unwrap_err().to_string();
        assert!(
            error.starts_with("cannot read CA file") && error.contains("missing.pem"),
            "{error}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let error = Tls::load(&settings(&cert, &garbage, &key)).unwrap_err().to_string();
        assert!(error.contains("holds no certificate"), "{error}");
        let error = Tls::load(&settings(&cert, &cert, &cert)).unwrap_err().to_string();
        assert!(error.contains("holds no unencrypted private key"), "{error}");
        let error = Tls::load(&settings(&cert, &cert, &other_key)).unwrap_err().to_string();
        assert!(error.contains("does not fit the certificate"), "{error}");
        // A certificate from another CA than the CA file's.
        let (other_cert, _) = write_cert(dir.path(), "another");
        let error = Tls::load(&settings(&other_cert, &cert, &key)).unwrap_err().to_string();
        assert!(error.contains("is not signed by the CA"), "{error}");
        // Expired, and not valid yet.
        for (name, from, to) in [("expired", -30, -1), ("future", 1, 30)] {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]);
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now + time::Duration::days(from);
            params.not_after = now + time::Duration::days(to);
            let dated = rcgen::Certificate::from_params(params).unwrap();
            let (cert, key) = (dir.path().join(name), dir.path().join(format!("{name}.key")));
            std::fs::write(&cert, dated.serialize_pem().unwrap()).unwrap();
            std::fs::write(&key, dated.serialize_private_key_pem()).unwrap();
            let error = Tls::load(&settings(&cert, &cert, &key)).unwrap_err().to_string();
            assert!(error.contains("not now"), "{name}: {error}");
        }
    }

    /// A look at unchanged files changes nothing; a broken file is refused once (not at
    /// every look) and the material in use stays; good files are taken.
    #[test]
    fn a_reload_takes_good_files_and_refuses_broken_ones_once() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_cert(dir.path(), "node");
        let tls = Reloadable::load(&settings(&cert, &cert, &key)).unwrap().unwrap();
        assert_eq!(tls.reload(), Reload::Unchanged);
        let before = Arc::as_ptr(&tls.current());
        std::fs::write(&key, "garbage").unwrap();
        assert!(matches!(tls.reload(), Reload::Refused(e) if e.contains("private key")));
        assert_eq!(tls.reload(), Reload::Unchanged, "refused once");
        assert_eq!(Arc::as_ptr(&tls.current()), before, "the old material stays");
        let (new_cert, new_key) = write_cert(dir.path(), "renewed");
        std::fs::copy(new_cert, &cert).unwrap();
        std::fs::copy(new_key, &key).unwrap();
        assert_eq!(tls.reload(), Reload::Reloaded);
        assert_ne!(Arc::as_ptr(&tls.current()), before);
    }
}
