//! The facade's error type: everything `load_model`, `kiln info` and
//! `kiln run` can reject, each message naming the file, node or flag.

use std::path::PathBuf;

use kiln_backends::BackendError;
use kiln_frontends::FrontendError;
use kiln_ir::IrError;

/// Errors of the `kiln` library and CLI. Every variant's message fits on one
/// line, because the CLI prints it as `error: <message>`.
#[derive(Debug, thiserror::Error)]
pub enum KilnError {
    /// The IR rejected a graph or its values (verifier, interpreter).
    #[error(transparent)]
    Ir(#[from] IrError),
    /// The optimiser failed (`kiln opt`): an invalid graph or a broken
    /// optimiser invariant.
    #[error(transparent)]
    Pass(#[from] kiln_passes::PassError),
    /// A frontend could not read a model, weights or tensor file.
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    /// The JIT could not compile or run a model (the message names the node).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A `.kir` file that does not parse or verify; `source` carries the
    /// line and column.
    #[error("{}: {source}", path.display())]
    Kir {
        /// the `.kir` file
        path: PathBuf,
        /// what the parser or verifier said
        source: IrError,
    },
    /// Weight values that do not fit the graph: missing tensors or
    /// mismatched types, all listed (the IR's multi-line message, joined).
    #[error("weights from {from} do not match the graph: {}", summary(problems))]
    Weights {
        /// where the values came from (a file, or "the seeded initialiser")
        from: String,
        /// one entry per missing or mis-typed weight
        problems: Vec<String>,
    },
    /// An input tensor that does not fit the model's input.
    #[error("{0}")]
    Input(String),
    /// A file kiln writes or reads itself (not through a frontend).
    #[error("{}: {source}", path.display())]
    Io {
        /// the file
        path: PathBuf,
        /// the OS error
        source: std::io::Error,
    },
    /// A bad command line or model spec the argument parser cannot see:
    /// an unknown model name, a wrong number of `--input` files, ...
    #[error("{0}")]
    Usage(String),
}

/// The first few problems and a count of the rest: a model with hundreds of
/// weights and a wrong file would otherwise print a screenful on "one line".
fn summary(problems: &[String]) -> String {
    const SHOWN: usize = 6;
    let mut s = problems
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if problems.len() > SHOWN {
        s.push_str(&format!("; and {} more", problems.len() - SHOWN));
    }
    s
}

impl KilnError {
    /// The process exit code the CLI uses for this error: 2 for usage
    /// errors (as clap does for its own), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            KilnError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// A message as the one line the CLI prints after `error: `: its lines
/// joined with `; `, and every other control character (an ANSI escape in
/// an ONNX op type, a NUL in a name) written as a visible escape, so that
/// text from a model file cannot drive the terminal.
pub fn one_line(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for (i, line) in msg.lines().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        for c in line.chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_joins_lines_and_escapes_control_characters() {
        assert_eq!(one_line("a\nb"), "a; b");
        assert_eq!(
            one_line("op '\u{1b}[31mRed' (\u{0}x\t)"),
            "op '\\u{1b}[31mRed' (\\u{0}x\\t)"
        );
        assert_eq!(one_line("plain ünïcode"), "plain ünïcode");
    }
}
