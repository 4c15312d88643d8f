//! `.npy` bytes: `decode` never panics; what it accepts encodes and decodes
//! back to the same shape and bits.

#![no_main]

use kiln_frontends::npy::{decode, encode};
use kiln_ir::TensorData;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = decode(data) else {
        return;
    };
    let bytes = encode(&t).unwrap_or_else(|e| panic!("a decoded tensor does not encode: {e}"));
    let back = decode(&bytes).unwrap_or_else(|e| panic!("an encoded tensor does not decode: {e}"));
    assert_eq!(t.shape(), back.shape(), "the round trip changed the shape");
    match (t.data(), back.data()) {
        (TensorData::F32(a), TensorData::F32(b)) => assert!(
            a.iter()
                .map(|x| x.to_bits())
                .eq(b.iter().map(|x| x.to_bits())),
            "the round trip changed f32 bits"
        ),
        (TensorData::I64(a), TensorData::I64(b)) => {
            assert_eq!(a, b, "the round trip changed i64 values")
        }
        _ => panic!("the round trip changed the dtype"),
    }
});
