//! Authorisation by grants: what each client identity may read, write and administer.
//!
//! With TLS on, every connection carries a [`PeerIdentity`]. While the cluster's
//! authorisation switch is off (the default), every client the certificate rules let in
//! may read and write everything, as in TiKV. Once an admin turns it on
//! (`scandium ctl authorization on`), a client may do only what its grant says:
//!
//! - `admin`: cluster operations (splits, leader transfers, store states, the GC safe
//!   point, scheduler settings, grants), and every key;
//! - read or read-write on keyspaces (API V2), each with its raw and transactional keys;
//! - read or read-write on the API V1 raw and transactional key spaces: the keys outside
//!   every existing keyspace's range (a V1 key such as `x\0\0\0...` lies inside keyspace
//!   0's range and needs a grant on keyspace 0, since V2 clients of that keyspace see it).
//!
//! Names in `admin-cn` are admins whatever the grants say (the first admin, who grants
//! the rest), and nodes may do everything. Checks run in the handlers, against the grants
//! as of the last applied placement command, before anything is proposed: a refused
//! request never reaches Raft, and replicas never judge a command by grants of their own
//! (etcd's apply-time checks let replicas diverge, etcd-io/etcd#11651).

use crate::tls::PeerIdentity;
use scandium_placement::{Access, Grant, PlacementState};
use scandium_types::keyspace::{prefix, prefix_end, RAW_MODE, TXN_MODE};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// The grants as of the last applied placement command, shared by every handler.
#[derive(Debug)]
pub struct Authz {
    admin_cn: Vec<String>,
    policy: RwLock<Arc<Policy>>,
    published: std::sync::atomic::AtomicU64,
}

/// One published set of grants.
#[derive(Debug, Default)]
pub struct Policy {
    on: bool,
    grants: HashMap<String, Grant>,
    keyspaces: BTreeSet<u32>,
}

/// The key spaces a request addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Space {
    /// Raw keys (`Raw*` calls).
    Raw,
    /// Transactional keys (`Kv*` calls).
    Txn,
    /// Either: Region lookups, which name keys without saying which API they serve.
    Any,
}

impl Space {
    fn modes(self) -> &'static [u8] {
        match self {
            Space::Raw => &[RAW_MODE],
            Space::Txn => &[TXN_MODE],
            Space::Any => &[RAW_MODE, TXN_MODE],
        }
    }
}

/// What a request needs: the keys and ranges it touches, or admin.
#[derive(Debug)]
pub enum Need<'a> {
    /// Keys and `[start, end)` ranges (an empty end is unbounded) of one space.
    Keys {
        /// Which keys.
        space: Space,
        /// Whether the request writes (or may write: lock resolution, rollbacks).
        write: bool,
        /// Single keys.
        keys: Vec<&'a [u8]>,
        /// Ranges.
        ranges: Vec<(&'a [u8], &'a [u8])>,
    },
    /// The keys from `from` to the end of the Region the request names (lock
    /// resolution without keys, lock scans without an end). The handler narrows it to
    /// the Region's range; unnarrowed, it counts as everything from `from` on.
    Region {
        /// Which keys.
        space: Space,
        /// Whether the request writes.
        write: bool,
        /// The first key.
        from: &'a [u8],
    },
    /// A cluster operation.
    Admin,
}

impl<'a> Need<'a> {
    /// Reading or writing `keys` of `space`.
    pub fn keys(space: Space, write: bool, keys: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Need::Keys { space, write, keys: keys.into_iter().collect(), ranges: Vec::new() }
    }

    /// Reading or writing the range `[start, end)` of `space`.
    pub fn range(space: Space, write: bool, start: &'a [u8], end: &'a [u8]) -> Self {
        Need::Keys { space, write, keys: Vec::new(), ranges: vec![(start, end)] }
    }

    /// The same keys, written.
    pub fn written(self) -> Self {
        match self {
            Need::Keys { space, keys, ranges, .. } => {
                Need::Keys { space, write: true, keys, ranges }
            }
            Need::Region { space, from, .. } => Need::Region { space, write: true, from },
            Need::Admin => Need::Admin,
        }
    }
}

/// One part of the key space a grant speaks of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    V1(Space),
    Keyspace(u32),
}

impl Authz {
    /// No grants yet, authorisation off; `admin_cn` names admins whatever the grants say.
    pub fn new(admin_cn: Vec<String>) -> Authz {
        Authz {
            admin_cn,
            policy: RwLock::new(Arc::new(Policy::default())),
            published: std::sync::atomic::AtomicU64::new(u64::MAX),
        }
    }

    /// Publishes the grants of `state` if they changed since the last call (the
    /// placement applier calls this after every command; it costs a comparison then).
    pub fn publish(&self, state: &PlacementState) {
        use std::sync::atomic::Ordering;
        let changes = state.authorization_changes();
        if self.published.swap(changes, Ordering::AcqRel) == changes {
            return;
        }
        self.republish(state);
    }

    /// Publishes the grants of `state` (a state loaded whole: from disk or a snapshot).
    /// The keyspaces come along; no command changes them after bootstrap, so the change
    /// count of the grants is enough to tell when to publish again.
    pub fn republish(&self, state: &PlacementState) {
        let policy = Policy {
            on: state.authorization(),
            grants: state.grants().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            keyspaces: state.keyspaces().map(|k| k.id).collect(),
        };
        self.published.store(state.authorization_changes(), std::sync::atomic::Ordering::Release);
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    /// The grants in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Nodes and `admin-cn` names may do everything, whatever the grants say.
    fn exempt(&self, identity: &PeerIdentity) -> bool {
        identity.node || self.admin_cn.contains(&identity.name)
    }

    /// Whether `identity` is an admin: a node, a name in `admin-cn`, or a grant's admin.
    pub fn is_admin(&self, identity: &PeerIdentity) -> bool {
        self.exempt(identity) || self.policy().grants.get(&identity.name).is_some_and(|g| g.admin)
    }

    /// Whether requests of `identity` are checked at all: not exempt, and only with
    /// authorisation on. Handlers ask this before they work out what a request needs, so
    /// that with authorisation off a request costs one look at the published grants.
    pub fn checks(&self, identity: &PeerIdentity) -> bool {
        !self.exempt(identity) && self.policy().on
    }

    /// Whether `identity` may do what `need` says; the refusal names the identity, the
    /// operation and the part of the key space (never a key: keys are user data).
    pub fn check(
        &self,
        identity: &PeerIdentity,
        operation: &str,
        need: &Need,
    ) -> Result<(), String> {
        let policy = self.policy();
        if self.exempt(identity) || !policy.on {
            return Ok(());
        }
        let name = &identity.name;
        let grant = policy.grants.get(name);
        if grant.is_some_and(|g| g.admin) {
            return Ok(());
        }
        type Ranges<'r> = Vec<(&'r [u8], &'r [u8])>;
        let (space, write, keys, ranges): (Space, bool, &[&[u8]], Ranges) = match need {
            Need::Keys { space, write, keys, ranges } => (*space, *write, keys, ranges.clone()),
            Need::Region { space, write, from } => (*space, *write, &[], vec![(*from, b"")]),
            Need::Admin => {
                return Err(format!(
                    "PERMISSION_DENIED: client {name:?} may not call {operation}: it is for \
                     admins"
                ))
            }
        };
        let mut parts = BTreeSet::new();
        for key in keys {
            parts.insert(policy.part_of(space, key));
        }
        for (start, end) in ranges {
            policy.parts_of_range(space, start, end, &mut parts);
        }
        let verb = if write { "write" } else { "read" };
        for part in parts {
            let access = grant.map_or(Access::None, |g| match part {
                Part::V1(Space::Raw) => g.raw_v1(),
                Part::V1(Space::Txn) => g.txn_v1(),
                // A lookup of V1 keys: either V1 grant will do.
                Part::V1(Space::Any) => g.raw_v1().max(g.txn_v1()),
                Part::Keyspace(id) => g.keyspace(id),
            });
            if !access.allows(write) {
                let what = match part {
                    Part::V1(Space::Raw) => "the API V1 raw key space".to_string(),
                    Part::V1(Space::Txn) => "the API V1 transactional key space".to_string(),
                    Part::V1(Space::Any) => "the API V1 key spaces".to_string(),
                    Part::Keyspace(id) => format!("keyspace {id}"),
                };
                let has = match grant {
                    None => "it has no grant".to_string(),
                    Some(_) => format!("its grant there is {}", access.name()),
                };
                return Err(format!(
                    "PERMISSION_DENIED: client {name:?} may not {verb} {what} ({operation}): {has}"
                ));
            }
        }
        Ok(())
    }

    /// Whether `identity` may see keyspace `id` at all (`LoadKeyspace`): with any
    /// grant on it.
    pub fn may_see_keyspace(&self, identity: &PeerIdentity, id: u32) -> bool {
        let policy = self.policy();
        self.exempt(identity)
            || !policy.on
            || policy
                .grants
                .get(&identity.name)
                .is_some_and(|g| g.admin || g.keyspace(id) != Access::None)
    }
}

/// Who made a request, with the grants to judge it by: what the TLS listener puts in
/// every request's extensions (none over plaintext, where nothing is checked).
#[derive(Clone)]
pub struct Caller {
    /// The certificate's identity.
    pub identity: Arc<PeerIdentity>,
    /// The grants in force.
    pub authz: Arc<Authz>,
}

impl Caller {
    /// The caller of `request`; `None` over plaintext.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Caller> {
        let identity = request.extensions().get::<Arc<PeerIdentity>>()?.clone();
        let authz = request.extensions().get::<Arc<Authz>>()?.clone();
        Some(Caller { identity, authz })
    }

    /// Puts the caller in `request`'s extensions, as the listener does (for the
    /// commands `BatchCommands` runs through the unary handlers).
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) {
        request.extensions_mut().insert(self.identity.clone());
        request.extensions_mut().insert(self.authz.clone());
    }

    /// [`Authz::check`], counted in `scandium_refused_calls_total` when refused.
    pub fn check(&self, operation: &str, need: &Need) -> Result<(), String> {
        self.authz.check(&self.identity, operation, need).inspect_err(|message| {
            crate::metrics::METRICS.refused_calls.inc();
            tracing::debug!(%message, "refused a request");
        })
    }
}

/// Checks `need` for `caller` ([`Caller::of`]) as a gRPC status: for calls whose responses
/// have no error field of their own (placement calls, whose every error tikv-client 0.4
/// retries alike, and `SplitRegion`).
pub fn check_status(
    caller: &Option<Caller>,
    operation: &str,
    need: &Need,
) -> Result<(), Box<tonic::Status>> {
    let Some(caller) = caller else { return Ok(()) };
    caller
        .check(operation, need)
        .map_err(|message| Box::new(tonic::Status::permission_denied(message)))
}

impl Policy {
    /// The part of `space` that `key` lies in.
    fn part_of(&self, space: Space, key: &[u8]) -> Part {
        if key.len() >= 4 && space.modes().contains(&key[0]) {
            let id = u32::from_be_bytes([0, key[1], key[2], key[3]]);
            if self.keyspaces.contains(&id) {
                return Part::Keyspace(id);
            }
        }
        Part::V1(space)
    }

    /// Adds the parts of `space` that `[start, end)` overlaps. A range that is not
    /// inside one keyspace's range counts as V1 too (the keys between keyspaces are).
    fn parts_of_range(&self, space: Space, start: &[u8], end: &[u8], parts: &mut BTreeSet<Part>) {
        let mut inside_one = false;
        for &mode in space.modes() {
            for &id in &self.keyspaces {
                let (low, high) = (prefix(mode, id), prefix_end(mode, id));
                let overlaps = (end.is_empty() || low.as_slice() < end) && start < high.as_slice();
                if overlaps {
                    parts.insert(Part::Keyspace(id));
                    let within =
                        start >= low.as_slice() && !end.is_empty() && end <= high.as_slice();
                    inside_one |= within;
                }
            }
        }
        if !inside_one {
            parts.insert(Part::V1(space));
        }
    }
}

#[cfg(test)]
mod tests;
