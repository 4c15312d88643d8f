//! `kiln opt`: runs the optimiser and renders its report (text or JSON) or
//! the optimised graph (`.kir` text or Graphviz).

use clap::ValueEnum;
use kiln_ir::{Graph, Limits, Model, text};
use kiln_passes::{OptOptions, optimize};

use crate::error::KilnError;

/// What `kiln opt --emit` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// the optimised graph as `.kir` text
    Ir,
    /// the optimised graph as a Graphviz digraph
    Dot,
    /// the Cranelift IR of every kernel the JIT generates for the optimised
    /// graph, each annotated with the node it came from
    Clif,
}

/// Optimises `model` and renders the result: the report (text, or JSON with
/// `json`), or the graph when `emit` is given; plus a note with the
/// timings (for stderr: stdout stays reproducible).
pub fn cmd_opt(
    model: &Model,
    json: bool,
    emit: Option<Emit>,
    limits: Limits,
) -> Result<(String, String), KilnError> {
    let opts = OptOptions {
        limits,
        ..OptOptions::default()
    };
    let (opt, report) = optimize(model, &opts)?;
    let out = match emit {
        Some(Emit::Ir) => text::print(&opt.graph),
        Some(Emit::Dot) => to_dot(&opt.graph)?,
        Some(Emit::Clif) => {
            let copts = kiln_backends::CompileOptions {
                limits,
                ..kiln_backends::CompileOptions::default()
            };
            kiln_backends::emit_clif(&opt, &copts)?
        }
        None if json => report.to_json() + "\n",
        None => report.explain(),
    };
    Ok((out, format!("note: {}\n", report.timings())))
}

/// A Graphviz rendering: one box per computing node labelled with its
/// value name and op (fused ops filled), weights left out for readability,
/// inputs and outputs as ellipses.
pub fn to_dot(g: &Graph) -> Result<String, KilnError> {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut s = format!(
        "digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box];\n",
        esc(&g.name)
    );
    for id in g.topo_order()? {
        let n = g.node(id);
        let name = esc(&g.display_value(kiln_ir::Value::of(id)));
        match n.op {
            kiln_ir::Op::Weight => continue,
            kiln_ir::Op::Input => {
                s += &format!("  n{} [label=\"{name}\", shape=ellipse];\n", id.index());
            }
            ref op => {
                let style = if matches!(op, kiln_ir::Op::Fused(_)) {
                    ", style=filled, fillcolor=lightblue"
                } else {
                    ""
                };
                s += &format!(
                    "  n{} [label=\"{name}\\n{}\"{style}];\n",
                    id.index(),
                    esc(op.name())
                );
            }
        }
        for v in g.operands(id) {
            if !g.is_weight(v) {
                s += &format!("  n{} -> n{};\n", v.node.index(), id.index());
            }
        }
    }
    for (i, v) in g.outputs().iter().enumerate() {
        s += &format!(
            "  out{i} [label=\"output {}\", shape=ellipse];\n  n{} -> out{i};\n",
            esc(&g.display_value(*v)),
            v.node.index()
        );
    }
    s += "}\n";
    Ok(s)
}
