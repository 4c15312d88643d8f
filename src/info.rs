//! The `kiln info` report: a model's signature, size and cost, per node, as
//! a plain-text table or JSON.
//!
//! Counting conventions are those of [`kiln_ir::stats`] (documented for
//! users in docs/cli.md): parameters are the elements of the `f32` weights except batch-norm
//! running statistics and scalar constants (reported as buffers);
//! MACs are the multiply-adds of conv2d, matmul and gemm only.

use kiln_ir::{Graph, TensorType, Value, stats};
use serde_json::{Value as Json, json};

/// A graph input or output.
#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    /// value name, without the `%`
    pub name: String,
    /// static type
    pub ty: TensorType,
}

/// One row of the per-node table: a computing node (inputs and weights are
/// not rows).
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// the node's first value, as printed (`%12`)
    pub value: String,
    /// op name (`conv2d`)
    pub op: String,
    /// type of the first value
    pub ty: TensorType,
    /// `f32` elements of the weights this node reads. A weight read by two
    /// nodes counts in both rows, but once in [`Report::params`].
    pub params: u64,
    /// multiply-accumulates ([`stats::node_macs`])
    pub macs: u64,
}

/// Everything `kiln info` shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// the graph's name
    pub name: String,
    /// graph inputs, in order
    pub inputs: Vec<Port>,
    /// graph outputs, in order
    pub outputs: Vec<Port>,
    /// parameter count ([`stats::param_count`])
    pub params: u64,
    /// weight elements that are not parameters ([`stats::buffer_count`])
    pub buffers: u64,
    /// total MACs ([`stats::graph_macs`])
    pub macs: u64,
    /// number of computing nodes (= `layers.len()`)
    pub nodes: usize,
    /// one row per computing node, in topological order
    pub layers: Vec<Layer>,
}

/// Builds the report of a verified graph.
pub fn report(g: &Graph) -> Report {
    let port = |v: Value| {
        let info = g.value_info(v);
        Port {
            name: info.name.clone(),
            ty: info.ty.clone(),
        }
    };
    // A verified graph has a topological order; the insertion order is the
    // fallback that keeps this function total.
    let order = g
        .topo_order()
        .unwrap_or_else(|_| g.node_ids().collect::<Vec<_>>());
    let layers: Vec<Layer> = order
        .into_iter()
        .filter(|&id| !g.node(id).op.is_leaf())
        .map(|id| {
            let node = g.node(id);
            let params = g
                .operands(id)
                .into_iter()
                .filter(|&v| g.is_weight(v) && stats::is_parameter(g, v))
                .map(|v| g.value_type(v).numel() as u64)
                .sum();
            Layer {
                value: g.display_value(Value::of(id)),
                op: node.op.name().to_string(),
                ty: node
                    .outputs
                    .first()
                    .map(|o| o.ty.clone())
                    .unwrap_or_else(|| TensorType::f32(Vec::new())),
                params,
                macs: stats::node_macs(g, id),
            }
        })
        .collect();
    Report {
        name: g.name.clone(),
        inputs: g.inputs().iter().map(|&id| port(Value::of(id))).collect(),
        outputs: g.outputs().iter().map(|&v| port(v)).collect(),
        params: stats::param_count(g),
        buffers: stats::buffer_count(g),
        macs: stats::graph_macs(g),
        nodes: layers.len(),
        layers,
    }
}

/// `1234567` -> `1,234,567`.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `3_450_000` -> `3.45 M`; small numbers unscaled.
fn scaled(n: u64) -> String {
    let x = n as f64;
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.2} K", x / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} M", x / 1e6),
        _ => format!("{:.2} G", x / 1e9),
    }
}

/// The report as plain text: a summary, then the per-node table.
pub fn render_text(r: &Report) -> String {
    let ports = |ps: &[Port]| {
        ps.iter()
            .map(|p| format!("%{} {}", p.name, p.ty))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    out.push_str(&format!("model:   {}\n", r.name));
    out.push_str(&format!("inputs:  {}\n", ports(&r.inputs)));
    out.push_str(&format!("outputs: {}\n", ports(&r.outputs)));
    out.push_str(&format!(
        "params:  {} ({}), plus {} buffer elements (BN running stats, constants)\n",
        grouped(r.params),
        scaled(r.params),
        grouped(r.buffers)
    ));
    out.push_str(&format!(
        "MACs:    {} ({})\n",
        grouped(r.macs),
        scaled(r.macs)
    ));
    out.push_str(&format!("nodes:   {}\n", r.nodes));
    if r.layers.is_empty() {
        return out;
    }
    out.push('\n');
    let rows: Vec<[String; 5]> = r
        .layers
        .iter()
        .map(|l| {
            [
                l.value.clone(),
                l.op.clone(),
                l.ty.to_string(),
                grouped(l.params),
                grouped(l.macs),
            ]
        })
        .collect();
    let header = ["value", "op", "type", "params", "MACs"];
    let mut width = header.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        // Text columns left-aligned, numbers right-aligned. Padded by hand:
        // `format!`'s width is a u16 and panics past 65,535, and a value
        // name can be longer than that.
        let mut row = String::new();
        for (i, (cell, &w)) in cells.iter().zip(&width).enumerate() {
            let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
            if i > 0 {
                row.push_str("  ");
            }
            if i < 3 {
                row.push_str(cell);
                row.push_str(&pad);
            } else {
                row.push_str(&pad);
                row.push_str(cell);
            }
        }
        format!("{}\n", row.trim_end())
    };
    out.push_str(&line(header));
    for row in &rows {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
    out
}

fn type_json(t: &TensorType) -> Json {
    json!({ "dtype": t.dtype.name(), "shape": t.shape })
}

/// The report as a JSON value. Top-level keys: `name`, `inputs`, `outputs`
/// (lists of `{name, dtype, shape}`), `params`, `macs`, `nodes` (integers:
/// scripts rely on these three) and `layers` (`{value, op, dtype, shape,
/// params, macs}` per computing node).
pub fn to_json(r: &Report) -> Json {
    let ports = |ps: &[Port]| -> Vec<Json> {
        ps.iter()
            .map(|p| {
                let mut o = type_json(&p.ty);
                o["name"] = json!(p.name);
                o
            })
            .collect()
    };
    let layers: Vec<Json> = r
        .layers
        .iter()
        .map(|l| {
            let mut o = type_json(&l.ty);
            o["value"] = json!(l.value);
            o["op"] = json!(l.op);
            o["params"] = json!(l.params);
            o["macs"] = json!(l.macs);
            o
        })
        .collect();
    json!({
        "name": r.name,
        "inputs": ports(&r.inputs),
        "outputs": ports(&r.outputs),
        "params": r.params,
        "buffers": r.buffers,
        "macs": r.macs,
        "nodes": r.nodes,
        "layers": layers,
    })
}

/// The report as pretty-printed JSON text, newline-terminated.
pub fn render_json(r: &Report) -> String {
    // Serialising a `serde_json::Value` cannot fail (string keys only).
    serde_json::to_string_pretty(&to_json(r)).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::{BinaryOp, Op, UnaryOp};

    /// x[1,3,8,8] -> two convs sharing weight w (one with bias b) -> add
    /// -> relu -> reshape [4,64] -> matmul with weight p[64,10].
    fn sample() -> Graph {
        let mut g = Graph::new("sample");
        let x = g.add_input("x", TensorType::f32([1, 3, 8, 8])).unwrap();
        let w = g.add_weight("w", TensorType::f32([4, 3, 3, 3])).unwrap();
        let b = g.add_weight("b", TensorType::f32([4])).unwrap();
        let p = g.add_weight("p", TensorType::f32([64, 10])).unwrap();
        let conv = Op::Conv2d {
            stride: [1, 1],
            pad: [1, 1, 1, 1],
            dilation: [1, 1],
            groups: 1,
        };
        let c = g.add(conv.clone(), &[x, w, b]).unwrap();
        let c2 = g.add(conv, &[x, w]).unwrap();
        let s = g.add(Op::Binary(BinaryOp::Add), &[c, c2]).unwrap();
        let r = g.add(Op::Unary(UnaryOp::Relu), &[s]).unwrap();
        let f = g.add(Op::Reshape { shape: vec![4, 64] }, &[r]).unwrap();
        let m = g.add(Op::MatMul, &[f, p]).unwrap();
        g.set_outputs(vec![m]);
        g
    }

    #[test]
    fn report_counts_by_hand() {
        let r = report(&sample());
        assert_eq!(
            r.inputs,
            vec![Port {
                name: "x".into(),
                ty: TensorType::f32([1, 3, 8, 8])
            }]
        );
        assert_eq!(r.outputs[0].ty, TensorType::f32([4, 10]));
        // w 108 + b 4 + p 640, the shared w once
        assert_eq!(r.params, 108 + 4 + 640);
        // each conv: 4*8*8 outputs x 3*3*3 = 6912; matmul 4*10 outputs x 64
        assert_eq!(r.macs, 2 * 6912 + 2560);
        assert_eq!(r.nodes, 6);
        let ops: Vec<&str> = r.layers.iter().map(|l| l.op.as_str()).collect();
        assert_eq!(
            ops,
            ["conv2d", "conv2d", "add", "relu", "reshape", "matmul"]
        );
        let params: Vec<u64> = r.layers.iter().map(|l| l.params).collect();
        assert_eq!(params, [112, 108, 0, 0, 0, 640]);
        assert_eq!(r.layers[5].macs, 2560);
        assert_eq!(r.layers[5].value, "%5");
    }

    #[test]
    fn text_has_summary_and_one_row_per_node() {
        let text = render_text(&report(&sample()));
        assert!(text.contains("inputs:  %x f32[1,3,8,8]\n"), "{text}");
        assert!(
            text.contains(
                "params:  752 (752), plus 0 buffer elements (BN running stats, constants)\n"
            ),
            "{text}"
        );
        assert!(text.contains("MACs:    16,384 (16.38 K)\n"), "{text}");
        assert!(text.contains("nodes:   6\n"), "{text}");
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("value"))
            .collect();
        assert_eq!(table.len(), 7, "{text}");
        assert!(table[6].starts_with("%5") && table[6].contains("matmul"));
        assert!(table[6].ends_with("640  2,560"), "{text}");
    }

    #[test]
    fn json_has_the_keys_scripts_rely_on() {
        let j: Json = serde_json::from_str(&render_json(&report(&sample()))).unwrap();
        assert_eq!(j["params"].as_u64(), Some(752));
        assert_eq!(j["macs"].as_u64(), Some(16384));
        assert_eq!(j["nodes"].as_u64(), Some(6));
        assert_eq!(j["inputs"][0]["name"], "x");
        assert_eq!(j["inputs"][0]["shape"], json!([1, 3, 8, 8]));
        assert_eq!(j["outputs"][0]["dtype"], "f32");
        assert_eq!(j["layers"].as_array().unwrap().len(), 6);
        assert_eq!(j["layers"][0]["params"], 112);
    }

    #[test]
    fn number_formats() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(grouped(100), "100");
        assert_eq!(scaled(26_000_000), "26.00 M");
        assert_eq!(scaled(2_500_000_000), "2.50 G");
    }
}
