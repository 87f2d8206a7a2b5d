//! The load benchmark's typed half (`benches/load.sh` is the process-owning
//! half): what the gateways under test look like, and what the measurements
//! mean.

pub mod report;
pub mod variants;
