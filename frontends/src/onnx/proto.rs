//! The ONNX protobuf schema as Rust types (prost), generated from the
//! vendored `frontends/proto/onnx.proto` (onnx 1.23.2, Apache-2.0).
//!
//! The code in `proto/onnx.rs` is generated once with protox + prost-build
//! (pure Rust, so no system `protoc` is needed) and committed; the test
//! `tests/onnx_proto_codegen.rs` regenerates it and fails when it is stale.
//! It is public so that tests and tools can build models by hand.

// Generated code: its items carry the .proto comments rather than our docs,
// and prost's output is not written to our lint standard.
#![allow(missing_docs, clippy::all, unused_qualifications)]

include!("proto/onnx.rs");
