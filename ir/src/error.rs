//! The IR's error type: every way a graph, its text or its values can be wrong.

/// Errors from building, verifying, parsing or interpreting a graph. Each
/// variant that concerns user input says where: the node's printed name
/// (`%12 (conv2d)`), the weight's name, or a line and column.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IrError {
    /// A node is inconsistent: wrong operand count or types, bad attribute,
    /// declared type differing from the inferred one.
    #[error("{node}: {msg}")]
    Node {
        /// the node's printed name, e.g. `%12 (conv2d)`
        node: String,
        /// what is wrong
        msg: String,
    },
    /// The graph contains a cycle; names one node on it.
    #[error("the graph has a cycle through {0}")]
    Cycle(String),
    /// A graph-level problem: duplicate names, missing outputs, a dangling value.
    #[error("{0}")]
    Graph(String),
    /// `.kir` text that does not parse. Line and column are 1-based.
    #[error("line {line}, column {col}: {msg}")]
    Parse {
        /// 1-based line
        line: usize,
        /// 1-based column (in characters)
        col: usize,
        /// what was expected / found
        msg: String,
    },
    /// A tensor whose data does not fit its shape, or an unexpected dtype.
    #[error("tensor: {0}")]
    Tensor(String),
    /// Weight values that do not match the graph's declarations. One error
    /// lists every problem.
    #[error("weights do not match the graph:\n{}", .0.join("\n"))]
    Weights(Vec<String>),
    /// The interpreter was given inputs that do not match the graph.
    #[error("{0}")]
    Input(String),
    /// A resource limit ([`crate::Limits`]) would be exceeded: says what,
    /// the limit, and the `--limit` flag that raises it.
    #[error("{0}")]
    Limit(String),
}
