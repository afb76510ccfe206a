//! Benchmark of the exception store.
fn main() {}
