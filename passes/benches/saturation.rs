//! Saturation + extraction time on the two largest zoo graphs the brief
//! names (target: under a second each, stopping by saturation).
//!
//! `cargo bench -p kiln-passes --bench saturation`

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kiln_frontends::zoo::{ZooOptions, build};
use kiln_passes::saturate::{SaturationLimits, saturate};
use kiln_passes::{OptOptions, Stop, convert, cost::CostModel, extract, optimize, rules};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("optimize");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for name in ["mobile_former_508m", "mobilevitv2_200"] {
        let m = build(name, &ZooOptions::default()).expect("zoo model builds");
        // The run being measured must end by saturation, not by a limit.
        let (_, r) = optimize(&m, &OptOptions::default()).expect("optimises");
        assert_eq!(r.stop, Stop::Saturated, "{name}: {}", r.explain());
        group.bench_function(format!("pipeline/{name}"), |b| {
            b.iter(|| optimize(&m, &OptOptions::default()).expect("optimises"))
        });
        // Saturation and extraction alone (no clean-up passes, no folding).
        let rules = rules::all();
        group.bench_function(format!("saturate+extract/{name}"), |b| {
            b.iter(|| {
                let l = convert::load(&m).expect("loads");
                let (eg, _) = saturate(l.egraph, &rules, &SaturationLimits::default());
                let roots: Vec<_> = l.outputs.iter().chain(&l.inputs).copied().collect();
                extract::extract(&eg, &roots, &CostModel::default(), usize::MAX).expect("extracts")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
