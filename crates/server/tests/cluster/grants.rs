//! Authorisation by grants, on a 3-node TLS cluster: every storage, placement, keyspace
//! and admin call of a matrix of identities × operations is allowed or refused as the
//! grants say; a refusal is `PERMISSION_DENIED`, names the identity and the operation, and
//! writes nothing; tikv-client gets it at once, without retrying.

use crate::harness::Cluster;
use crate::tls::{channel_as, tls_cluster, Certs};
use prost::Message as _;
use scandium_placement::{Access, Grant, KeyspaceAccess, Kind, PlacementState};
use scandium_protocol::kvrpcpb::{self, Context};
use scandium_protocol::scandium::{cluster_client::ClusterClient, ProposeMetaRequest};
use scandium_protocol::{keyspacepb, pdpb, tikvpb::tikv_client::TikvClient};
use std::time::Duration;
use tonic::transport::Channel;

/// The identities of the matrix, by certificate name.
const WHO: [&str; 6] = ["root", "ops", "rw", "ro", "v1", "nobody"];

/// Grants: `root` is in `admin-cn`; `ops` an admin by grant; `rw` and `ro` read-write and
/// read-only on keyspace DEFAULT (API V2); `v1` read-write on V1 raw keys and read-only on
/// V1 transactional keys; `nobody` has none.
fn grants() -> Vec<Grant> {
    let default = |access: Access| vec![KeyspaceAccess { keyspace_id: 0, access: access as i32 }];
    vec![
        Grant { name: "ops".into(), admin: true, ..Default::default() },
        Grant { name: "rw".into(), keyspaces: default(Access::ReadWrite), ..Default::default() },
        Grant { name: "ro".into(), keyspaces: default(Access::Read), ..Default::default() },
        Grant {
            name: "v1".into(),
            raw_v1: Access::ReadWrite as i32,
            txn_v1: Access::Read as i32,
            ..Default::default()
        },
    ]
}

/// The operations, and who may make each: one letter per identity of [`WHO`], `y`
/// allowed and `n` refused.
const MATRIX: [(&str, &str); 23] = [
    ("RawGet V1", "yynnyn"),
    ("RawPut V1", "yynnyn"),
    ("RawScan V1", "yynnyn"),
    ("RawGet keyspace", "yyyynn"),
    ("RawPut keyspace", "yyynnn"),
    ("RawBatchPut keyspace", "yyynnn"),
    ("RawBatchPut mixed", "yynnnn"),
    ("RawScan reverse keyspace", "yyyynn"),
    ("RawDeleteRange keyspace", "yyynnn"),
    ("KvGet V1", "yynnyn"),
    ("KvPrewrite V1", "yynnnn"),
    ("KvGet keyspace", "yyyynn"),
    ("KvPrewrite keyspace", "yyynnn"),
    ("KvScan keyspace", "yyyynn"),
    ("KvResolveLock keyspace Region", "yyyynn"),
    ("KvCleanup keyspace", "yyynnn"),
    ("KvCheckTxnStatus V1", "yynnyn"),
    ("KvTxnHeartBeat keyspace", "yyynnn"),
    ("GetRegion keyspace", "yyyynn"),
    ("LoadKeyspace DEFAULT", "yyyynn"),
    ("UpdateGCSafePoint", "yynnnn"),
    ("SplitRegions", "yynnnn"),
    ("KvGc", "yynnnn"),
];

/// Keys of the API V1 space and of keyspace DEFAULT (raw `r`, transactional `x`), one per
/// identity so that what each wrote can be told apart.
fn v1_key(who: &str) -> Vec<u8> {
    format!("v1-{who}").into_bytes()
}
fn raw_key(who: &str) -> Vec<u8> {
    [b"r\0\0\0".as_slice(), who.as_bytes()].concat()
}
fn txn_key(who: &str) -> Vec<u8> {
    [b"x\0\0\0".as_slice(), who.as_bytes()].concat()
}

struct Matrix<'a> {
    cluster: &'a Cluster,
    certs: &'a Certs,
}

impl Matrix<'_> {
    /// A channel to the node leading the Region of `key`, and the context it accepts.
    async fn at(&self, who: &str, key: &[u8]) -> (Channel, Context) {
        let region = self.cluster.region_of(key);
        let leader = self.cluster.wait_leader(region, Duration::from_secs(10)).await;
        let channel =
            channel_as(self.cluster, leader, &self.certs.ca_path(), &self.certs.paths(who)).await;
        (channel, self.cluster.context(leader, region))
    }

    /// Runs `operation` as `who`: `Err` with the refusal if it was refused, `Ok` with
    /// what else came back (a success, or an error that is not a refusal).
    async fn run(&self, operation: &str, who: &str) -> Result<String, String> {
        // Debug output escapes the quotes around the identity's name.
        let refusal = |text: String| match text.contains("PERMISSION_DENIED") {
            true => Err(text.replace("\\\"", "\"")),
            false => Ok(text),
        };
        let status = |status: tonic::Status| match status.code() {
            tonic::Code::PermissionDenied => Err(status.message().to_string()),
            _ => Ok(format!("{status:?}")),
        };
        macro_rules! tikv {
            ($key:expr, $method:ident, |$ctx:ident| $request:expr) => {{
                let (channel, $ctx) = self.at(who, &$key).await;
                match TikvClient::new(channel).$method($request).await {
                    Ok(response) => refusal(format!("{:?}", response.into_inner())),
                    Err(e) => status(e),
                }
            }};
        }
        let ts = 1_000 + WHO.iter().position(|w| *w == who).unwrap() as u64;
        let mutation = |key: Vec<u8>| kvrpcpb::Mutation {
            op: kvrpcpb::Op::Put as i32,
            key,
            value: b"value".to_vec(),
            ..Default::default()
        };
        match operation {
            "RawGet V1" => tikv!(v1_key(who), raw_get, |ctx| kvrpcpb::RawGetRequest {
                context: Some(ctx),
                key: v1_key(who),
                ..Default::default()
            }),
            "RawPut V1" => tikv!(v1_key(who), raw_put, |ctx| kvrpcpb::RawPutRequest {
                context: Some(ctx),
                key: v1_key(who),
                value: b"value".to_vec(),
                ..Default::default()
            }),
            "RawScan V1" => tikv!(v1_key(who), raw_scan, |ctx| kvrpcpb::RawScanRequest {
                context: Some(ctx),
                start_key: b"v1-".to_vec(),
                end_key: b"v1-~".to_vec(),
                limit: 10,
                ..Default::default()
            }),
            "RawGet keyspace" => tikv!(raw_key(who), raw_get, |ctx| kvrpcpb::RawGetRequest {
                context: Some(ctx),
                key: raw_key(who),
                ..Default::default()
            }),
            "RawPut keyspace" => tikv!(raw_key(who), raw_put, |ctx| kvrpcpb::RawPutRequest {
                context: Some(ctx),
                key: raw_key(who),
                value: b"value".to_vec(),
                ..Default::default()
            }),
            "RawBatchPut keyspace" | "RawBatchPut mixed" => {
                let mut keys = vec![[raw_key(who), b"-batch".to_vec()].concat()];
                if operation.ends_with("mixed") {
                    keys.push([v1_key(who), b"-batch".to_vec()].concat());
                }
                let pairs = keys
                    .iter()
                    .map(|key| kvrpcpb::KvPair {
                        key: key.clone(),
                        value: b"v".to_vec(),
                        error: None,
                    })
                    .collect();
                tikv!(keys[0], raw_batch_put, |ctx| kvrpcpb::RawBatchPutRequest {
                    context: Some(ctx),
                    pairs,
                    ..Default::default()
                })
            }
            "RawScan reverse keyspace" => {
                tikv!(raw_key(who), raw_scan, |ctx| kvrpcpb::RawScanRequest {
                    context: Some(ctx),
                    start_key: b"r\0\0\x01".to_vec(),
                    end_key: b"r\0\0\0".to_vec(),
                    limit: 10,
                    reverse: true,
                    ..Default::default()
                })
            }
            "RawDeleteRange keyspace" => {
                let start = [raw_key(who), b"-gone".to_vec()].concat();
                let end = [raw_key(who), b"-gonf".to_vec()].concat();
                tikv!(start, raw_delete_range, |ctx| kvrpcpb::RawDeleteRangeRequest {
                    context: Some(ctx),
                    start_key: start.clone(),
                    end_key: end,
                    ..Default::default()
                })
            }
            "KvGet V1" => tikv!(v1_key(who), kv_get, |ctx| kvrpcpb::GetRequest {
                context: Some(ctx),
                key: v1_key(who),
                version: u64::MAX,
            }),
            "KvPrewrite V1" | "KvPrewrite keyspace" => {
                let key = if operation.ends_with("V1") { v1_key(who) } else { txn_key(who) };
                tikv!(key, kv_prewrite, |ctx| kvrpcpb::PrewriteRequest {
                    context: Some(ctx),
                    mutations: vec![mutation(key.clone())],
                    primary_lock: key.clone(),
                    start_version: ts,
                    lock_ttl: 3_000,
                    ..Default::default()
                })
            }
            "KvGet keyspace" => tikv!(txn_key(who), kv_get, |ctx| kvrpcpb::GetRequest {
                context: Some(ctx),
                key: txn_key("nothing"),
                version: 10,
            }),
            "KvScan keyspace" => tikv!(txn_key(who), kv_scan, |ctx| kvrpcpb::ScanRequest {
                context: Some(ctx),
                start_key: b"x\0\0\0".to_vec(),
                end_key: b"x\0\0\x01".to_vec(),
                limit: 10,
                version: 10,
                ..Default::default()
            }),
            "KvResolveLock keyspace Region" => {
                tikv!(txn_key(who), kv_resolve_lock, |ctx| kvrpcpb::ResolveLockRequest {
                    context: Some(ctx),
                    start_version: 999_999,
                    commit_version: 0,
                    ..Default::default()
                })
            }
            "KvCleanup keyspace" => {
                tikv!(txn_key(who), kv_cleanup, |ctx| kvrpcpb::CleanupRequest {
                    context: Some(ctx),
                    key: txn_key("nothing"),
                    start_version: 5,
                    current_ts: 6,
                })
            }
            "KvCheckTxnStatus V1" => {
                tikv!(v1_key(who), kv_check_txn_status, |ctx| kvrpcpb::CheckTxnStatusRequest {
                    context: Some(ctx),
                    primary_key: v1_key("nothing"),
                    lock_ts: 5,
                    caller_start_ts: 6,
                    current_ts: 6,
                    ..Default::default()
                })
            }
            "KvTxnHeartBeat keyspace" => {
                tikv!(txn_key(who), kv_txn_heart_beat, |ctx| kvrpcpb::TxnHeartBeatRequest {
                    context: Some(ctx),
                    primary_lock: txn_key("nothing"),
                    start_version: 5,
                    advise_lock_ttl: 3_000,
                    ..Default::default()
                })
            }
            "KvGc" => tikv!(txn_key(who), kv_gc, |ctx| kvrpcpb::GcRequest {
                context: Some(ctx),
                safe_point: 1,
            }),
            "GetRegion keyspace" => {
                let (channel, _) = self.at(who, &txn_key(who)).await;
                let request = pdpb::GetRegionRequest {
                    header: Some(self.header()),
                    region_key: txn_key(who),
                    ..Default::default()
                };
                match pdpb::pd_client::PdClient::new(channel).get_region(request).await {
                    Ok(response) => Ok(format!("{:?}", response.into_inner().region)),
                    Err(e) => status(e),
                }
            }
            "LoadKeyspace DEFAULT" => {
                let (channel, _) = self.at(who, &txn_key(who)).await;
                let request = keyspacepb::LoadKeyspaceRequest {
                    header: Some(self.header()),
                    name: "DEFAULT".into(),
                };
                let mut client = keyspacepb::keyspace_client::KeyspaceClient::new(channel);
                match client.load_keyspace(request).await {
                    Ok(response) => Ok(format!("{:?}", response.into_inner().keyspace)),
                    Err(e) => status(e),
                }
            }
            "UpdateGCSafePoint" => {
                let (channel, _) = self.at(who, &txn_key(who)).await;
                // A safe point of 1: moving it is harmless to this test's data.
                let request =
                    pdpb::UpdateGcSafePointRequest { header: Some(self.header()), safe_point: 1 };
                match pdpb::pd_client::PdClient::new(channel).update_gc_safe_point(request).await {
                    Ok(response) => Ok(format!("{:?}", response.into_inner())),
                    Err(e) => status(e),
                }
            }
            "SplitRegions" => {
                let (channel, _) = self.at(who, &v1_key(who)).await;
                let request = pdpb::SplitRegionsRequest {
                    header: Some(self.header()),
                    split_keys: vec![format!("split-{who}").into_bytes()],
                    retry_limit: 0,
                };
                match pdpb::pd_client::PdClient::new(channel).split_regions(request).await {
                    Ok(response) => Ok(format!("{:?}", response.into_inner())),
                    Err(e) => status(e),
                }
            }
            other => panic!("no operation {other:?}"),
        }
    }

    /// Whether raw `key` exists, asked as root. (A split just made may leave a Region's
    /// old shape for a moment: it asks again.)
    async fn raw_exists(&self, key: Vec<u8>) -> bool {
        for _ in 0..100 {
            let (channel, ctx) = self.at("root", &key).await;
            let request = kvrpcpb::RawGetRequest {
                context: Some(ctx),
                key: key.clone(),
                ..Default::default()
            };
            let response = TikvClient::new(channel).raw_get(request).await.unwrap().into_inner();
            assert!(response.error.is_empty(), "{}", response.error);
            if response.region_error.is_none() {
                return !response.not_found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no answer for {key:?}");
    }

    /// Whether transactional `key` is locked, asked as root.
    async fn locked(&self, key: &[u8]) -> bool {
        let (channel, ctx) = self.at("root", key).await;
        let request = kvrpcpb::ScanLockRequest {
            context: Some(ctx),
            max_version: u64::MAX,
            start_key: key.to_vec(),
            end_key: [key, &[0]].concat(),
            limit: 10,
        };
        let response = TikvClient::new(channel).kv_scan_lock(request).await.unwrap().into_inner();
        assert!(response.region_error.is_none(), "{:?}", response.region_error);
        !response.locks.is_empty()
    }

    fn header(&self) -> pdpb::RequestHeader {
        pdpb::RequestHeader { cluster_id: self.cluster.node(0).cluster_id(), ..Default::default() }
    }
}

/// Proposes `kind` as the admin `root`, through the placement leader.
async fn propose_as_root(cluster: &Cluster, certs: &Certs, kind: Kind) {
    let leader = cluster.meta_leader().expect("a placement leader");
    let root = certs.paths("root");
    let mut client = ClusterClient::new(channel_as(cluster, leader, &certs.ca_path(), &root).await);
    let command = scandium_placement::Command::new(kind).encode_to_vec();
    let request = ProposeMetaRequest { cluster_id: cluster.node(0).cluster_id(), command };
    let reply = client.propose_meta(request).await.expect("root may propose").into_inner();
    assert!(reply.error.is_empty(), "{}", reply.error);
}

/// A 3-node TLS cluster with certificates for `who` and `root`, `grants` given and
/// authorisation on, applied on every node.
async fn authorised_cluster(certs: &Certs, who: &[&str], grants: Vec<Grant>) -> Cluster {
    let cluster = tls_cluster(certs, |_| {}).await;
    for who in ["root"].iter().chain(who) {
        certs.issue(who);
    }
    let count = grants.len();
    for grant in grants {
        propose_as_root(&cluster, certs, Kind::SetGrant(grant)).await;
    }
    propose_as_root(&cluster, certs, Kind::SetAuthorization(true)).await;
    wait_for_grants(&cluster, true, count).await;
    cluster
}

/// tikv-client settings of `who` for keyspace `DEFAULT` (API V2).
fn keyspace_client(certs: &Certs, who: &str) -> tikv_client::Config {
    let (cert, key) = certs.paths(who);
    tikv_client::Config::default()
        .with_security(certs.ca_path(), cert, key)
        .with_keyspace("DEFAULT")
        .with_timeout(Duration::from_secs(3))
}

/// Waits until every node has applied authorisation `on` and `count` grants.
async fn wait_for_grants(cluster: &Cluster, on: bool, count: usize) {
    wait_everywhere(cluster, |state| state.authorization() == on && state.grants().len() == count)
        .await
}

/// Waits (at most 10 s) until `applied` holds of every node's placement state.
async fn wait_everywhere(cluster: &Cluster, applied: impl Fn(&PlacementState) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cluster.running().all(|(_, node)| applied(&node.placement().read())) {
        assert!(tokio::time::Instant::now() < deadline, "grants not applied everywhere");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What `name`'s grant allows on keyspace 0, as `state` has it.
fn on_default(state: &PlacementState, name: &str) -> Access {
    state.grants().get(name).map_or(Access::None, |g| g.keyspace(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_decide_every_call_of_every_identity() {
    let certs = Certs::new();
    let cluster = tls_cluster(&certs, |_| {}).await;
    for who in WHO {
        certs.issue(who);
    }
    let matrix = Matrix { cluster: &cluster, certs: &certs };
    // Keyspace DEFAULT's edges are Region boundaries, so a V1 key and a keyspace key are
    // in different Regions.
    assert_ne!(cluster.region_of(&v1_key("rw")), cluster.region_of(&raw_key("rw")));

    // Authorisation off: everyone may do everything.
    for who in ["nobody", "ro"] {
        for operation in ["RawGet keyspace", "RawScan V1", "KvGc", "UpdateGCSafePoint"] {
            let outcome = matrix.run(operation, who).await;
            assert!(outcome.is_ok(), "{who} {operation} with authorisation off: {outcome:?}");
        }
    }

    for grant in grants() {
        propose_as_root(&cluster, &certs, Kind::SetGrant(grant)).await;
    }
    propose_as_root(&cluster, &certs, Kind::SetAuthorization(true)).await;
    wait_for_grants(&cluster, true, 4).await;

    let refused_before = scandium_server::metrics::METRICS.refused_calls.get();
    let mut refusals = 0;
    let mut wrong = Vec::new();
    for (operation, allowed) in MATRIX {
        for (who, expected) in WHO.iter().zip(allowed.chars()) {
            let outcome = matrix.run(operation, who).await;
            match (expected, &outcome) {
                ('y', Ok(_)) => {}
                ('n', Err(message)) => {
                    refusals += 1;
                    let names = message.contains(&format!("{who:?}"))
                        && message.contains(operation.split(' ').next().unwrap());
                    if !names {
                        wrong.push(format!(
                            "{operation} as {who}: refusal names too little: {message}"
                        ));
                    }
                }
                _ => wrong
                    .push(format!("{operation} as {who}: expected {expected}, got {outcome:?}")),
            }
        }
    }
    let cases = MATRIX.len() * WHO.len();
    assert!(cases >= 60, "{cases} cases");
    assert!(wrong.is_empty(), "{} of {cases} cases wrong:\n{}", wrong.len(), wrong.join("\n"));
    let counted = scandium_server::metrics::METRICS.refused_calls.get() - refused_before;
    assert!(counted >= refusals, "{refusals} refusals, {counted} counted");

    // Nothing refused was written: read back as root what each identity tried to write.
    for who in WHO {
        let wrote_v1 = matches!(who, "root" | "ops" | "v1");
        let wrote_keyspace = matches!(who, "root" | "ops" | "rw");
        assert_eq!(matrix.raw_exists(v1_key(who)).await, wrote_v1, "V1 raw key of {who}");
        assert_eq!(
            matrix.raw_exists(raw_key(who)).await,
            wrote_keyspace,
            "keyspace raw key of {who}"
        );
        let batch = [raw_key(who), b"-batch".to_vec()].concat();
        assert_eq!(matrix.raw_exists(batch).await, wrote_keyspace, "batch key of {who}");
        // A batch across two Regions is refused by the server for that reason when it
        // is allowed, so neither half is written by anyone.
        let mixed = [v1_key(who), b"-batch".to_vec()].concat();
        assert!(!matrix.raw_exists(mixed).await, "mixed batch of {who}");
    }
    for who in WHO {
        assert_eq!(
            matrix.locked(&txn_key(who)).await,
            matches!(who, "root" | "ops" | "rw"),
            "lock of {who}"
        );
    }

    // The grants change at runtime: `ro` may write once granted, and nothing once revoked.
    let upgraded = Grant {
        name: "ro".into(),
        keyspaces: vec![KeyspaceAccess { keyspace_id: 0, access: Access::ReadWrite as i32 }],
        ..Default::default()
    };
    propose_as_root(&cluster, &certs, Kind::SetGrant(upgraded)).await;
    wait_everywhere(&cluster, |state| on_default(state, "ro") == Access::ReadWrite).await;
    assert!(matrix.run("RawPut keyspace", "ro").await.is_ok());
    propose_as_root(
        &cluster,
        &certs,
        Kind::SetGrant(Grant { name: "ro".into(), ..Default::default() }),
    )
    .await;
    wait_for_grants(&cluster, true, 3).await;
    let refused = matrix.run("RawGet keyspace", "ro").await.unwrap_err();
    assert!(refused.contains("no grant"), "{refused}");
    cluster.shutdown().await;
}

/// tikv-client 0.4 against a keyspace it may only read: reads work, and a write is
/// refused at once with the reason, tried once (a gRPC status would be retried with
/// backoff ten times); a client of a keyspace it has no grant for cannot even load it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tikv_client_sees_a_refusal_at_once_and_does_not_retry_it() {
    let certs = Certs::new();
    let granted = grants().into_iter().filter(|g| g.name == "rw" || g.name == "ro").collect();
    let cluster = authorised_cluster(&certs, &["rw", "ro", "nobody"], granted).await;
    let client = |who: &str| {
        let config = keyspace_client(&certs, who);
        tikv_client::RawClient::new_with_config(cluster.addrs.clone(), config)
    };
    let writer = client("rw").await.unwrap();
    writer.put(b"shared".to_vec(), b"1".to_vec()).await.unwrap();
    let reader = client("ro").await.unwrap();
    assert_eq!(reader.get(b"shared".to_vec()).await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(reader.scan(b"a".to_vec().., 10).await.unwrap().len(), 1);

    let before = scandium_server::metrics::METRICS.refused_calls.get();
    let refused = reader.put(b"shared".to_vec(), b"2".to_vec()).await.unwrap_err().to_string();
    assert!(refused.contains("PERMISSION_DENIED") && refused.contains("RawPut"), "{refused}");
    let tries = scandium_server::metrics::METRICS.refused_calls.get() - before;
    assert_eq!(tries, 1, "the refusal was retried");
    let config = keyspace_client(&certs, "ro");
    let transactions =
        tikv_client::TransactionClient::new_with_config(cluster.addrs.clone(), config)
            .await
            .unwrap();
    let mut txn = transactions.begin_optimistic().await.unwrap();
    txn.put(b"t".to_vec(), b"v".to_vec()).await.unwrap();
    let refused = txn.commit().await.unwrap_err().to_string();
    assert!(refused.contains("PERMISSION_DENIED"), "{refused}");
    assert_eq!(writer.get(b"shared".to_vec()).await.unwrap(), Some(b"1".to_vec()));

    // A reader meets a lock another transaction left behind and settles it (checks the
    // primary's status, rolls the expired lock back) with read access alone.
    let orphan = b"x\0\0\0orphan".to_vec();
    let matrix = Matrix { cluster: &cluster, certs: &certs };
    let (channel, ctx) = matrix.at("rw", &orphan).await;
    let start = {
        use tikv_client::TimestampExt as _;
        transactions.current_timestamp().await.unwrap().version()
    };
    let prewrite = kvrpcpb::PrewriteRequest {
        context: Some(ctx),
        mutations: vec![kvrpcpb::Mutation {
            op: kvrpcpb::Op::Put as i32,
            key: orphan.clone(),
            value: b"never committed".to_vec(),
            ..Default::default()
        }],
        primary_lock: orphan.clone(),
        start_version: start,
        lock_ttl: 1,
        ..Default::default()
    };
    let written = TikvClient::new(channel).kv_prewrite(prewrite).await.unwrap().into_inner();
    assert!(written.errors.is_empty() && written.region_error.is_none(), "{written:?}");
    let now = transactions.current_timestamp().await.unwrap();
    let mut snapshot =
        transactions.snapshot(now, tikv_client::TransactionOptions::new_optimistic());
    assert_eq!(snapshot.get(b"orphan".to_vec()).await.unwrap(), None);
    assert!(!matrix.locked(&orphan).await, "the reader rolled the expired lock back");

    let nobody = client("nobody").await;
    let refused = nobody.err().expect("a client with no grant loaded the keyspace").to_string();
    assert!(refused.contains("PERMISSION_DENIED") || refused.contains("permission"), "{refused}");
    cluster.shutdown().await;
}

/// A caller that may only read settles a lock only as its primary decided: it cannot roll
/// back a secondary of a committed transaction (breaking its atomicity), nor expire a
/// live transaction by naming a time far ahead; named rightly, the resolution goes
/// through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_settles_a_lock_only_as_its_primary_decided() {
    let certs = Certs::new();
    let granted = grants().into_iter().filter(|g| g.name == "rw" || g.name == "ro").collect();
    let cluster = authorised_cluster(&certs, &["rw", "ro"], granted).await;
    let matrix = Matrix { cluster: &cluster, certs: &certs };
    let config = keyspace_client(&certs, "rw");
    let transactions =
        tikv_client::TransactionClient::new_with_config(cluster.addrs.clone(), config)
            .await
            .unwrap();
    let timestamp = || async {
        use tikv_client::TimestampExt as _;
        transactions.current_timestamp().await.unwrap().version()
    };
    let (primary, secondary, live) =
        (b"x\0\0\0p".to_vec(), b"x\0\0\0s".to_vec(), b"x\0\0\0q".to_vec());
    let late = b"x\0\0\0u".to_vec();
    let prewrite = |keys: Vec<Vec<u8>>, start: u64| {
        let mutations = keys.iter().map(|key| kvrpcpb::Mutation {
            op: kvrpcpb::Op::Put as i32,
            key: key.clone(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        kvrpcpb::PrewriteRequest {
            mutations: mutations.collect(),
            primary_lock: keys[0].clone(),
            start_version: start,
            lock_ttl: 60_000,
            ..Default::default()
        }
    };
    let as_who = |who: &'static str, key: Vec<u8>| {
        let matrix = &matrix;
        async move { matrix.at(who, &key).await }
    };
    // A transaction committed at its primary only; another still running.
    let start = timestamp().await;
    let (channel, ctx) = as_who("rw", primary.clone()).await;
    let mut rw = TikvClient::new(channel);
    let request = kvrpcpb::PrewriteRequest {
        context: Some(ctx.clone()),
        ..prewrite(vec![primary.clone(), secondary.clone()], start)
    };
    let written = rw.kv_prewrite(request).await.unwrap().into_inner();
    assert!(written.errors.is_empty() && written.region_error.is_none(), "{written:?}");
    let commit_ts = timestamp().await;
    let commit = kvrpcpb::CommitRequest {
        context: Some(ctx.clone()),
        start_version: start,
        keys: vec![primary.clone()],
        commit_version: commit_ts,
        ..Default::default()
    };
    let committed = rw.kv_commit(commit).await.unwrap().into_inner();
    assert!(committed.error.is_none() && committed.region_error.is_none(), "{committed:?}");
    let running = timestamp().await;
    let request =
        kvrpcpb::PrewriteRequest { context: Some(ctx), ..prewrite(vec![live.clone()], running) };
    let written = rw.kv_prewrite(request).await.unwrap().into_inner();
    assert!(written.errors.is_empty(), "{written:?}");

    let (channel, ctx) = as_who("ro", secondary.clone()).await;
    let mut ro = TikvClient::new(channel);
    let resolve = |commit_version: u64| kvrpcpb::ResolveLockRequest {
        context: Some(ctx.clone()),
        start_version: start,
        commit_version,
        keys: vec![secondary.clone()],
        ..Default::default()
    };
    let refused = ro.kv_resolve_lock(resolve(0)).await.unwrap().into_inner();
    let error = format!("{:?}", refused.error.expect("a reader rolled back a committed secondary"));
    assert!(error.contains("committed at"), "{error}");
    assert!(matrix.locked(&secondary).await, "the secondary's lock stays");
    // A time far ahead does not expire the running transaction for a reader.
    let status = kvrpcpb::CheckTxnStatusRequest {
        context: Some(ctx.clone()),
        primary_key: live.clone(),
        lock_ts: running,
        caller_start_ts: timestamp().await,
        current_ts: u64::MAX,
        rollback_if_not_exist: true,
        ..Default::default()
    };
    let status = ro.kv_check_txn_status(status).await.unwrap().into_inner();
    assert!(status.lock_ttl > 0 && status.error.is_none(), "{status:?}");
    assert!(matrix.locked(&live).await, "the running transaction keeps its lock");
    // Nor can a reader roll back a transaction whose primary's prewrite is on its way.
    let unwritten = timestamp().await;
    let status = kvrpcpb::CheckTxnStatusRequest {
        context: Some(ctx.clone()),
        primary_key: late.clone(),
        lock_ts: unwritten,
        caller_start_ts: timestamp().await,
        current_ts: timestamp().await,
        rollback_if_not_exist: true,
        ..Default::default()
    };
    let status = ro.kv_check_txn_status(status).await.unwrap().into_inner();
    assert!(status.lock_ttl > 0, "a reader rolled back an unwritten primary: {status:?}");
    let (channel, writer_ctx) = as_who("rw", late.clone()).await;
    let request = kvrpcpb::PrewriteRequest {
        context: Some(writer_ctx),
        ..prewrite(vec![late.clone()], unwritten)
    };
    let written = TikvClient::new(channel).kv_prewrite(request).await.unwrap().into_inner();
    assert!(written.errors.is_empty(), "the late prewrite is refused: {written:?}");
    // An async-commit transaction is committed once its locks are all written: a reader
    // asking for the old protocol (`force_sync_commit`) cannot roll it back.
    let (async_primary, async_secondary) = (b"x\0\0\0v".to_vec(), b"x\0\0\0w".to_vec());
    let async_start = timestamp().await;
    let (channel, writer_ctx) = as_who("rw", async_primary.clone()).await;
    let request = kvrpcpb::PrewriteRequest {
        context: Some(writer_ctx),
        use_async_commit: true,
        secondaries: vec![async_secondary.clone()],
        lock_ttl: 1,
        ..prewrite(vec![async_primary.clone(), async_secondary.clone()], async_start)
    };
    let written = TikvClient::new(channel).kv_prewrite(request).await.unwrap().into_inner();
    assert!(written.errors.is_empty() && written.min_commit_ts > 0, "{written:?}");
    tokio::time::sleep(Duration::from_millis(5)).await; // the 1 ms lock expires
    let (channel, reader_ctx) = as_who("ro", async_primary.clone()).await;
    let status = kvrpcpb::CheckTxnStatusRequest {
        context: Some(reader_ctx),
        primary_key: async_primary.clone(),
        lock_ts: async_start,
        caller_start_ts: timestamp().await,
        current_ts: timestamp().await,
        force_sync_commit: true,
        ..Default::default()
    };
    let status = TikvClient::new(channel).kv_check_txn_status(status).await.unwrap();
    let status = status.into_inner();
    assert!(status.commit_version >= written.min_commit_ts, "rolled back: {status:?}");
    // Named as the primary decided, the reader's resolution goes through.
    let settled = ro.kv_resolve_lock(resolve(commit_ts)).await.unwrap().into_inner();
    assert!(settled.error.is_none() && settled.region_error.is_none(), "{settled:?}");
    assert!(!matrix.locked(&secondary).await);
    let reader = tikv_client::TransactionClient::new_with_config(
        cluster.addrs.clone(),
        keyspace_client(&certs, "ro"),
    )
    .await
    .unwrap();
    let now = reader.current_timestamp().await.unwrap();
    let mut snapshot = reader.snapshot(now, tikv_client::TransactionOptions::new_optimistic());
    assert_eq!(snapshot.get(b"s".to_vec()).await.unwrap(), Some(b"v".to_vec()));
    cluster.shutdown().await;
}

/// Grants change while a client writes (etcd checked grants at apply time, against each
/// replica's own view, and its replicas diverged: etcd-io/etcd#11651). Here a write is
/// judged once, before it is proposed: every acknowledged write is on every replica,
/// every refused one on none, and the replicas agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_changing_under_writes_leave_the_replicas_identical() {
    let certs = Certs::new();
    let grant = |access: Access| Grant {
        name: "rw".into(),
        keyspaces: vec![KeyspaceAccess { keyspace_id: 0, access: access as i32 }],
        ..Default::default()
    };
    let cluster = authorised_cluster(&certs, &["rw"], vec![grant(Access::ReadWrite)]).await;
    let client = |who: &str| {
        tikv_client::RawClient::new_with_config(cluster.addrs.clone(), keyspace_client(&certs, who))
    };
    let writer = client("rw").await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writing = tokio::spawn({
        let (stop, answered) = (stop.clone(), answered.clone());
        async move {
            let (mut acknowledged, mut refused) = (Vec::new(), Vec::new());
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("race{i:06}").into_bytes();
                match writer.put(key.clone(), b"v".to_vec()).await {
                    Ok(()) => acknowledged.push(key),
                    Err(e) if e.to_string().contains("PERMISSION_DENIED") => refused.push(key),
                    Err(e) => panic!("a write failed for another reason: {e}"),
                }
                answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i += 1;
            }
            (acknowledged, refused)
        }
    });
    for round in 0..10 {
        let access = if round % 2 == 0 { Access::Read } else { Access::ReadWrite };
        propose_as_root(&cluster, &certs, Kind::SetGrant(grant(access))).await;
        wait_everywhere(&cluster, |state| on_default(state, "rw") == access).await;
        // Some writes under each grant before the next change.
        let seen = answered.load(std::sync::atomic::Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while answered.load(std::sync::atomic::Ordering::Relaxed) < seen + 20 {
            assert!(tokio::time::Instant::now() < deadline, "the writer stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acknowledged, refused) = writing.await.unwrap();
    assert!(!acknowledged.is_empty() && !refused.is_empty(), "{acknowledged:?} {refused:?}");
    let root = client("root").await.unwrap();
    for key in &acknowledged {
        assert!(root.get(key.clone()).await.unwrap().is_some(), "acknowledged {key:?} lost");
    }
    for key in &refused {
        assert!(root.get(key.clone()).await.unwrap().is_none(), "refused {key:?} written");
    }
    crate::harness::assert_replicas_agree(&cluster).await;
    cluster.shutdown().await;
}
