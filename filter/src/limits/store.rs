//! The host boundary for counters: Envoy's proxy-wasm shared data, a key → bytes map
//! shared by every worker VM, with compare-and-swap. The filter implements
//! `CounterStore` with `get_shared_data`/`set_shared_data`; tests and benches use
//! [`MemoryStore`](super::MemoryStore).

/// Version stamp the host returns with a value; passing it back to `set` makes the write
/// conditional on the entry not having changed since.
pub type Cas = u32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The entry changed since the `cas` given to `set`. The ledger retries on this.
    #[error("shared data entry changed since it was read (CAS mismatch)")]
    CasMismatch,
    /// The host refused the call for another reason (the message says which).
    #[error("shared data unavailable: {0}")]
    Unavailable(String),
    /// Produced by the ledger, never by a store: every one of `attempts` CAS writes to
    /// the counter lost to a concurrent writer, so the ledger gave up instead of spinning.
    #[error("shared data counter `{key}` still contended after {attempts} CAS attempts")]
    Contended { key: String, attempts: u32 },
}

/// A key → bytes map with compare-and-swap, as Envoy's shared data offers it.
pub trait CounterStore {
    /// The value and its cas, or `None` if the key was never written.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError>;

    /// Write `value`. With `Some(cas)` the write fails with [`StoreError::CasMismatch`] if
    /// the entry was written since that cas was read; with `None` it is unconditional.
    /// Like Envoy, a conditional write to an absent key inserts it.
    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError>;
}
