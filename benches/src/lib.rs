//! Benchmarks live in `benches/benches/*.rs` (criterion, hot paths) and
//! `benches/load.sh` (whole system under wrk). This library is intentionally empty.
