//! ONNX bytes: `import_bytes` never panics; what it accepts verifies, its
//! weights cover the graph, and the graph survives the `.kir` round trip.

#![no_main]

use kiln_frontends::onnx::{ImportOptions, import_bytes};
use kiln_ir::text::{parse, print, structural_diff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((model, _report)) = import_bytes(data, &ImportOptions::default()) else {
        return;
    };
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
