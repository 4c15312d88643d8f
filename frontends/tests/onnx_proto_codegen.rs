//! Keeps the committed prost code for `onnx.proto` in sync with the vendored
//! schema: regenerates it with protox + prost-build (pure Rust, no system
//! `protoc`) and compares. `KILN_REGEN_ONNX_PROTO=1` rewrites the file.

use std::path::Path;

#[test]
fn generated_onnx_proto_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto_dir = root.join("proto");
    let fds = protox::compile([proto_dir.join("onnx.proto")], [&proto_dir])
        .expect("vendored onnx.proto compiles");
    let out = tempdir();
    prost_build::Config::new()
        .out_dir(&out)
        .compile_fds(fds)
        .expect("prost-build generates code");
    let generated = std::fs::read_to_string(out.join("onnx.rs")).expect("prost wrote onnx.rs");
    let committed_path = root.join("src/onnx/proto/onnx.rs");
    if std::env::var_os("KILN_REGEN_ONNX_PROTO").is_some() {
        std::fs::write(&committed_path, &generated).expect("write generated code");
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: rerun with KILN_REGEN_ONNX_PROTO=1",
        committed_path.display()
    );
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kiln-onnx-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
