//! `MemoryStore`: the host-target double of Envoy's shared data, used by unit tests and
//! benchmarks (it is a plain `pub` type because the crate has no test-support feature).
//!
//! It mirrors proxy-wasm-cpp-host's `SharedData`: one lock over the map, one cas counter
//! for all keys that starts at 1, skips 0 on wrap-around and advances on every write; a
//! conditional write with a stale cas fails, and a conditional write to an absent key
//! inserts it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::store::{Cas, CounterStore, StoreError};

#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Entries>,
}

#[derive(Debug)]
struct Entries {
    values: HashMap<String, (Vec<u8>, Cas)>,
    next_cas: Cas,
}

impl Entries {
    fn take_cas(&mut self) -> Cas {
        let cas = self.next_cas;
        self.next_cas = match self.next_cas.wrapping_add(1) {
            0 => 1,
            next => next,
        };
        cas
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Entries {
                values: HashMap::new(),
                next_cas: 1,
            }),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, Entries>, StoreError> {
        // A thread that panicked while holding the lock (only possible in a test) makes the
        // store unavailable rather than propagating the panic.
        self.inner
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".to_owned()))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl CounterStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        Ok(self.lock()?.values.get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        let mut entries = self.lock()?;
        if let (Some(expected), Some((_, current))) = (cas, entries.values.get(key)) {
            if expected != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        let next = entries.take_cas();
        entries
            .values
            .insert(key.to_owned(), (value.to_vec(), next));
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn behaves_like_envoy_shared_data() {
        let store = MemoryStore::new();
        assert_eq!(store.get("k"), Ok(None));

        // A conditional write to an absent key inserts it.
        store.set("k", b"a", Some(42)).unwrap();
        let (value, cas) = store.get("k").unwrap().unwrap();
        assert_eq!((value.as_slice(), cas), (&b"a"[..], 1));

        // The current cas wins once; the stale one then fails and leaves the value alone.
        store.set("k", b"b", Some(cas)).unwrap();
        assert_eq!(
            store.set("k", b"c", Some(cas)),
            Err(StoreError::CasMismatch)
        );
        let (value, cas) = store.get("k").unwrap().unwrap();
        assert_eq!((value.as_slice(), cas), (&b"b"[..], 2));

        // Unconditional writes always land; the cas counter is shared by all keys.
        store.set("k", b"d", None).unwrap();
        store.set("other", b"x", None).unwrap();
        assert_eq!(store.get("k").unwrap().unwrap(), (b"d".to_vec(), 3));
        assert_eq!(store.get("other").unwrap().unwrap(), (b"x".to_vec(), 4));
    }

    #[test]
    fn cas_skips_zero_on_wrap_around() {
        let store = MemoryStore::new();
        store.lock().unwrap().next_cas = u32::MAX;
        store.set("k", b"a", None).unwrap();
        store.set("k", b"b", None).unwrap();
        assert_eq!(store.get("k").unwrap().unwrap().1, 1);
    }
}
