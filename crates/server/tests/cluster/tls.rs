//! TLS on the one port: a cluster whose nodes dial each other over TLS serves unmodified
//! tikv-client configured with `with_security`, and refuses plaintext, a certificate from
//! another CA and a connection without a client certificate.

use crate::harness::Cluster;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A CA and certificates it signed, written as PEM files for the nodes and clients.
pub struct Certs {
    pub dir: tempfile::TempDir,
    pub ca: rcgen::Certificate,
}

fn ca(name: &str) -> rcgen::Certificate {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new());
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    rcgen::Certificate::from_params(params).unwrap()
}

impl Certs {
    pub fn new() -> Certs {
        let certs = Certs { dir: tempfile::tempdir().unwrap(), ca: ca("scandium test CA") };
        std::fs::write(certs.ca_path(), certs.ca.serialize_pem().unwrap()).unwrap();
        certs
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes a certificate for `name` (SANs `localhost` and 127.0.0.1; server and client
    /// use) and its key; returns their paths.
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        issue(&self.ca, self.dir.path(), name)
    }

    /// The certificate and key `issue(name)` wrote.
    pub fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir.path();
        (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")))
    }
}

fn issue(ca: &rcgen::Certificate, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    issue_for(ca, dir, name, &["localhost", "127.0.0.1"])
}

/// A certificate for `name` naming `hosts`.
fn issue_for(
    ca: &rcgen::Certificate,
    dir: &Path,
    name: &str,
    hosts: &[&str],
) -> (PathBuf, PathBuf) {
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(hosts);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = rcgen::Certificate::from_params(params).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, cert.serialize_pem_with_signer(ca).unwrap()).unwrap();
    std::fs::write(&key_path, cert.serialize_private_key_pem()).unwrap();
    (cert_path, key_path)
}

async fn raw_client(
    cluster: &Cluster,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<tikv_client::RawClient, tikv_client::Error> {
    let config = tikv_client::Config::default()
        .with_security(ca, cert, key)
        .with_timeout(Duration::from_secs(3));
    tikv_client::RawClient::new_with_config(cluster.addrs.clone(), config).await
}

/// Three nodes serving TLS with a node certificate from `certs`, their other security
/// settings adjusted by `adjust`.
pub(crate) async fn tls_cluster(
    certs: &Certs,
    adjust: impl Fn(&mut scandium_server::tls::SecurityConfig) + Send + Sync + 'static,
) -> Cluster {
    let (cert, key) = certs.issue("node");
    let ca = certs.ca_path();
    Cluster::start_with(3, move |c| {
        c.security.ca_path = Some(ca.clone());
        c.security.cert_path = Some(cert.clone());
        c.security.key_path = Some(key.clone());
        adjust(&mut c.security);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_tikv_client_and_refuses_plaintext() {
    let certs = Certs::new();
    let cluster = tls_cluster(&certs, |_| {}).await;
    // Nodes joined and replicate over TLS; an unmodified client works through any node.
    let (client_cert, client_key) = certs.issue("client");
    let raw = raw_client(&cluster, &certs.ca_path(), &client_cert, &client_key).await.unwrap();
    for i in 0..20u8 {
        raw.put(vec![b'k', i], vec![i; 64]).await.unwrap();
    }
    assert_eq!(raw.get(vec![b'k', 7]).await.unwrap(), Some(vec![7; 64]));
    // By DNS name too: the nodes' certificate names `localhost` as well as the address.
    let by_name: Vec<String> =
        cluster.addrs.iter().map(|a| a.replace("127.0.0.1", "localhost")).collect();
    let config = tikv_client::Config::default()
        .with_security(certs.ca_path(), &client_cert, &client_key)
        .with_timeout(Duration::from_secs(3));
    let named = tikv_client::RawClient::new_with_config(by_name, config).await.unwrap();
    assert_eq!(named.get(vec![b'k', 7]).await.unwrap(), Some(vec![7; 64]));
    // An oversized message over TLS is refused as over plaintext, and nothing breaks.
    let oversized = raw.put(b"big".to_vec(), vec![0; 11 << 20]).await;
    assert!(oversized.is_err(), "an 11 MiB put past the 10 MiB message limit was taken");
    assert_eq!(raw.get(vec![b'k', 7]).await.unwrap(), Some(vec![7; 64]));
    let config = tikv_client::Config::default()
        .with_security(certs.ca_path(), &client_cert, &client_key)
        .with_timeout(Duration::from_secs(3));
    let txns = tikv_client::TransactionClient::new_with_config(cluster.addrs.clone(), config)
        .await
        .unwrap();
    let mut txn = txns.begin_optimistic().await.unwrap();
    txn.put(b"t".to_vec(), b"v".to_vec()).await.unwrap();
    txn.commit().await.unwrap();

    // Every node of the test shares the process's metrics.
    let handshakes_failed = || scandium_server::metrics::METRICS.tls_handshakes_failed.get();
    let failed_before = handshakes_failed();
    // Plaintext to the TLS port: tikv-client without security cannot connect.
    let plain = tikv_client::Config::default().with_timeout(Duration::from_secs(2));
    let refused = tikv_client::RawClient::new_with_config(cluster.addrs.clone(), plain).await;
    assert!(refused.is_err(), "a plaintext client connected to a TLS cluster");
    // A certificate from another CA, with the cluster's CA trusted: refused by the server.
    let other = tempfile::tempdir().unwrap();
    let (foreign_cert, foreign_key) = issue(&ca("another CA"), other.path(), "intruder");
    let refused = raw_client(&cluster, &certs.ca_path(), &foreign_cert, &foreign_key).await;
    assert!(refused.is_err(), "a client certificate from another CA was accepted");
    // No client certificate at all (a TLS client that offers none): refused.
    let channel = tonic::transport::Channel::from_shared(format!("https://{}", cluster.addrs[0]))
        .unwrap()
        .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(std::fs::read(certs.ca_path()).unwrap()),
        ))
        .unwrap()
        .connect()
        .await;
    let answered = match channel {
        Err(_) => false,
        Ok(channel) => {
            let mut pd = scandium_protocol::pdpb::pd_client::PdClient::new(channel);
            pd.get_members(scandium_protocol::pdpb::GetMembersRequest::default()).await.is_ok()
        }
    };
    assert!(!answered, "a connection without a client certificate was served");
    // Expired, and not valid yet: refused at the handshake.
    for (name, from, to) in [("expired", -30, -1), ("future", 1, 30)] {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from);
        params.not_after = now + time::Duration::days(to);
        let dated = rcgen::Certificate::from_params(params).unwrap();
        let (cert, key) = (other.path().join(name), other.path().join(format!("{name}.key")));
        std::fs::write(&cert, dated.serialize_pem_with_signer(&certs.ca).unwrap()).unwrap();
        std::fs::write(&key, dated.serialize_private_key_pem()).unwrap();
        let refused = raw_client(&cluster, &certs.ca_path(), &cert, &key).await;
        assert!(refused.is_err(), "a client certificate {name} was accepted");
    }
    assert!(handshakes_failed() > failed_before, "refusals are counted");
    cluster.shutdown().await;
}

/// Certificates are rotated without a restart, as a CA rotation goes (the CA file first
/// holds both CAs, then the nodes' certificates come from the new one), under a write
/// load that sees no error; a broken file is refused and the material in use stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_the_ca_are_rotated_under_load_without_a_restart() {
    let files = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (ca("old CA"), ca("new CA"));
    let pem = |ca: &rcgen::Certificate| ca.serialize_pem().unwrap();
    let path = |name: &str| files.path().join(name);
    let (ca_file, both_cas, new_ca_only) = (path("ca.pem"), path("both.pem"), path("new.pem"));
    std::fs::write(&ca_file, pem(&old_ca)).unwrap();
    std::fs::write(&both_cas, pem(&old_ca) + &pem(&new_ca)).unwrap();
    std::fs::write(&new_ca_only, pem(&new_ca)).unwrap();
    let old_dir = tempfile::tempdir().unwrap();
    let new_dir = tempfile::tempdir().unwrap();
    let (old_node_cert, old_node_key) = issue(&old_ca, old_dir.path(), "node");
    let (node_cert, node_key) = (path("node.pem"), path("node.key"));
    std::fs::copy(&old_node_cert, &node_cert).unwrap();
    std::fs::copy(&old_node_key, &node_key).unwrap();
    let settings = (ca_file.clone(), node_cert.clone(), node_key.clone());
    let cluster = Cluster::start_with(3, move |c| {
        c.security.ca_path = Some(settings.0.clone());
        c.security.cert_path = Some(settings.1.clone());
        c.security.key_path = Some(settings.2.clone());
        c.security.reload_interval_ms = 100;
    })
    .await;
    // A client that trusts both CAs from the start, with a certificate from the old one.
    let (old_client_cert, old_client_key) = issue(&old_ca, old_dir.path(), "app");
    let raw = raw_client(&cluster, &both_cas, &old_client_cert, &old_client_key).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut written, mut failed) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match raw.put(format!("k{written}").into_bytes(), b"v".to_vec()).await {
                    Ok(()) => written += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (written, failed)
        }
    });
    let (new_client_cert, new_client_key) = issue(&new_ca, new_dir.path(), "app");
    let connects = |ca: PathBuf| {
        let (cert, key, addrs) =
            (new_client_cert.clone(), new_client_key.clone(), cluster.addrs.clone());
        async move {
            let config = tikv_client::Config::default()
                .with_security(ca, cert, key)
                .with_timeout(Duration::from_secs(2));
            match tikv_client::RawClient::new_with_config(addrs, config).await {
                Ok(client) => client.put(b"probe".to_vec(), b"v".to_vec()).await.is_ok(),
                Err(_) => false,
            }
        }
    };
    let eventually = |what: &str, ca: PathBuf| {
        let what = what.to_string();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while !connects(ca.clone()).await {
                assert!(std::time::Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Before: a client with a certificate from the new CA is refused.
    assert!(!connects(ca_file.clone()).await, "the new CA was trusted before it was given");
    // Step 1: the CA file holds both; the nodes take clients of the new CA.
    std::fs::write(&ca_file, pem(&old_ca) + &pem(&new_ca)).unwrap();
    eventually("the nodes did not take the CA bundle", ca_file.clone()).await;
    // Step 2: the nodes' certificates come from the new CA (key first, then the
    // certificate: the look in between is refused, harmlessly).
    let (new_node_cert, new_node_key) = issue(&new_ca, new_dir.path(), "node");
    std::fs::copy(&new_node_key, &node_key).unwrap();
    std::fs::copy(&new_node_cert, &node_cert).unwrap();
    eventually("the nodes did not take their new certificates", new_ca_only.clone()).await;
    // A broken certificate file is refused; the material in use stays.
    let refused = || {
        let reloads = &scandium_server::metrics::METRICS.tls_reloads;
        reloads.with_label_values(&["refused"]).get()
    };
    let refused_before = refused();
    std::fs::write(&node_cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while refused() < refused_before + 3 {
        assert!(std::time::Instant::now() < deadline, "the broken file was not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connects(new_ca_only.clone()).await, "the material in use was dropped");
    let expiry = &scandium_server::metrics::METRICS.tls_expiry_seconds;
    let node_expiry = expiry.with_label_values(&["node"]).get();
    assert!(node_expiry > 86_400, "seconds to expiry are exported: {node_expiry}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (written, failed) = writer.await.unwrap();
    assert!(failed.is_empty() && written > 0, "{written} writes, failures: {failed:?}");
    cluster.shutdown().await;
}

/// A gRPC connection to node `i` presenting `cert`.
pub(crate) async fn channel_as(
    cluster: &Cluster,
    i: usize,
    ca: &Path,
    (cert, key): &(PathBuf, PathBuf),
) -> tonic::transport::Channel {
    let (ca, cert, key) =
        (std::fs::read(ca).unwrap(), std::fs::read(cert).unwrap(), std::fs::read(key).unwrap());
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(cert, key));
    tonic::transport::Channel::from_shared(format!("https://{}", cluster.addrs[i]))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// With TLS on, who may call what: clients not on the inter-node service (admins only
/// the calls `scandium ctl` makes, proposing only scheduler settings and store states),
/// nodes only for the address their certificate names, a message only from the store
/// that sends it, and with `cert-allowed-cn` only the names listed. Each refusal names
/// the identity and the call, is counted, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_checked_before_any_call_runs() {
    use scandium_protocol::scandium::{cluster_client::ClusterClient, *};
    let certs = Certs::new();
    let cluster = tls_cluster(&certs, |security| {
        security.cert_allowed_cn = vec!["app".into(), "root".into()];
    })
    .await;
    let ca = certs.ca_path();
    let (app, root, stranger) = (certs.issue("app"), certs.issue("root"), certs.issue("stranger"));
    let elsewhere = issue_for(&certs.ca, certs.dir.path(), "node", &["10.9.9.9"]);
    let cluster_id = cluster.node(0).cluster_id();
    let refused = || scandium_server::metrics::METRICS.refused_calls.get();
    let before = refused();
    let stores_before = cluster.node(0).placement().read().stores().count();

    // A client on the inter-node service: Raft messages, a join, the cluster's id.
    let mut client = ClusterClient::new(channel_as(&cluster, 0, &ca, &app).await);
    let batch = RaftBatch {
        cluster_id,
        from_store: 1,
        from_address: cluster.addrs[1].clone(),
        messages: vec![],
    };
    denied(
        client.raft(tokio_stream::iter([batch.clone()])).await,
        tonic::Code::PermissionDenied,
        "client \"app\" may not call scandium.Cluster/Raft",
    );
    let join = JoinRequest { cluster_id, address: "127.0.0.1:1".into(), ..Default::default() };
    denied(client.join(join.clone()).await, tonic::Code::PermissionDenied, "scandium.Cluster/Join");
    denied(
        client.info(InfoRequest {}).await,
        tonic::Code::PermissionDenied,
        "scandium.Cluster/Info",
    );
    denied(
        client.operators(OperatorsRequest { cluster_id }).await,
        tonic::Code::PermissionDenied,
        "Operators",
    );

    // An admin: the calls `scandium ctl` makes, and only scheduler and store-state changes.
    let mut admin = ClusterClient::new(channel_as(&cluster, 0, &ca, &root).await);
    admin.operators(OperatorsRequest { cluster_id }).await.expect("an admin lists operators");
    denied(
        admin.raft(tokio_stream::iter([batch.clone()])).await,
        tonic::Code::PermissionDenied,
        "Raft",
    );
    let put_store = |address: &str| {
        use prost::Message as _;
        let store = scandium_types::Store { id: 1, address: address.into(), ..Default::default() };
        let command = scandium_placement::Command::new(scandium_placement::Kind::PutStore(store));
        ProposeMetaRequest { cluster_id, command: command.encode_to_vec() }
    };
    denied(
        admin.propose_meta(put_store("10.9.9.9:1")).await,
        tonic::Code::PermissionDenied,
        "may change only scheduler settings",
    );

    // A node certificate for another address speaks for no store here.
    let mut impostor = ClusterClient::new(channel_as(&cluster, 0, &ca, &elsewhere).await);
    denied(
        impostor.raft(tokio_stream::iter([batch.clone()])).await,
        tonic::Code::PermissionDenied,
        "does not name",
    );
    denied(impostor.join(join).await, tonic::Code::PermissionDenied, "does not name");
    denied(
        impostor.propose_meta(put_store(&cluster.addrs[0])).await,
        tonic::Code::PermissionDenied,
        "does not name",
    );

    // A name not in cert-allowed-cn is refused everything, storage included.
    let mut tikv = scandium_protocol::tikvpb::tikv_client::TikvClient::new(
        channel_as(&cluster, 0, &ca, &stranger).await,
    );
    let get =
        scandium_protocol::kvrpcpb::RawGetRequest { key: b"k".to_vec(), ..Default::default() };
    denied(
        tikv.raw_get(get).await,
        tonic::Code::Unauthenticated,
        "\"stranger\" is not in cert-allowed-cn",
    );

    assert!(refused() >= before + 10, "every refusal is counted");
    assert_eq!(
        cluster.node(0).placement().read().stores().count(),
        stores_before,
        "nothing joined"
    );
    let addresses: Vec<String> =
        cluster.node(0).placement().read().stores().map(|s| s.address.clone()).collect();
    assert!(
        !addresses.iter().any(|a| a.starts_with("10.9.9.9")),
        "no address rewritten: {addresses:?}"
    );
    cluster.shutdown().await;
}

/// Asserts that `result` is a refusal with `code` whose message holds `needle`.
fn denied<T>(result: Result<tonic::Response<T>, tonic::Status>, code: tonic::Code, needle: &str) {
    let status = result.err().expect("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(needle), "{status:?}");
}

/// The HTTP status of `GET path` on node `i` over TLS, with `client` (a certificate and
/// its key) or none.
async fn https_get(
    cluster: &Cluster,
    i: usize,
    ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
    path: &str,
) -> u16 {
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = std::fs::read(ca).unwrap();
    for der in rustls_pemfile::certs(&mut ca_pem.as_slice()).unwrap() {
        roots.add(&rustls::Certificate(der)).unwrap();
    }
    let builder =
        rustls::ClientConfig::builder().with_safe_defaults().with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let cert = rustls_pemfile::certs(&mut std::fs::read(cert).unwrap().as_slice()).unwrap();
            let key =
                rustls_pemfile::pkcs8_private_keys(&mut std::fs::read(key).unwrap().as_slice())
                    .unwrap();
            let chain = cert.into_iter().map(rustls::Certificate).collect();
            builder.with_client_auth_cert(chain, rustls::PrivateKey(key[0].clone())).unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&cluster.addrs[i]).await.unwrap();
    let name = rustls::ServerName::try_from("127.0.0.1").unwrap();
    let Ok(stream) = connector.connect(name, tcp).await else { return 0 };
    let Ok((mut sender, connection)) = hyper::client::conn::handshake(stream).await else {
        return 0;
    };
    tokio::spawn(connection);
    let request =
        hyper::Request::get(path).header("host", "127.0.0.1").body(hyper::Body::empty()).unwrap();
    match sender.send_request(request).await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// HTTP with TLS: `/metrics` may be served without a client certificate (a setting, for
/// Prometheus), nothing else is; the pages that show user keys (Region boundaries) only
/// to admins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_follows_the_same_rules_and_metrics_may_go_without_a_certificate() {
    let certs = Certs::new();
    let cluster = tls_cluster(&certs, |security| security.metrics_without_client_cert = true).await;
    let ca = certs.ca_path();
    let (app, root) = (certs.issue("app"), certs.issue("root"));
    assert_eq!(https_get(&cluster, 0, &ca, None, "/metrics").await, 200);
    assert_eq!(https_get(&cluster, 0, &ca, None, "/health").await, 401);
    assert_eq!(https_get(&cluster, 0, &ca, None, "/pd/api/v1/regions").await, 401);
    assert_eq!(https_get(&cluster, 0, &ca, Some(&app), "/health").await, 200);
    assert_eq!(https_get(&cluster, 0, &ca, Some(&app), "/pd/api/v1/stores").await, 200);
    for shows_keys in ["/pd/api/v1/regions", "/api/v1/regions", "/debug/digests"] {
        assert_eq!(https_get(&cluster, 0, &ca, Some(&app), shows_keys).await, 403, "{shows_keys}");
        assert_eq!(https_get(&cluster, 0, &ca, Some(&root), shows_keys).await, 200, "{shows_keys}");
    }
    // gRPC without a certificate: refused, by name.
    let channel =
        tonic::transport::Channel::from_shared(format!("https://{}", cluster.addrs[0]))
            .unwrap()
            .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
                tonic::transport::Certificate::from_pem(std::fs::read(&ca).unwrap()),
            ))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut pd = scandium_protocol::pdpb::pd_client::PdClient::new(channel);
    let members = pd.get_members(scandium_protocol::pdpb::GetMembersRequest::default()).await;
    denied(members, tonic::Code::Unauthenticated, "needs a client certificate");
    cluster.shutdown().await;
}
