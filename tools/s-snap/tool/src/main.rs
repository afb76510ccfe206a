//! s-snap-tool.
fn main() {}
