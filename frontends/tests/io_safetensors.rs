//! safetensors load/save: hand-built files (the format written out byte by
//! byte here, independent of the crate's writer), unsupported dtypes, and
//! proptests that corrupt files give errors, never panics.

use std::path::{Path, PathBuf};

use kiln_frontends::FrontendError;
use kiln_frontends::safetensors::{load, save};
use kiln_ir::{Tensor, WeightStore};
use proptest::prelude::*;

/// A unique path under cargo's per-test-target temporary directory.
fn tmp(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("io_safetensors_{name}"))
}

/// A safetensors file written by hand: 8-byte little-endian header length,
/// the JSON header, then the raw data. `entries` are (name, dtype, shape, bytes).
fn hand_file(entries: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in entries {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            ",\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            dims.join(","),
            data.len(),
            data.len() + bytes.len()
        ));
        data.extend_from_slice(bytes);
    }
    header.push('}');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn load_bytes(name: &str, bytes: &[u8]) -> Result<WeightStore, FrontendError> {
    let path = tmp(name);
    std::fs::write(&path, bytes).unwrap();
    load(&path)
}

#[test]
fn loads_a_hand_written_file() {
    let i64s: Vec<u8> = [-3i64, 1 << 50]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let bytes = hand_file(&[
        (
            "conv.weight",
            "F32",
            &[2, 1, 1, 2],
            f32_bytes(&[1.0, -2.5, 0.0, 1e-7]),
        ),
        ("shape", "I64", &[2], i64s),
        ("scalar", "F32", &[], f32_bytes(&[4.0])),
    ]);
    let w = load_bytes("hand.safetensors", &bytes).unwrap();
    assert_eq!(w.len(), 3);
    let conv = w.get("conv.weight").unwrap();
    assert_eq!(conv.shape(), &[2, 1, 1, 2]);
    assert_eq!(conv.as_f32().unwrap(), &[1.0, -2.5, 0.0, 1e-7][..]);
    assert_eq!(
        w.get("shape").unwrap().as_i64().unwrap(),
        &[-3, 1 << 50][..]
    );
    assert_eq!(w.get("scalar").unwrap().as_f32().unwrap(), &[4.0][..]);
}

#[test]
fn save_writes_the_documented_layout() {
    let mut w = WeightStore::new();
    w.insert("b", Tensor::from_f32([2], vec![0.5, -1.0]).unwrap());
    w.insert("a", Tensor::from_i64([1], vec![7]).unwrap());
    let path = tmp("layout.safetensors");
    save(&path, &w).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(
        header.contains(r#""b":{"dtype":"F32","shape":[2],"data_offsets":"#),
        "{header}"
    );
    assert!(
        header.contains(r#""a":{"dtype":"I64","shape":[1],"#),
        "{header}"
    );
    // Data: 8 + 8 bytes, each tensor's little-endian bytes present.
    let data = &bytes[8 + n..];
    assert_eq!(data.len(), 16);
    assert!(data.windows(8).any(|d| d == f32_bytes(&[0.5, -1.0])));
    assert!(data.windows(8).any(|d| d == 7i64.to_le_bytes()));
}

#[test]
fn save_then_load_round_trips() {
    let mut w = WeightStore::new();
    w.insert(
        "blocks.0.dw.weight",
        Tensor::from_f32(
            [3, 1, 3, 3],
            (0..27).map(|i| i as f32 - 13.0).collect::<Vec<_>>(),
        )
        .unwrap(),
    );
    w.insert(
        "idx",
        Tensor::from_i64([2, 2], vec![1, -2, 3, i64::MIN]).unwrap(),
    );
    w.insert("empty", Tensor::from_f32([0, 4], Vec::new()).unwrap());
    let path = tmp("round_trip.safetensors");
    save(&path, &w).unwrap();
    assert_eq!(load(&path).unwrap(), w);
}

#[test]
fn unsupported_dtype_names_tensor_and_dtype() {
    let bytes = hand_file(&[
        ("ok", "F32", &[1], f32_bytes(&[1.0])),
        ("head.bias", "F16", &[2], vec![0, 60, 0, 60]),
    ]);
    let msg = load_bytes("f16.safetensors", &bytes)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("head.bias"), "{msg}");
    assert!(msg.contains("F16"), "{msg}");
    assert!(msg.contains("f16.safetensors"), "{msg}");
    let bytes = hand_file(&[("w64", "F64", &[1], 1.0f64.to_le_bytes().to_vec())]);
    let msg = load_bytes("f64.safetensors", &bytes)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("w64") && msg.contains("F64"), "{msg}");
}

#[test]
fn every_truncation_is_an_error_naming_the_file() {
    let bytes = hand_file(&[("w", "F32", &[3], f32_bytes(&[1.0, 2.0, 3.0]))]);
    for cut in 0..bytes.len() {
        let e = load_bytes("truncated.safetensors", &bytes[..cut]).unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, FrontendError::Safetensors(_)),
            "cut {cut}: {msg}"
        );
        assert!(msg.contains("truncated.safetensors"), "cut {cut}: {msg}");
    }
    let msg = load_bytes("truncated.safetensors", &bytes[..bytes.len() - 1])
        .unwrap_err()
        .to_string();
    assert!(msg.contains("truncated"), "{msg}");
}

#[test]
fn inconsistent_headers_are_errors() {
    // shape says 3 elements, offsets cover 2
    let mut bytes = hand_file(&[("w", "F32", &[3], f32_bytes(&[1.0, 2.0]))]);
    assert!(load_bytes("bad_shape.safetensors", &bytes).is_err());
    // not JSON
    bytes = 4u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{{{{");
    let msg = load_bytes("bad_json.safetensors", &bytes)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("not a valid safetensors file"), "{msg}");
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let e = load(&tmp("does_not_exist.safetensors")).unwrap_err();
    assert!(matches!(e, FrontendError::Io { .. }));
    assert!(e.to_string().contains("does_not_exist.safetensors"));
}

fn arb_store() -> impl Strategy<Value = WeightStore> {
    let tensor = prop::collection::vec(0usize..4, 0..4).prop_flat_map(|shape| {
        let n: usize = shape.iter().product();
        let s2 = shape.clone();
        prop_oneof![
            prop::collection::vec(-1e3f32..1e3, n).prop_map(move |v| Tensor::from_f32(
                shape.clone(),
                v
            )
            .unwrap()),
            prop::collection::vec(any::<i64>(), n).prop_map(move |v| Tensor::from_i64(
                s2.clone(),
                v
            )
            .unwrap()),
        ]
    });
    prop::collection::btree_map("[a-z][a-z0-9.]{0,8}", tensor, 0..5).prop_map(|m| {
        let mut w = WeightStore::new();
        for (k, v) in m {
            w.insert(k, v);
        }
        w
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trip_any_store(w in arb_store()) {
        let path = tmp("prop_round_trip.safetensors");
        save(&path, &w).unwrap();
        prop_assert_eq!(load(&path).unwrap(), w);
    }

    #[test]
    fn mutated_files_never_panic(
        w in arb_store(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let path = tmp("prop_mutated.safetensors");
        save(&path, &w).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let keep = cut.index(bytes.len() + 1);
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let _ = load(&path);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let path = tmp("prop_random.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        prop_assert!(load(&path).is_err() || bytes.len() >= 8);
    }
}
