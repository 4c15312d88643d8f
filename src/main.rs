//! The `kiln` command line (SKELETON: the CLI work replaces this file).

fn main() {}
