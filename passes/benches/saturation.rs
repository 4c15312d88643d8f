//! Saturation + extraction time on the zoo's largest models (placeholder

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]
//! until the zoo lands: a synthetic conv stack).

use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let _ = c;
}

criterion_group!(benches, bench);
criterion_main!(benches);
