//! The `lynx-router` binary.

fn main() {}
