//! Tests that cannot run on this host say so: one line on stderr and one in
//! the skip log that `scripts/test` counts and prints, so a missing tool or
//! CPU feature is reported as a skip — never as a silent pass.

use std::io::Write;

/// The environment variable naming the skip log (`scripts/test` sets it to
/// `target/skipped.txt`, empties it first and prints it at the end).
pub const SKIP_LOG_ENV: &str = "KILN_SKIP_LOG";

/// Records that `test` did not run (or ran only in part) because of
/// `reason`: prints `SKIPPED test: reason` on stderr and appends the same
/// line to the file named by [`SKIP_LOG_ENV`] when it is set.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED {test}: {reason}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        // One write per line with O_APPEND: lines from test threads and
        // test binaries running at once do not interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            eprintln!("warning: could not append to the skip log {path:?}: {e}");
        }
    }
}
