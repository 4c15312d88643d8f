//! Helpers shared by the CLI integration tests: run the real `kiln` binary,
//! find the example files, make scratch paths.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The result of one `kiln` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `kiln` binary built for this test with `args`, from the
/// workspace root.
pub fn kiln<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the kiln binary runs");
    Run {
        // A signal (no code) counts as a failure distinct from every exit code.
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

impl Run {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "kiln failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts the failure contract — exit code `code`, nothing on stdout,
    /// exactly one line `error: ...` on stderr, no panic — and returns that
    /// line.
    pub fn fails_with(&self, code: i32) -> &str {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "kiln panicked: {}",
            self.stderr
        );
        assert_eq!(self.code, code, "stderr: {}", self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line, got: {}", self.stderr);
        assert!(lines[0].starts_with("error: "), "{}", self.stderr);
        lines[0]
    }
}

/// The workspace root (the `kiln` package's manifest directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the hand-written example, e.g. `example("conv_norm_attention.kir")`.
pub fn example(name: &str) -> PathBuf {
    root().join("examples").join(name)
}

/// A scratch path, unique per test crate and name.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln_cli_tests");
    std::fs::create_dir_all(&dir).expect("the target tmp dir is writable");
    dir.join(name)
}

/// The path as a `&str` argument.
pub fn arg(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}
