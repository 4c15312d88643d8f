//! ONNX bytes: `import_bytes` never panics; what it accepts verifies, its
//! weights cover the graph, and the graph survives the `.kir` round trip.

#![no_main]

use kiln_frontends::onnx::{ImportOptions, import_bytes};
use kiln_ir::text::{parse, print, structural_diff};
use libfuzzer_sys::fuzz_target;

/// Whether some value's byte size does not fit in `isize`.
///
/// TEMPORARY (issue 18 item 1, the lead's fix): the importer does not yet
/// make the size check the `.kir` parser makes, so an ONNX `Expand` to
/// [2^33, 2^31] imports (tests/corpus/expand_2p33_2p31.onnx) and its text
/// then fails to parse. Such models are skipped here until every frontend
/// rejects them; then delete this and the call.
fn oversized(g: &kiln_ir::Graph) -> bool {
    g.node_ids().any(|id| {
        g.node(id).outputs.iter().any(|v| {
            let bytes =
                v.ty.shape
                    .iter()
                    .try_fold(v.ty.dtype.size_bytes(), |acc, &d| acc.checked_mul(d));
            bytes.is_none_or(|b| b > isize::MAX as usize)
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok((model, _report)) = import_bytes(data, &ImportOptions::default()) else {
        return;
    };
    if oversized(&model.graph) {
        return;
    }
    if let Err(e) = kiln_ir::verify(&model.graph) {
        panic!("the importer returned a graph the verifier rejects: {e}");
    }
    if let Err(e) = kiln_ir::verify_weights(&model.graph, &model.weights) {
        panic!("the importer returned weights that do not fit the graph: {e}");
    }
    let text = print(&model.graph);
    let again = parse(&text)
        .unwrap_or_else(|e| panic!("the imported graph's text does not parse: {e}\n{text}"));
    if let Some(d) = structural_diff(&model.graph, &again) {
        panic!("print then parse changed the imported graph: {d}\n{text}");
    }
});
