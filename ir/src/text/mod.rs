//! The `.kir` text format: printer, parser and a structural comparison.
//!
//! The text is what snapshot tests show, what `kiln opt --emit ir` prints
//! and a model format a user can write by hand. Its grammar, lexical rules
//! and op reference are in docs/ir-text.md. Two guarantees hold and are
//! tested (ir/tests/text_*.rs):
//!
//! - `print(&parse(t)?) == t` for every canonical text `t` (what [`print()`]
//!   produces);
//! - `parse(&print(g))` is [`structurally_equal`] to every verified graph
//!   `g`, provided its float attributes hold no NaN other than the canonical
//!   one (every NaN prints as `NaN`) and its types are no larger than
//!   `isize::MAX` bytes (the parser refuses types no allocation could hold).
//!
//! ```
//! use kiln_ir::text::{parse, print};
//!
//! let src = "\
//! graph tiny {
//!   input %x : f32[1,4]
//!   %0 = softmax(%x) {axis=1} : f32[1,4]
//!   output %0
//! }
//! ";
//! let g = parse(src).unwrap();
//! assert_eq!(print(&g), src);
//!
//! let err = parse("graph t {\n  output %y\n}\n").unwrap_err();
//! assert_eq!(err.to_string(), "line 2, column 10: undefined value %y");
//! ```

mod lexer;
mod parse;
mod print;

use std::collections::HashMap;

use crate::error::IrError;
use crate::graph::{Graph, NodeId, Value};

/// Prints a graph as canonical `.kir` text.
///
/// Never fails: a graph the verifier would reject (only the raw graph API can
/// build one) still prints, as faithfully as the text can say it, so that it
/// can be looked at; parsing that text back then reports the problem.
pub fn print(g: &Graph) -> String {
    print::print(g)
}

/// Parses `.kir` text into a verified graph.
///
/// Every error is an [`IrError::Parse`] with the 1-based line and column of
/// the offending token, or of the definition of the node the verifier
/// rejects. Never panics, whatever the input.
pub fn parse(src: &str) -> Result<Graph, IrError> {
    parse::parse(src)
}

/// Whether two graphs are the same computation written the same way. See
/// [`structural_diff`].
pub fn structurally_equal(a: &Graph, b: &Graph) -> bool {
    structural_diff(a, b).is_none()
}

/// The first difference between two graphs, or `None` when they are
/// structurally equal: same name; same inputs and weights (names and types,
/// in order); the same computing nodes in topological order, each with the
/// same op, output names and types, and operands (compared by position in
/// that order, so node ids need not agree); the same outputs.
///
/// This is the equality the text format preserves: `parse(&print(g))` equals
/// `g` in this sense although its node ids differ.
pub fn structural_diff(a: &Graph, b: &Graph) -> Option<String> {
    if a.name != b.name {
        return Some(format!("graph names differ: {:?} vs {:?}", a.name, b.name));
    }
    let (sa, sb) = match (sequence(a), sequence(b)) {
        (Ok(sa), Ok(sb)) => (sa, sb),
        (Err(e), _) | (_, Err(e)) => return Some(format!("cannot order the graph: {e}")),
    };
    for (what, la, lb) in [
        ("inputs", a.inputs(), b.inputs()),
        ("weights", a.weights(), b.weights()),
    ] {
        if la.len() != lb.len() {
            return Some(format!("{} vs {} {what}", la.len(), lb.len()));
        }
    }
    if sa.len() != sb.len() {
        return Some(format!("{} vs {} nodes", sa.len(), sb.len()));
    }
    // A node's place in the sequence is its identity across the two graphs.
    let index = |s: &[NodeId]| -> HashMap<NodeId, usize> {
        s.iter().enumerate().map(|(i, &n)| (n, i)).collect()
    };
    let (ia, ib) = (index(&sa), index(&sb));
    let place = |idx: &HashMap<NodeId, usize>, v: Value| (idx.get(&v.node).copied(), v.output);
    for (&na, &nb) in sa.iter().zip(&sb) {
        let (x, y) = (a.node(na), b.node(nb));
        let here = a.display_node(na);
        if x.op != y.op {
            return Some(format!("{here}: op {} vs {}", x.op, y.op));
        }
        if x.outputs != y.outputs {
            return Some(format!(
                "{here}: outputs {:?} vs {:?}",
                x.outputs, y.outputs
            ));
        }
        let (oa, ob) = (a.operand_edges(na), b.operand_edges(nb));
        let oa: Vec<_> = oa.iter().map(|&(i, v)| (i, place(&ia, v))).collect();
        let ob: Vec<_> = ob.iter().map(|&(i, v)| (i, place(&ib, v))).collect();
        if oa != ob {
            let show = |g: &Graph, n| {
                g.operands(n)
                    .into_iter()
                    .map(|v| g.display_value(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Some(format!(
                "{here}: operands ({}) vs ({})",
                show(a, na),
                show(b, nb)
            ));
        }
    }
    let oa: Vec<_> = a.outputs().iter().map(|&v| place(&ia, v)).collect();
    let ob: Vec<_> = b.outputs().iter().map(|&v| place(&ib, v)).collect();
    if oa != ob {
        return Some(format!(
            "graph outputs differ: {:?} vs {:?}",
            a.outputs()
                .iter()
                .map(|&v| a.display_value(v))
                .collect::<Vec<_>>(),
            b.outputs()
                .iter()
                .map(|&v| b.display_value(v))
                .collect::<Vec<_>>()
        ));
    }
    None
}

/// Inputs, then weights, then the computing nodes in topological order: the
/// order the printer writes them in.
fn sequence(g: &Graph) -> Result<Vec<NodeId>, IrError> {
    let mut s: Vec<NodeId> = g.inputs().to_vec();
    s.extend_from_slice(g.weights());
    s.extend(
        g.topo_order()?
            .into_iter()
            .filter(|&n| !g.node(n).op.is_leaf()),
    );
    Ok(s)
}
