//! Debug helper: prints a zoo model after an ONNX export/import round trip.
use kiln_frontends::onnx::{ImportOptions, export_bytes, import_bytes};
use kiln_frontends::zoo::{ZooOptions, build};
fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or("mobile_former_26m".into());
    let m = build(&name, &ZooOptions::default()).unwrap();
    let (imp, _) = import_bytes(&export_bytes(&m).unwrap(), &ImportOptions::default()).unwrap();
    print!("{}", kiln_ir::text::print(&imp.graph));
}
