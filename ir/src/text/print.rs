//! The `.kir` printer: a graph in canonical text form.
//!
//! Canonical means one spelling per graph: inputs, then weights, then the
//! computing nodes in [`Graph::topo_order`], then one `output` line; single
//! spaces after commas between operands and attributes, none inside types and
//! lists; attributes from [`crate::Op::attrs`] (defaults left out). The parser
//! reads this back to an equal graph, and printing that gives the same text.

use std::fmt::Write;

use crate::graph::{Graph, NodeId, Value};

use super::lexer::name;

/// See [`crate::text::print()`].
pub(crate) fn print(g: &Graph) -> String {
    let mut out = String::new();
    // `write!` into a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "graph {} {{", name(&g.name));
    for &id in g.inputs() {
        leaf(&mut out, g, id, "input", '%');
    }
    for &id in g.weights() {
        leaf(&mut out, g, id, "weight", '@');
    }
    // A cyclic graph (only the raw API can make one) still prints, in
    // insertion order, so that the text shows the cycle and parsing it back
    // reports where it is.
    let order = g
        .topo_order()
        .unwrap_or_else(|_| g.node_ids().collect::<Vec<_>>());
    for id in order {
        let node = g.node(id);
        if node.op.is_leaf() {
            continue;
        }
        out.push_str("  ");
        for (i, o) in node.outputs.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "%{}", name(&o.name));
        }
        let _ = write!(out, " = {}(", node.op.name());
        for (i, v) in g.operands(id).into_iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            value(&mut out, g, v);
        }
        out.push(')');
        let attrs = node.op.attrs();
        if !attrs.is_empty() {
            out.push_str(" {");
            for (i, (k, v)) in attrs.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{k}={v}");
            }
            out.push('}');
        }
        out.push_str(" :");
        for (i, o) in node.outputs.iter().enumerate() {
            let sep = if i > 0 { ", " } else { " " };
            let _ = write!(out, "{sep}{}", o.ty);
        }
        out.push('\n');
    }
    out.push_str("  output");
    for (i, v) in g.outputs().iter().enumerate() {
        out.push_str(if i > 0 { ", " } else { " " });
        value(&mut out, g, *v);
    }
    out.push_str("\n}\n");
    out
}

/// `  input %x : f32[1,3]` (one line per value; a valid leaf has exactly one).
fn leaf(out: &mut String, g: &Graph, id: NodeId, keyword: &str, sigil: char) {
    for o in &g.node(id).outputs {
        let _ = writeln!(out, "  {keyword} {sigil}{} : {}", name(&o.name), o.ty);
    }
}

/// `%name` or `@name`. A dangling value (possible only in a graph broken by
/// the raw API) prints as a quoted placeholder that says what is missing;
/// parsing the text back then reports it as undefined.
fn value(out: &mut String, g: &Graph, v: Value) {
    match g.try_value_info(v) {
        Ok(info) => {
            let sigil = if g.is_weight(v) { '@' } else { '%' };
            let _ = write!(out, "{sigil}{}", name(&info.name));
        }
        Err(_) => {
            let missing = format!("<missing node {} output {}>", v.node.index(), v.output);
            let _ = write!(out, "%{}", name(&missing));
        }
    }
}
