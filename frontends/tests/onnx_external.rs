//! ONNX external data: models whose weights live in side files import to
//! the same model as their self-contained twin, and every bad reference is
//! an error naming the tensor.

mod onnx_common;

use std::path::{Path, PathBuf};

use kiln_frontends::onnx::proto::{ModelProto, StringStringEntryProto, TensorProto};
use kiln_frontends::onnx::{ImportOptions, import, import_bytes, import_proto};
use onnx_common::*;
use prost::Message;

/// A fresh, empty folder for one test.
fn folder(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("onnx_external_{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn entry(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.into()),
        value: Some(value.into()),
    }
}

/// `t` with its values moved out: the raw little-endian bytes are returned
/// and the tensor refers to `location` at `offset` (with `length` unless
/// `None`), as `onnx.save(..., save_as_external_data=True)` writes it.
fn externalise(
    t: &TensorProto,
    location: &str,
    offset: usize,
    length: Option<usize>,
) -> (TensorProto, Vec<u8>) {
    let bytes: Vec<u8> = t.float_data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut e = vec![
        entry("location", location),
        entry("offset", &offset.to_string()),
    ];
    if let Some(l) = length {
        e.push(entry("length", &l.to_string()));
    }
    let out = TensorProto {
        float_data: vec![],
        data_location: Some(1),
        external_data: e,
        ..t.clone()
    };
    (out, bytes)
}

fn conv_model(inits: Vec<TensorProto>) -> ModelProto {
    model(
        13,
        vec![
            node(
                "Conv",
                &["x", "w", "b"],
                &["c"],
                vec![attr_ints("pads", &[1, 1, 1, 1])],
            ),
            node("Add", &["c", "s"], &["y"], vec![]),
        ],
        inits,
        vec![vi("x", FLOAT, &[1, 2, 4, 4])],
        vec![vi("y", FLOAT, &[1, 3, 4, 4])],
    )
}

fn inline_tensors() -> Vec<TensorProto> {
    vec![
        tensor_f32("w", &[3, 2, 3, 3], &data(54, 1)),
        tensor_f32("b", &[3], &data(3, 2)),
        tensor_f32("s", &[1, 3, 1, 1], &data(3, 3)),
    ]
}

/// Writes the conv model with `w` and `b` in `data_file` (`b` after `w`,
/// 64-byte aligned as torch aligns large tensors), `s` inline.
fn write_split(dir: &Path, data_file: &str, w_loc: &str, b_loc: &str) -> PathBuf {
    let t = inline_tensors();
    let (w, wb) = externalise(&t[0], w_loc, 0, Some(216));
    let (b, bb) = externalise(&t[1], b_loc, 256, None);
    let mut blob = wb;
    blob.resize(256, 0);
    blob.extend(bb);
    let p = dir.join(data_file);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, blob).unwrap();
    let path = dir.join("m.onnx");
    std::fs::write(&path, conv_model(vec![w, b, t[2].clone()]).encode_to_vec()).unwrap();
    path
}

fn import_err(path: &Path) -> String {
    match import(path, &ImportOptions::default()) {
        Ok(_) => panic!("import of {} succeeded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn external_weights_import_like_inline_ones() {
    let (want, _) = import_proto(&conv_model(inline_tensors()), &ImportOptions::default()).unwrap();
    for (test, file) in [("same_folder", "m.onnx.data"), ("subfolder", "w/all.bin")] {
        let dir = folder(test);
        let path = write_split(&dir, file, file, file);
        let got = import(&path, &ImportOptions::default()).unwrap();
        assert_eq!(got.weights, want.weights, "{test}");
        assert_eq!(
            kiln_ir::text::print(&got.graph),
            kiln_ir::text::print(&want.graph),
            "{test}"
        );
    }
}

#[test]
fn relative_model_path_resolves_against_its_folder() {
    // Locations are relative to the model's folder, not the working one.
    let dir = folder("relative");
    let path = write_split(&dir, "m.onnx.data", "m.onnx.data", "m.onnx.data");
    let cwd = std::env::current_dir().unwrap();
    let rel = pathdiff(&path, &cwd);
    import(&rel, &ImportOptions::default()).unwrap();
}

/// `path` relative to `base` (both absolute), through `..` as needed.
fn pathdiff(path: &Path, base: &Path) -> PathBuf {
    let p: Vec<_> = path.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}

#[test]
fn location_outside_the_folder_is_refused() {
    let dir = folder("escape");
    std::fs::write(
        dir.parent().unwrap().join("onnx_external_outside.bin"),
        [0u8; 512],
    )
    .unwrap();
    for loc in ["../onnx_external_outside.bin", "/etc/passwd", "w/../../x"] {
        let path = write_split(&dir, "m.onnx.data", loc, "m.onnx.data");
        let e = import_err(&path);
        assert!(
            e.contains("initialiser tensor 'w'") && e.contains("leaves the model's folder"),
            "{loc}: {e}"
        );
    }
}

#[cfg(unix)]
#[test]
fn link_out_of_the_folder_is_refused() {
    let dir = folder("link");
    let outside = dir.parent().unwrap().join("onnx_external_link_target.bin");
    std::fs::write(&outside, [0u8; 512]).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("w.bin")).unwrap();
    let path = write_split(&dir, "m.onnx.data", "w.bin", "m.onnx.data");
    let e = import_err(&path);
    assert!(
        e.contains("tensor 'w'") && e.contains("resolves outside the model's folder"),
        "{e}"
    );
}

#[test]
fn missing_file_names_tensor_and_file() {
    let dir = folder("missing");
    let path = write_split(&dir, "m.onnx.data", "m.onnx.data", "gone.bin");
    let e = import_err(&path);
    assert!(
        e.contains("tensor 'b'") && e.contains("gone.bin") && e.contains("cannot be opened"),
        "{e}"
    );
}

#[test]
fn range_past_the_end_is_refused() {
    let dir = folder("range");
    let t = inline_tensors();
    std::fs::write(dir.join("d.bin"), [0u8; 300]).unwrap();
    let cases = [
        (
            400,
            None,
            "offset 400 is past the end of 'd.bin' (300 bytes)",
        ),
        (200, Some(216), "offset 200 + length 216 is past the end"),
        (0, Some(usize::MAX), "past the end"),
        // In the file, but not the tensor's size.
        (0, Some(8), "raw data has 8 bytes"),
        (100, None, "raw data has 200 bytes"),
    ];
    for (offset, length, want) in cases {
        let (w, _) = externalise(&t[0], "d.bin", offset, length);
        let path = dir.join("m.onnx");
        let m = conv_model(vec![w, t[1].clone(), t[2].clone()]);
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        let e = import_err(&path);
        assert!(e.contains("tensor 'w'") && e.contains(want), "{want}: {e}");
    }
}

#[test]
fn malformed_references_are_errors() {
    let dir = folder("malformed");
    let t = inline_tensors();
    std::fs::write(dir.join("d.bin"), [0u8; 300]).unwrap();
    let (mut w, _) = externalise(&t[0], "d.bin", 0, None);
    w.external_data[1].value = Some("-4".into());
    let (mut no_loc, _) = externalise(&t[0], "d.bin", 0, None);
    no_loc.external_data.remove(0);
    for (bad, want) in [
        (w, "external data offset '-4' is not a byte count"),
        (no_loc, "names no location"),
    ] {
        let path = dir.join("m.onnx");
        let m = conv_model(vec![bad, t[1].clone(), t[2].clone()]);
        std::fs::write(&path, m.encode_to_vec()).unwrap();
        let e = import_err(&path);
        assert!(e.contains("tensor 'w'") && e.contains(want), "{e}");
    }
}

#[test]
fn external_data_needs_a_model_file() {
    let dir = folder("bytes");
    let path = write_split(&dir, "m.onnx.data", "m.onnx.data", "m.onnx.data");
    let bytes = std::fs::read(path).unwrap();
    let e = import_bytes(&bytes, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tensor 'w'") && e.contains("import the file by its path"),
        "{e}"
    );
}
