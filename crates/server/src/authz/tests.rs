use super::*;
use prost::Message as _;
use scandium_placement::{Command, KeyspaceAccess, KeyspaceMeta, Kind};
use scandium_storage::WriteBatch;
use scandium_types::{Region, Store};

fn identity(name: &str) -> PeerIdentity {
    PeerIdentity { name: name.into(), node: false, hosts: Vec::new(), certified: true }
}

/// A state with keyspaces 0 and 1, these grants, and authorisation `on`.
fn state(on: bool, grants: Vec<Grant>) -> PlacementState {
    let keyspace = |id, name: &str| KeyspaceMeta { id, name: name.into(), state: 0, created_at: 0 };
    let (mut state, _) = PlacementState::bootstrap(
        1,
        10,
        Store { id: 1, ..Default::default() },
        vec![Region { id: 2, ..Default::default() }],
        vec![keyspace(0, "DEFAULT"), keyspace(1, "app")],
    );
    let mut apply = |kind| {
        let response = state.apply(&Command::new(kind).encode_to_vec(), &mut WriteBatch::new());
        assert_eq!(response, scandium_placement::Response::Done);
    };
    for grant in grants {
        apply(Kind::SetGrant(grant));
    }
    apply(Kind::SetAuthorization(on));
    state
}

fn authz(on: bool, grants: Vec<Grant>) -> Authz {
    let authz = Authz::new(vec!["root".into()]);
    authz.publish(&state(on, grants));
    authz
}

fn app_writer() -> Grant {
    Grant {
        name: "app".into(),
        txn_v1: Access::Read as i32,
        keyspaces: vec![KeyspaceAccess { keyspace_id: 1, access: Access::ReadWrite as i32 }],
        ..Default::default()
    }
}

const APP_RAW: &[u8] = b"r\0\0\x01key";
const APP_TXN: &[u8] = b"x\0\0\x01key";
const DEFAULT_RAW: &[u8] = b"r\0\0\0key";

#[test]
fn with_authorisation_off_every_client_may_do_everything() {
    let authz = authz(false, vec![]);
    let stranger = identity("stranger");
    assert!(authz
        .check(&stranger, "raw_put", &Need::keys(Space::Raw, true, [DEFAULT_RAW]))
        .is_ok());
    assert!(authz.check(&stranger, "split_region", &Need::Admin).is_ok());
    assert!(authz.may_see_keyspace(&stranger, 1));
    assert!(!authz.is_admin(&stranger), "admins come from admin-cn and grants only");
    assert!(!authz.checks(&stranger), "nothing to check with authorisation off");
}

#[test]
fn a_grant_allows_its_keyspaces_and_nothing_else() {
    let authz = authz(true, vec![app_writer()]);
    let app = identity("app");
    let check = |need: Need| authz.check(&app, "op", &need);
    assert!(authz.checks(&app) && !authz.checks(&identity("root")));
    assert!(check(Need::keys(Space::Raw, true, [APP_RAW])).is_ok());
    assert!(check(Need::keys(Space::Txn, true, [APP_TXN])).is_ok());
    assert!(check(Need::range(Space::Raw, false, b"r\0\0\x01", b"r\0\0\x02")).is_ok());
    // V1 transactional keys: read only.
    assert!(check(Need::keys(Space::Txn, false, [b"plain".as_slice()])).is_ok());
    let denied = check(Need::keys(Space::Txn, true, [b"plain".as_slice()])).unwrap_err();
    assert!(denied.starts_with("PERMISSION_DENIED"), "{denied}");
    assert!(denied.contains("\"app\"") && denied.contains("op"), "names who and what: {denied}");
    assert!(denied.contains("transactional"), "{denied}");
    // V1 raw: nothing.
    assert!(check(Need::keys(Space::Raw, false, [b"plain".as_slice()])).is_err());
    // Keyspace 0 is not granted, and a batch touching it is refused whole.
    let mixed = Need::keys(Space::Raw, true, [APP_RAW, DEFAULT_RAW]);
    assert!(check(mixed).unwrap_err().contains("keyspace 0"));
    // A range leaving the keyspace, an unbounded one, a reverse-scan style range.
    assert!(check(Need::range(Space::Raw, false, b"r\0\0\x01", b"r\0\0\x03")).is_err());
    assert!(check(Need::range(Space::Raw, false, b"r\0\0\x01", b"")).is_err());
    assert!(check(Need::range(Space::Raw, false, b"", b"r\0\0\x02")).is_err());
    // A raw request for a transactional-looking key is V1 raw, which it may not touch.
    assert!(check(Need::keys(Space::Raw, false, [APP_TXN])).is_err());
    assert!(check(Need::Admin).unwrap_err().contains("admins"));
    assert!(authz.may_see_keyspace(&app, 1));
    assert!(!authz.may_see_keyspace(&app, 0));
}

#[test]
fn keys_of_keyspaces_that_do_not_exist_are_v1_keys() {
    let grant = Grant { name: "v1".into(), raw_v1: Access::ReadWrite as i32, ..Default::default() };
    let authz = authz(true, vec![grant]);
    let v1 = identity("v1");
    // "rabbit" reads as keyspace 0x616262, which does not exist.
    assert!(authz
        .check(&v1, "raw_put", &Need::keys(Space::Raw, true, [b"rabbit".as_slice()]))
        .is_ok());
    assert!(authz.check(&v1, "raw_put", &Need::keys(Space::Raw, true, [b"r".as_slice()])).is_ok());
    assert!(authz.check(&v1, "raw_put", &Need::keys(Space::Raw, true, [DEFAULT_RAW])).is_err());
    // A V1 scan across keyspace 0's range would return its keys.
    assert!(authz.check(&v1, "raw_scan", &Need::range(Space::Raw, false, b"a", b"z")).is_err());
    assert!(authz.check(&v1, "raw_scan", &Need::range(Space::Raw, false, b"s", b"")).is_ok());
}

#[test]
fn admins_and_nodes_may_do_everything_and_no_grant_means_nothing() {
    let ops = Grant { name: "ops".into(), admin: true, ..Default::default() };
    let authz = authz(true, vec![ops]);
    let write_all = Need::range(Space::Txn, true, b"", b"");
    for name in ["root", "ops"] {
        assert!(authz.check(&identity(name), "kv_gc", &Need::Admin).is_ok());
        assert!(authz.check(&identity(name), "kv_prewrite", &write_all).is_ok());
        assert!(authz.is_admin(&identity(name)));
    }
    let node = PeerIdentity { node: true, ..identity("node") };
    assert!(authz.check(&node, "kv_prewrite", &write_all).is_ok());
    let denied =
        authz.check(&identity("nobody"), "raw_get", &Need::keys(Space::Raw, false, [APP_RAW]));
    assert!(denied.unwrap_err().contains("no grant"));
    assert!(!authz.may_see_keyspace(&identity("nobody"), 1));
}

#[test]
fn a_change_of_grants_is_published_and_nothing_else_republishes() {
    let authz = Authz::new(vec![]);
    let mut state = state(true, vec![]);
    authz.publish(&state);
    let first = authz.policy();
    authz.publish(&state);
    assert!(Arc::ptr_eq(&first, &authz.policy()), "no change, no new policy");
    let command = Command::new(Kind::SetGrant(app_writer())).encode_to_vec();
    state.apply(&command, &mut WriteBatch::new());
    authz.publish(&state);
    assert!(authz
        .check(&identity("app"), "raw_put", &Need::keys(Space::Raw, true, [APP_RAW]))
        .is_ok());
}
