//! safetensors bytes: `load_bytes` never panics; what it accepts saves and
//! loads back to the same names, shapes and bits.

#![no_main]

use kiln_frontends::safetensors::{load_bytes, save_bytes};
use kiln_ir::TensorData;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(store) = load_bytes(data) else {
        return;
    };
    let bytes = save_bytes(&store).unwrap_or_else(|e| panic!("a loaded store does not save: {e}"));
    let back = load_bytes(&bytes).unwrap_or_else(|e| panic!("a saved store does not load: {e}"));
    assert_eq!(
        store.len(),
        back.len(),
        "the round trip changed the tensor count"
    );
    for (name, t) in store.iter() {
        let u = back
            .get(name)
            .unwrap_or_else(|| panic!("the round trip lost tensor `{name}`"));
        assert_eq!(
            t.shape(),
            u.shape(),
            "`{name}`: the round trip changed the shape"
        );
        let same = match (t.data(), u.data()) {
            (TensorData::F32(a), TensorData::F32(b)) => a
                .iter()
                .map(|x| x.to_bits())
                .eq(b.iter().map(|x| x.to_bits())),
            (TensorData::I64(a), TensorData::I64(b)) => a == b,
            _ => false,
        };
        assert!(same, "`{name}`: the round trip changed the values or dtype");
    }
});
