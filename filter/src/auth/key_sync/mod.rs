//! Managed keys and synced subscriptions in Envoy's shared data, where every
//! worker's VM finds them.
//!
//! Layout (all under `maas/`):
//! - `sync/state`: the [`SyncState`] — the control plane's version last
//!   applied, the full-resync epoch, and when the control plane last answered.
//! - `sync/lease`: when the next sync call is due. Every VM ticks; the one
//!   that moves this forward with a CAS write makes the call, so the control
//!   plane sees one caller per gateway, not one per worker.
//! - `sync/subscriptions`: the synced subscriptions, one JSON object by name.
//! - `mkey/<id>`: one entry per managed key id the control plane has.
//! - `mkey-absent/<slot>`: a remembered "the control plane has no such key"
//!   (the id and until when), in a fixed number of slots by the id's hash: a
//!   client sending made-up ids can evict older answers, never grow the map.
//! - `lookup`: the rate counter bounding lookups of never-seen ids.
//!
//! The call loop that fills it (lease, paging, answers, rescheduling) is
//! [`driver`]'s; this module only reads and writes shared data.
//!
//! Invariants:
//! - A key's entry only moves forward: a write carrying an older key version
//!   than the stored one keeps the stored record (a slow lookup answer cannot
//!   undo a revocation the sync already wrote).
//! - A full resync writes every key it lists under the next epoch, page by
//!   page, and makes that epoch current with its last page; from then an
//!   entry of an older epoch is a key the control plane no longer lists and
//!   reads as unknown. Until then both epochs count, so no valid key is
//!   refused mid-resync. The state is written last, so a VM that sees a new
//!   epoch finds every record of it.
//! - Nothing here panics on corrupted bytes: an unreadable entry reads as
//!   absent and the next write replaces it.

use crate::auth::managed_keys::{ManagedKey, SyncDelta};
use crate::limits::{self, CounterStore, LimitGroup, Rate, ReserveError, StoreError};
use serde_json::{Map, Value};

pub mod driver;

pub const STATE_KEY: &str = "maas/sync/state";
pub const LEASE_KEY: &str = "maas/sync/lease";
pub const SUBSCRIPTIONS_KEY: &str = "maas/sync/subscriptions";
const LOOKUP_COUNTER: &str = "maas/lookup";
const ABSENT_SLOTS: u64 = 4096;
const MAX_CAS_ATTEMPTS: u32 = 16;

pub fn key_entry(id: &str) -> String {
    format!("maas/mkey/{id}")
}

/// FNV-1a: the same in every VM and build; what it hashes (key ids,
/// database ids) is not secret.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn absent_slot(id: &str) -> String {
    format!("maas/mkey-absent/{}", fnv1a(id) % ABSENT_SLOTS)
}

/// What the gateway knows of the control plane's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The control plane's version last applied; the next `since`.
    pub version: u64,
    /// Full resyncs applied; key entries of older epochs are void.
    pub epoch: u32,
    /// The epoch a full resync in progress writes (0: none).
    pub resync_epoch: u32,
    /// When the control plane last answered (ms since the epoch); 0: never.
    pub last_ok_ms: u64,
    /// [`store_tag`] of the database the keys come from (0: not known).
    pub store_tag: u32,
    /// The mark of the change at `version`, asked with it (0: none given).
    pub mark: u64,
}

/// A short, non-zero tag of a control plane database's id.
pub fn store_tag(id: &str) -> u32 {
    let hash = fnv1a(id);
    ((hash ^ (hash >> 32)) as u32).max(1)
}

/// Whether an answer tagged `answer` comes from another database than the
/// one `state` synced from.
fn other_store(state: &SyncState, answer: u32) -> bool {
    state.store_tag != 0 && answer != 0 && state.store_tag != answer
}

impl SyncState {
    fn encode(&self) -> [u8; 36] {
        let mut out = [0u8; 36];
        out[..8].copy_from_slice(&self.version.to_le_bytes());
        out[8..12].copy_from_slice(&self.epoch.to_le_bytes());
        out[12..16].copy_from_slice(&self.resync_epoch.to_le_bytes());
        out[16..24].copy_from_slice(&self.last_ok_ms.to_le_bytes());
        out[24..28].copy_from_slice(&self.store_tag.to_le_bytes());
        out[28..].copy_from_slice(&self.mark.to_le_bytes());
        out
    }

    /// Also the 28 bytes an earlier filter in the same Envoy wrote (no mark).
    fn decode(bytes: &[u8]) -> Option<SyncState> {
        if bytes.len() != 28 && bytes.len() != 36 {
            return None;
        }
        let u32_at = |at: usize| {
            bytes
                .get(at..at + 4)?
                .try_into()
                .ok()
                .map(u32::from_le_bytes)
        };
        let u64_at = |at: usize| {
            bytes
                .get(at..at + 8)?
                .try_into()
                .ok()
                .map(u64::from_le_bytes)
        };
        Some(SyncState {
            version: u64_at(0)?,
            epoch: u32_at(8)?,
            resync_epoch: u32_at(12)?,
            last_ok_ms: u64_at(16)?,
            store_tag: u32_at(24)?,
            mark: u64_at(28).unwrap_or(0),
        })
    }

    /// The epoch new key records are written under.
    fn write_epoch(&self) -> u32 {
        if self.resync_epoch != 0 {
            self.resync_epoch
        } else {
            self.epoch
        }
    }

    /// Seconds since the control plane last answered (`None`: it never has).
    pub fn age_secs(&self, now_ms: u64) -> Option<u64> {
        (self.last_ok_ms > 0).then(|| now_ms.saturating_sub(self.last_ok_ms) / 1000)
    }
}

pub fn read_state(store: &dyn CounterStore) -> Result<SyncState, StoreError> {
    Ok(store
        .get(STATE_KEY)?
        .and_then(|(bytes, _)| SyncState::decode(&bytes))
        .unwrap_or_default())
}

fn write_state(store: &dyn CounterStore, state: &SyncState) -> Result<(), StoreError> {
    store.set(STATE_KEY, &state.encode(), None)
}

/// Claims the next sync call if it is due at `now_ms`: true for exactly one
/// caller, which then owns it until `now_ms + hold_ms` (its call's deadline)
/// or until it calls [`schedule_next`] (never more than `hold_ms` ahead).
pub fn try_acquire_lease(store: &dyn CounterStore, now_ms: u64, hold_ms: u64) -> bool {
    let (due, cas) = match store.get(LEASE_KEY) {
        Ok(Some((bytes, cas))) => {
            let due = <[u8; 8]>::try_from(bytes.as_slice()).map_or(0, u64::from_le_bytes);
            (due, Some(cas))
        }
        Ok(None) => (0, None),
        Err(_) => return false,
    };
    // No holder sets a lease further ahead than `hold_ms`: one that is
    // was set before the clock stepped back, and waiting it out would stop
    // the sync (and revocation) for as long as the step.
    if now_ms < due && due - now_ms <= hold_ms {
        return false;
    }
    let until = now_ms.saturating_add(hold_ms).to_le_bytes();
    store.set(LEASE_KEY, &until, cas).is_ok()
}

/// Sets when the next sync call is due.
pub fn schedule_next(store: &dyn CounterStore, at_ms: u64) -> Result<(), StoreError> {
    store.set(LEASE_KEY, &at_ms.to_le_bytes(), None)
}

/// An `mkey/<id>` entry: the key's record and the epoch it was written in.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    epoch: u32,
    key: ManagedKey,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let record = self.key.encode();
        let mut out = Vec::with_capacity(5 + record.len());
        out.push(b'K');
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&record);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Entry> {
        let (&tag, rest) = bytes.split_first()?;
        if tag != b'K' || rest.len() <= 4 {
            return None;
        }
        let (epoch, record) = rest.split_at(4);
        Some(Entry {
            epoch: u32::from_le_bytes(epoch.try_into().ok()?),
            key: ManagedKey::decode(record)?,
        })
    }
}

/// What shared data says of a managed key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(ManagedKey),
    /// The control plane recently said there is no such key.
    Absent,
    /// Never seen (or void since a full resync): ask the control plane.
    Unknown,
}

pub fn lookup(
    store: &dyn CounterStore,
    id: &str,
    epoch: u32,
    now_ms: u64,
) -> Result<Lookup, StoreError> {
    let entry = store
        .get(&key_entry(id))?
        .and_then(|(bytes, _)| Entry::decode(&bytes));
    if let Some(Entry { epoch: e, key }) = entry {
        if e >= epoch {
            return Ok(Lookup::Found(key));
        }
    }
    let absent = store.get(&absent_slot(id))?.is_some_and(|(bytes, _)| {
        let (stored_id, until) = bytes.split_at(bytes.len().saturating_sub(8));
        let until = <[u8; 8]>::try_from(until).map_or(0, u64::from_le_bytes);
        stored_id == id.as_bytes() && now_ms < until
    });
    Ok(if absent {
        Lookup::Absent
    } else {
        Lookup::Unknown
    })
}

/// Writes `key` unless the stored record of the same key is newer, under
/// the later of the two epochs (a record never moves back to an older
/// version, nor to an older epoch).
fn put_key(store: &dyn CounterStore, key: &ManagedKey, epoch: u32) -> Result<(), StoreError> {
    let name = key_entry(&key.id);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (stored, cas) = match store.get(&name)? {
            Some((bytes, cas)) => (Entry::decode(&bytes), Some(cas)),
            None => (None, None),
        };
        let next = match stored {
            Some(old) if old.key.version > key.version => {
                if old.epoch >= epoch {
                    return Ok(());
                }
                Entry {
                    epoch,
                    key: old.key,
                }
            }
            Some(old) => Entry {
                epoch: epoch.max(old.epoch),
                key: key.clone(),
            },
            None => Entry {
                epoch,
                key: key.clone(),
            },
        };
        match store.set(&name, &next.encode(), cas) {
            Err(StoreError::CasMismatch) => continue,
            other => return other,
        }
    }
    Err(StoreError::Contended {
        key: name,
        attempts: MAX_CAS_ATTEMPTS,
    })
}

/// What applying a sync answer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The answer is in; the state it leaves.
    Synced(SyncState),
    /// The answer comes from another database than the keys do (restored or
    /// replaced): nothing was applied, and the next sync asks from 0, which
    /// starts a full resync.
    OtherStore,
}

/// Applies one sync answer. Subscriptions and keys are written before the
/// state that announces them.
pub fn apply(
    store: &dyn CounterStore,
    delta: &SyncDelta,
    now_ms: u64,
) -> Result<Applied, StoreError> {
    let previous = read_state(store)?;
    let tag = delta.store.as_deref().map_or(0, store_tag);
    if !delta.full && other_store(&previous, tag) {
        restart(store, previous, now_ms)?;
        return Ok(Applied::OtherStore);
    }
    // A full answer (re)starts a resync; its later pages continue it.
    let epoch = if delta.full {
        previous.epoch.max(previous.resync_epoch).wrapping_add(1)
    } else {
        previous.write_epoch()
    };
    for key in &delta.keys {
        put_key(store, key, epoch)?;
    }
    let changes_subscriptions =
        delta.full || !delta.subscriptions.is_empty() || !delta.deleted_subscriptions.is_empty();
    if changes_subscriptions {
        let mut synced = if delta.full {
            Map::new()
        } else {
            read_subscriptions(store)?
        };
        for name in &delta.deleted_subscriptions {
            synced.remove(name);
        }
        for sub in &delta.subscriptions {
            if let Some(name) = sub.get("name").and_then(Value::as_str) {
                synced.insert(name.to_string(), sub.clone());
            }
        }
        let bytes = serde_json::to_vec(&synced).unwrap_or_default();
        store.set(SUBSCRIPTIONS_KEY, &bytes, None)?;
    }
    let store_tag = if tag != 0 { tag } else { previous.store_tag };
    let mark = delta.mark.unwrap_or(0);
    let state = if delta.more {
        SyncState {
            version: delta.version,
            epoch: previous.epoch,
            resync_epoch: if epoch == previous.epoch { 0 } else { epoch },
            last_ok_ms: now_ms,
            store_tag,
            mark,
        }
    } else {
        SyncState {
            version: delta.version,
            epoch,
            resync_epoch: 0,
            last_ok_ms: now_ms,
            store_tag,
            mark,
        }
    };
    write_state(store, &state)?;
    Ok(Applied::Synced(state))
}

/// "Nothing changed" from the control plane (its answer tagged with its
/// database, `store_id`, when it says): it is alive.
pub fn confirm(
    store: &dyn CounterStore,
    now_ms: u64,
    store_id: Option<&str>,
) -> Result<Applied, StoreError> {
    let mut state = read_state(store)?;
    if other_store(&state, store_id.map_or(0, store_tag)) {
        if state.version == 0 {
            // Its 304 to `since=0`: another database, and an empty one. That
            // is its whole (empty) key set, so the old database's keys are
            // void now; asking again would get the same 304, at once, for
            // as long as it stays empty.
            let empty = SyncDelta {
                store: store_id.map(str::to_string),
                version: 0,
                mark: None,
                full: true,
                more: false,
                keys: Vec::new(),
                subscriptions: Vec::new(),
                deleted_subscriptions: Vec::new(),
            };
            return apply(store, &empty, now_ms);
        }
        restart(store, state, now_ms)?;
        return Ok(Applied::OtherStore);
    }
    state.last_ok_ms = now_ms;
    write_state(store, &state)?;
    Ok(Applied::Synced(state))
}

/// Makes the next sync ask from 0. The keys stay in force until the full
/// resync that follows replaces them. A resync this one cuts short keeps
/// its epoch number, so the next starts past it: the keys its pages wrote
/// (from the database left behind) are void when the next one ends.
fn restart(store: &dyn CounterStore, mut state: SyncState, now_ms: u64) -> Result<(), StoreError> {
    state.version = 0;
    state.mark = 0;
    state.last_ok_ms = now_ms;
    write_state(store, &state)
}

/// The synced subscriptions by name, as the control plane sent them.
pub fn read_subscriptions(store: &dyn CounterStore) -> Result<Map<String, Value>, StoreError> {
    Ok(store
        .get(SUBSCRIPTIONS_KEY)?
        .and_then(|(bytes, _)| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default())
}

/// Records the answer to a lookup of key `id`: its record (at the current
/// epoch, so it counts at once), or that there is none until `absent_until_ms`.
pub fn record_lookup(
    store: &dyn CounterStore,
    id: &str,
    found: Option<&ManagedKey>,
    absent_until_ms: u64,
) -> Result<(), StoreError> {
    match found {
        // Under the epoch a resync in progress writes, so it outlives it.
        Some(key) => put_key(store, key, read_state(store)?.write_epoch()),
        None => {
            let mut value = id.as_bytes().to_vec();
            value.extend_from_slice(&absent_until_ms.to_le_bytes());
            store.set(&absent_slot(id), &value, None)
        }
    }
}

/// Takes one lookup from the gateway-wide budget of `per_second`.
pub fn take_lookup_budget(store: &dyn CounterStore, per_second: u64, now_secs: u64) -> bool {
    if per_second == 0 {
        return false;
    }
    let rate = Rate {
        amount: per_second,
        window_secs: 1,
    };
    let group = LimitGroup {
        counter_key: LOOKUP_COUNTER.to_string(),
        rates: vec![rate],
    };
    // The hold is never settled: a lookup spent is spent.
    match limits::reserve(store, now_secs, &[(&group, &[1])]) {
        Ok(_) => true,
        Err(ReserveError::Denied(_) | ReserveError::Store(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::KeyDigest;
    use crate::limits::MemoryStore;
    use serde_json::json;

    fn key(id: &str, version: u64, revoked: bool) -> ManagedKey {
        ManagedKey {
            id: id.into(),
            owner: "alice".into(),
            subscription: "team-a".into(),
            salt: [1; 16],
            digest: KeyDigest::of(id),
            expires_at: None,
            revoked,
            version,
        }
    }

    /// `apply` that must sync.
    fn synced(s: &MemoryStore, d: &SyncDelta, now_ms: u64) -> SyncState {
        match apply(s, d, now_ms).unwrap() {
            Applied::Synced(state) => state,
            Applied::OtherStore => panic!("refused as another store"),
        }
    }

    fn delta(version: u64, full: bool, keys: Vec<ManagedKey>) -> SyncDelta {
        SyncDelta {
            store: None,
            version,
            mark: None,
            full,
            more: false,
            keys,
            subscriptions: Vec::new(),
            deleted_subscriptions: Vec::new(),
        }
    }

    #[test]
    fn a_sync_makes_its_keys_findable_and_records_its_version() {
        let s = MemoryStore::default();
        let state = synced(
            &s,
            &delta(5, true, vec![key("aaaaaaaaaaaa", 5, false)]),
            1000,
        );
        assert_eq!(state, read_state(&s).unwrap());
        assert_eq!((state.version, state.epoch, state.last_ok_ms), (5, 1, 1000));
        assert_eq!(state.resync_epoch, 0);
        assert_eq!(
            lookup(&s, "aaaaaaaaaaaa", state.epoch, 0).unwrap(),
            Lookup::Found(key("aaaaaaaaaaaa", 5, false))
        );
        assert_eq!(
            lookup(&s, "bbbbbbbbbbbb", state.epoch, 0).unwrap(),
            Lookup::Unknown
        );
        assert_eq!(state.age_secs(4500), Some(3));
        assert_eq!(SyncState::default().age_secs(4500), None);
    }

    #[test]
    fn an_older_record_never_replaces_a_newer_one() {
        let s = MemoryStore::default();
        synced(&s, &delta(7, true, vec![key("aaaaaaaaaaaa", 7, true)]), 0);
        // A lookup answer fetched before the revocation arrives after it.
        record_lookup(&s, "aaaaaaaaaaaa", Some(&key("aaaaaaaaaaaa", 3, false)), 0).unwrap();
        let Lookup::Found(k) = lookup(&s, "aaaaaaaaaaaa", 1, 0).unwrap() else {
            panic!("record lost")
        };
        assert!(k.revoked, "the revocation stands");
        // A full resync listing the stale version still carries the record
        // into the new epoch.
        synced(&s, &delta(8, true, vec![key("aaaaaaaaaaaa", 3, false)]), 0);
        let Lookup::Found(k) = lookup(&s, "aaaaaaaaaaaa", 2, 0).unwrap() else {
            panic!("record lost in the new epoch")
        };
        assert!(k.revoked);
    }

    #[test]
    fn a_full_resync_voids_keys_it_does_not_list() {
        let s = MemoryStore::default();
        synced(&s, &delta(2, true, vec![key("aaaaaaaaaaaa", 1, false)]), 0);
        synced(&s, &delta(3, false, vec![key("bbbbbbbbbbbb", 3, false)]), 0);
        let state = synced(&s, &delta(9, true, vec![key("bbbbbbbbbbbb", 3, false)]), 0);
        assert_eq!(
            lookup(&s, "aaaaaaaaaaaa", state.epoch, 0).unwrap(),
            Lookup::Unknown
        );
        assert!(matches!(
            lookup(&s, "bbbbbbbbbbbb", state.epoch, 0).unwrap(),
            Lookup::Found(_)
        ));
    }

    #[test]
    fn a_paged_resync_keeps_old_keys_valid_until_its_last_page() {
        let s = MemoryStore::default();
        let a = || key("aaaaaaaaaaaa", 1, false);
        let b = || key("bbbbbbbbbbbb", 2, false);
        let c = || key("cccccccccccc", 3, false);
        let st = synced(&s, &delta(2, true, vec![a(), b()]), 0);
        assert_eq!(st.epoch, 1);
        // The database was reset: a new full resync lists b and c, in two pages.
        let mut page = delta(2, true, vec![b()]);
        page.more = true;
        let mid = synced(&s, &page, 0);
        assert_eq!((mid.epoch, mid.resync_epoch), (1, 2));
        for id in ["aaaaaaaaaaaa", "bbbbbbbbbbbb"] {
            assert!(
                matches!(lookup(&s, id, mid.epoch, 0).unwrap(), Lookup::Found(_)),
                "{id} mid-resync"
            );
        }
        // A lookup during the resync is written under the new epoch.
        record_lookup(&s, "dddddddddddd", Some(&key("dddddddddddd", 4, false)), 0).unwrap();
        let done = synced(&s, &delta(3, false, vec![c()]), 0);
        assert_eq!((done.epoch, done.resync_epoch), (2, 0));
        assert_eq!(
            lookup(&s, "aaaaaaaaaaaa", done.epoch, 0).unwrap(),
            Lookup::Unknown
        );
        for id in ["bbbbbbbbbbbb", "cccccccccccc", "dddddddddddd"] {
            assert!(
                matches!(lookup(&s, id, done.epoch, 0).unwrap(), Lookup::Found(_)),
                "{id} after"
            );
        }
    }

    #[test]
    fn subscriptions_merge_and_delete_and_full_replaces() {
        let s = MemoryStore::default();
        let mut d = delta(1, true, vec![]);
        d.subscriptions = vec![
            json!({"name": "a", "models": [], "limits": "unlimited"}),
            json!({"name": "b", "models": [], "limits": "unlimited"}),
        ];
        synced(&s, &d, 0);
        let mut d = delta(2, false, vec![]);
        d.deleted_subscriptions = vec!["a".into()];
        d.subscriptions = vec![json!({"name": "c", "models": [], "limits": "unlimited"})];
        synced(&s, &d, 0);
        let names: Vec<String> = read_subscriptions(&s).unwrap().keys().cloned().collect();
        assert_eq!(names, ["b", "c"]);
        let mut d = delta(3, true, vec![]);
        d.subscriptions = vec![json!({"name": "z", "models": [], "limits": "unlimited"})];
        synced(&s, &d, 0);
        let names: Vec<String> = read_subscriptions(&s).unwrap().keys().cloned().collect();
        assert_eq!(names, ["z"]);
    }

    #[test]
    fn absence_is_remembered_until_it_expires() {
        let s = MemoryStore::default();
        record_lookup(&s, "cccccccccccc", None, 2000).unwrap();
        assert_eq!(lookup(&s, "cccccccccccc", 0, 1999).unwrap(), Lookup::Absent);
        assert_eq!(
            lookup(&s, "cccccccccccc", 0, 2000).unwrap(),
            Lookup::Unknown
        );
    }

    #[test]
    fn one_caller_wins_the_lease_until_it_expires_or_is_rescheduled() {
        let s = MemoryStore::default();
        assert!(try_acquire_lease(&s, 1000, 500));
        assert!(!try_acquire_lease(&s, 1200, 500), "held");
        assert!(
            try_acquire_lease(&s, 1500, 500),
            "the holder's deadline passed"
        );
        schedule_next(&s, 2250).unwrap();
        assert!(!try_acquire_lease(&s, 2249, 500));
        assert!(try_acquire_lease(&s, 2250, 500));
    }

    #[test]
    fn a_clock_stepped_back_does_not_stop_the_sync() {
        let s = MemoryStore::default();
        schedule_next(&s, 1_000_000).unwrap();
        assert!(!try_acquire_lease(&s, 999_500, 500), "due in 500 ms");
        // The clock went back a minute: nothing could have set a lease
        // that far ahead since.
        assert!(try_acquire_lease(&s, 940_000, 500));
        assert!(!try_acquire_lease(&s, 940_100, 500), "held by the new call");
    }

    #[test]
    fn the_lookup_budget_is_per_second_for_everyone() {
        let s = MemoryStore::default();
        let taken = (0..5).filter(|_| take_lookup_budget(&s, 3, 100)).count();
        assert_eq!(taken, 3);
        assert!(take_lookup_budget(&s, 3, 101), "a new second");
        assert!(!take_lookup_budget(&s, 0, 102), "0 disables lookups");
    }

    #[test]
    fn corrupted_entries_read_as_unknown() {
        let s = MemoryStore::default();
        for bytes in [&b""[..], b"K", b"Kxxxxgarbage", b"N12", b"Q"] {
            s.set(&key_entry("dddddddddddd"), bytes, None).unwrap();
            assert_eq!(lookup(&s, "dddddddddddd", 0, 0).unwrap(), Lookup::Unknown);
        }
        s.set(STATE_KEY, b"short", None).unwrap();
        assert_eq!(read_state(&s).unwrap(), SyncState::default());
    }

    #[test]
    fn a_state_written_by_an_earlier_filter_reads_without_a_mark() {
        let s = MemoryStore::default();
        let state = SyncState {
            version: 41,
            epoch: 3,
            resync_epoch: 0,
            last_ok_ms: 77,
            store_tag: 9,
            mark: 0xfeed,
        };
        write_state(&s, &state).unwrap();
        assert_eq!(read_state(&s).unwrap(), state);
        // Its 28 bytes: the same fields, no mark (the next sync asks without).
        s.set(STATE_KEY, &state.encode()[..28], None).unwrap();
        assert_eq!(read_state(&s).unwrap(), SyncState { mark: 0, ..state });
    }

    #[test]
    fn absence_never_hides_a_key_and_slots_are_per_id() {
        let s = MemoryStore::default();
        record_lookup(&s, "cccccccccccc", None, 2000).unwrap();
        // Another id, whatever slot it lands in, does not read as absent.
        assert_eq!(lookup(&s, "dddddddddddd", 0, 0).unwrap(), Lookup::Unknown);
        // A late "no such key" for a key the sync has since brought.
        synced(&s, &delta(3, true, vec![key("eeeeeeeeeeee", 3, true)]), 0);
        record_lookup(&s, "eeeeeeeeeeee", None, u64::MAX).unwrap();
        assert!(matches!(lookup(&s, "eeeeeeeeeeee", 1, 0).unwrap(), Lookup::Found(k) if k.revoked));
    }

    #[test]
    fn made_up_ids_fill_a_bounded_number_of_slots() {
        let slots: std::collections::HashSet<String> = (0..20_000u32)
            .map(|i| absent_slot(&format!("{i:012}")))
            .collect();
        assert!(slots.len() <= ABSENT_SLOTS as usize);
    }

    #[test]
    fn a_stale_epoch_never_demotes_a_record() {
        let s = MemoryStore::default();
        let k = key("gggggggggggg", 5, false);
        let st = synced(&s, &delta(5, true, vec![k.clone()]), 0);
        // A lookup that read the epoch before the resync writes the same
        // version under the old one.
        put_key(&s, &k, st.epoch - 1).unwrap();
        assert!(matches!(
            lookup(&s, "gggggggggggg", st.epoch, 0).unwrap(),
            Lookup::Found(_)
        ));
    }

    #[test]
    fn an_answer_from_another_database_restarts_the_sync_from_zero() {
        let s = MemoryStore::default();
        let mut first = delta(40, true, vec![key("aaaaaaaaaaaa", 3, false)]);
        first.store = Some("db-one".into());
        first.mark = Some(0x40);
        let st = synced(&s, &first, 0);
        assert_eq!((st.store_tag, st.mark), (store_tag("db-one"), 0x40));
        // A restored database, already past version 40, answers incrementally.
        let mut other = delta(55, false, vec![key("bbbbbbbbbbbb", 50, false)]);
        other.store = Some("db-two".into());
        assert_eq!(apply(&s, &other, 5).unwrap(), Applied::OtherStore);
        let after = read_state(&s).unwrap();
        assert_eq!(
            (after.version, after.mark),
            (0, 0),
            "the next sync asks from 0"
        );
        assert_eq!(
            lookup(&s, "bbbbbbbbbbbb", after.epoch, 0).unwrap(),
            Lookup::Unknown
        );
        assert!(
            matches!(
                lookup(&s, "aaaaaaaaaaaa", after.epoch, 0).unwrap(),
                Lookup::Found(_)
            ),
            "the old keys stay in force until the resync replaces them"
        );
        // A 304 from it says the same.
        assert_eq!(
            confirm(&s, 6, Some("db-one")).unwrap(),
            Applied::Synced(read_state(&s).unwrap())
        );
        // The full resync from the new database takes over.
        let mut full = delta(55, true, vec![key("bbbbbbbbbbbb", 50, false)]);
        full.store = Some("db-two".into());
        let st = synced(&s, &full, 7);
        assert_eq!(st.store_tag, store_tag("db-two"));
        assert_eq!(
            lookup(&s, "aaaaaaaaaaaa", st.epoch, 0).unwrap(),
            Lookup::Unknown
        );
        assert_eq!(confirm(&s, 8, Some("db-one")).unwrap(), Applied::OtherStore);
        // Answers that name no database are taken as they come.
        let mut unnamed = delta(0, false, vec![]);
        unnamed.version = 60;
        assert!(matches!(
            apply(&s, &unnamed, 9).unwrap(),
            Applied::Synced(_)
        ));
    }

    #[test]
    fn keys_of_a_resync_cut_short_by_another_database_stay_void() {
        let s = MemoryStore::default();
        let mut first = delta(10, true, vec![key("aaaaaaaaaaaa", 1, false)]);
        first.store = Some("db-one".into());
        synced(&s, &first, 0);
        // A second resync from db-one starts (a page with more to come)...
        let mut page = delta(10, true, vec![key("bbbbbbbbbbbb", 2, false)]);
        page.store = Some("db-one".into());
        page.more = true;
        synced(&s, &page, 1);
        // ...and the control plane comes back on another database.
        let mut other = delta(20, false, vec![]);
        other.store = Some("db-two".into());
        assert_eq!(apply(&s, &other, 2).unwrap(), Applied::OtherStore);
        let mut full = delta(20, true, vec![key("cccccccccccc", 20, false)]);
        full.store = Some("db-two".into());
        let st = synced(&s, &full, 3);
        for id in ["aaaaaaaaaaaa", "bbbbbbbbbbbb"] {
            assert_eq!(
                lookup(&s, id, st.epoch, 0).unwrap(),
                Lookup::Unknown,
                "{id}: db-two does not know it"
            );
        }
        assert!(matches!(
            lookup(&s, "cccccccccccc", st.epoch, 0).unwrap(),
            Lookup::Found(_)
        ));
    }

    #[test]
    fn an_empty_other_database_voids_the_old_keys_at_once() {
        let s = MemoryStore::default();
        let mut first = delta(10, true, vec![key("aaaaaaaaaaaa", 1, false)]);
        first.store = Some("db-one".into());
        synced(&s, &first, 0);
        let mut other = delta(20, false, vec![]);
        other.store = Some("db-two".into());
        assert_eq!(apply(&s, &other, 1).unwrap(), Applied::OtherStore);
        // db-two was replaced in turn by db-three, empty: its 304 to since=0.
        let Applied::Synced(st) = confirm(&s, 2, Some("db-three")).unwrap() else {
            panic!("an empty database's 304 asks again at once")
        };
        assert_eq!((st.version, st.store_tag), (0, store_tag("db-three")));
        assert_eq!(
            lookup(&s, "aaaaaaaaaaaa", st.epoch, 0).unwrap(),
            Lookup::Unknown
        );
        assert_eq!(
            confirm(&s, 3, Some("db-three")).unwrap(),
            Applied::Synced(read_state(&s).unwrap()),
            "and it is the database synced from now"
        );
    }
}
