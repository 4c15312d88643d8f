//! `.npy` reader and writer: files written by numpy itself (see
//! `data/npy/make.py`), every rejection, and proptests that no input panics.

use std::path::{Path, PathBuf};

use kiln_frontends::FrontendError;
use kiln_frontends::npy::{decode, encode, read, write};
use kiln_ir::{DType, Tensor};
use proptest::prelude::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/npy")
        .join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture exists")
}

/// The error message of decoding `bytes`, which must fail.
fn decode_err(bytes: &[u8]) -> String {
    match decode(bytes) {
        Ok(t) => panic!("decoded to {:?}, expected an error", t.ty()),
        Err(e) => e.to_string(),
    }
}

/// The values `make.py` wrote: arange(24) * 0.5 - 3, shape (2, 3, 4).
fn arange_values() -> Vec<f32> {
    (0..24).map(|i| i as f32 * 0.5 - 3.0).collect()
}

#[test]
fn reads_numpy_f32_in_every_format_version() {
    for file in ["f32_v1.npy", "f32_v2.npy", "f32_v3.npy"] {
        let t = read(&fixture(file)).unwrap();
        assert_eq!(t.shape(), &[2, 3, 4], "{file}");
        assert_eq!(t.as_f32().unwrap(), &arange_values()[..], "{file}");
    }
    // The fixtures really are of different versions.
    assert_eq!(fixture_bytes("f32_v2.npy")[6], 2);
    assert_eq!(fixture_bytes("f32_v3.npy")[6], 3);
}

#[test]
fn reads_numpy_i64_scalar_empty_and_vector() {
    let t = read(&fixture("i64.npy")).unwrap();
    assert_eq!(t.dtype(), DType::I64);
    assert_eq!(t.shape(), &[2, 3]);
    assert_eq!(t.as_i64().unwrap(), &[-1, 1 << 40, 7, 0, -(1 << 62), 5][..]);

    let s = read(&fixture("scalar.npy")).unwrap();
    assert_eq!(s.shape(), &[] as &[usize]);
    assert_eq!(s.as_f32().unwrap(), &[3.25][..]);

    let e = read(&fixture("empty.npy")).unwrap();
    assert_eq!(e.shape(), &[0, 3]);
    assert_eq!(e.numel(), 0);

    let v = read(&fixture("vector.npy")).unwrap();
    assert_eq!(v.shape(), &[3]);
    assert_eq!(v.as_f32().unwrap(), &[1.5, -2.0, 1e-30][..]);
}

#[test]
fn encode_writes_what_numpy_save_writes() {
    // Byte-for-byte equality with numpy.save (format 1.0) for every shape
    // kind: n-d, 1-d (the `(3,)` tuple), 0-d, empty, and i64.
    for file in [
        "f32_v1.npy",
        "i64.npy",
        "scalar.npy",
        "empty.npy",
        "vector.npy",
    ] {
        let bytes = fixture_bytes(file);
        let t = decode(&bytes).unwrap();
        assert_eq!(encode(&t).unwrap(), bytes, "{file}");
    }
}

#[test]
fn write_then_read_round_trips_through_a_file() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("io_npy_round_trip.npy");
    let t = Tensor::from_f32([2, 2], vec![1.0, f32::NAN, -0.0, f32::INFINITY]).unwrap();
    write(&path, &t).unwrap();
    let back = read(&path).unwrap();
    let bits =
        |t: &Tensor| -> Vec<u32> { t.as_f32().unwrap().iter().map(|x| x.to_bits()).collect() };
    assert_eq!(back.shape(), t.shape());
    assert_eq!(bits(&back), bits(&t));
}

#[test]
fn unsupported_dtypes_are_named_with_a_conversion() {
    let cases = [
        ("f64.npy", "float64", "a.astype(np.float32)"),
        ("i32.npy", "int32", "a.astype(np.float32)"),
        ("bool.npy", "bool", "a.astype(np.float32)"),
        ("f16.npy", "float16", "a.astype(np.float32)"),
        ("big_endian.npy", "big-endian float32", "a.astype('<f4')"),
        ("structured.npy", "structured", "float32"),
    ];
    for (file, name, fix) in cases {
        let msg = decode_err(&fixture_bytes(file));
        assert!(msg.contains("unsupported dtype"), "{file}: {msg}");
        assert!(msg.contains(name), "{file}: {msg}");
        assert!(msg.contains(fix), "{file}: {msg}");
    }
}

#[test]
fn fortran_order_is_rejected() {
    let msg = decode_err(&fixture_bytes("fortran.npy"));
    assert!(msg.contains("Fortran"), "{msg}");
    assert!(msg.contains("np.ascontiguousarray"), "{msg}");
}

#[test]
fn bad_magic_and_version_are_rejected() {
    assert!(decode_err(b"PK\x03\x04 a zip file").contains("not a .npy file"));
    assert!(decode_err(b"").contains("not a .npy file"));
    assert!(decode_err(b"\x93NUMPY").contains("truncated header"));
    let mut bytes = fixture_bytes("f32_v1.npy");
    bytes[6] = 4;
    assert!(decode_err(&bytes).contains("unsupported format version 4.0"));
}

#[test]
fn truncation_anywhere_is_reported() {
    let bytes = fixture_bytes("f32_v1.npy");
    let data_start = bytes.len() - 24 * 4;
    for cut in 0..bytes.len() {
        let msg = decode_err(&bytes[..cut]);
        let want = if cut < 6 {
            "not a .npy file"
        } else if cut < data_start {
            "truncated header"
        } else {
            "truncated data"
        };
        assert!(msg.contains(want), "cut at {cut}: {msg}");
    }
    let msg = decode_err(&bytes[..bytes.len() - 5]);
    assert!(msg.contains("needs 96 bytes, the file has 91"), "{msg}");
}

#[test]
fn trailing_bytes_are_reported() {
    let mut bytes = fixture_bytes("vector.npy");
    bytes.extend_from_slice(&[0; 3]);
    assert!(decode_err(&bytes).contains("3 unexpected bytes after the data"));
}

/// A format-1.0 file with the given header dict and data.
fn with_header(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    let header = format!("{dict}\n");
    out.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn malformed_header_dicts_are_rejected() {
    let cases = [
        (
            "{'descr': '<f4', 'fortran_order': False}",
            "'shape' is missing",
        ),
        (
            "{'descr': '<f4', 'shape': ()}",
            "'fortran_order' is missing",
        ),
        (
            "{'fortran_order': False, 'shape': ()}",
            "'descr' is missing",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (), 'x': True}",
            "unexpected key 'x'",
        ),
        (
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': ()}",
            "appears twice",
        ),
        (
            "{'descr': '<f4', 'fortran_order': 0, 'shape': ()}",
            "expected a string, True, False or a tuple",
        ),
        (
            "{'descr': '<f4', 'fortran_order': Maybe, 'shape': ()}",
            "expected a string, True, False or a tuple",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1)}",
            "expected a non-negative integer",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': 'big'}",
            "'shape' must be a tuple",
        ),
        (
            "{'descr': (1,), 'fortran_order': False, 'shape': ()}",
            "'descr' must be a string",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': () extra",
            "expected '}'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': ()} tail",
            "only spaces and a newline after the dict",
        ),
        ("{'descr: '<f4'}", "expected ':'"),
        ("{'descr", "not closed"),
        ("'descr'", "expected '{'"),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,)}",
            "too large",
        ),
    ];
    for (dict, want) in cases {
        let msg = decode_err(&with_header(dict, &[0; 4]));
        assert!(msg.contains(want), "{dict}: {msg}");
    }
}

#[test]
fn element_count_overflow_is_reported() {
    let big = usize::MAX / 2;
    let msg = decode_err(&with_header(
        &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({big}, 3), }}"),
        &[],
    ));
    assert!(
        msg.contains("more elements than this machine can address"),
        "{msg}"
    );
    let msg = decode_err(&with_header(
        &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({big},), }}"),
        &[],
    ));
    assert!(
        msg.contains("more bytes than this machine can address"),
        "{msg}"
    );
}

#[test]
fn read_names_the_file() {
    let path = fixture("f64.npy");
    let msg = read(&path).unwrap_err().to_string();
    assert!(msg.contains("f64.npy"), "{msg}");
    let missing = fixture("no_such_file.npy");
    let e = read(&missing).unwrap_err();
    assert!(matches!(e, FrontendError::Io { .. }), "{e}");
    assert!(e.to_string().contains("no_such_file.npy"));
}

fn arb_tensor() -> impl Strategy<Value = Tensor> {
    let shape = prop::collection::vec(0usize..5, 0..5);
    shape.prop_flat_map(|shape| {
        let n: usize = shape.iter().product();
        prop_oneof![
            prop::collection::vec(any::<f32>(), n)
                .prop_map({
                    let shape = shape.clone();
                    move |v| Tensor::from_f32(shape.clone(), v).unwrap()
                })
                .boxed(),
            prop::collection::vec(any::<i64>(), n)
                .prop_map(move |v| Tensor::from_i64(shape.clone(), v).unwrap())
                .boxed(),
        ]
    })
}

/// Bit patterns, so that NaNs compare equal to themselves.
fn bits(t: &Tensor) -> Vec<u64> {
    match (t.as_f32(), t.as_i64()) {
        (Some(v), _) => v.iter().map(|x| u64::from(x.to_bits())).collect(),
        (_, Some(v)) => v.iter().map(|&x| x as u64).collect(),
        _ => unreachable!("a tensor is f32 or i64"),
    }
}

proptest! {
    #[test]
    fn encode_decode_round_trips(t in arb_tensor()) {
        let back = decode(&encode(&t).unwrap()).unwrap();
        prop_assert_eq!(back.ty(), t.ty());
        prop_assert_eq!(bits(&back), bits(&t));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
        // Also behind a valid magic and version, where parsing goes deeper.
        let mut framed = b"\x93NUMPY\x01\x00".to_vec();
        framed.extend_from_slice(&bytes);
        let _ = decode(&framed);
    }

    #[test]
    fn mutated_valid_files_never_panic(
        t in arb_tensor(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encode(&t).unwrap();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = decode(&bytes);
        let keep = cut.index(bytes.len() + 1);
        let _ = decode(&bytes[..keep]);
    }

    #[test]
    fn mutated_headers_never_panic(
        header_edits in prop::collection::vec((0usize..118, prop::sample::select(
            b"{}()[],:'\" 0123456789TrueFalsL<>|f4i8\n\\\x00\xff".to_vec())), 1..8),
    ) {
        // Edits confined to the header, with bytes the parser reacts to,
        // reach its corners much more often than uniform random bytes.
        let mut bytes = fixture_bytes("f32_v1.npy");
        for (i, b) in header_edits {
            bytes[10 + i] = b;
        }
        let _ = decode(&bytes);
    }
}
