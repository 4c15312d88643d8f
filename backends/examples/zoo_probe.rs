//! A developer probe: compiles zoo models, checks them against the
//! interpreter once, and times them at 1 and 2 threads.
//! `cargo run -p kiln-backends --release --example zoo_probe -- NAME...`

use std::time::Instant;

use kiln_backends::{CompileOptions, compile};
use kiln_frontends::zoo::{self, ZooOptions};
use kiln_ir::{Tensor, interp};

fn main() {
    let names: Vec<String> = std::env::args().skip(1).collect();
    for name in names {
        let model = zoo::build(&name, &ZooOptions::default()).unwrap();
        let ty = model
            .graph
            .value_type(kiln_ir::Value::of(model.graph.inputs()[0]))
            .clone();
        let n = ty.numel();
        let data: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let x = Tensor::from_f32(ty.shape.clone(), data).unwrap();
        let t = Instant::now();
        let want = interp::run(&model.graph, &model.weights, std::slice::from_ref(&x)).unwrap();
        let interp_time = t.elapsed();
        for threads in [1, 2] {
            let opts = CompileOptions {
                threads: Some(threads),
                opt_level: if std::env::var("KILN_OPT").as_deref() == Ok("none") {
                    kiln_backends::OptLevel::None
                } else {
                    kiln_backends::OptLevel::Speed
                },
                asm_tiles: std::env::var_os("KILN_NO_ASM").is_none(),
                ..CompileOptions::default()
            };
            let m = compile(&model, &opts).unwrap();
            let mut out = m.run(std::slice::from_ref(&x)).unwrap();
            let (mut maxd, mut maxr) = (0f64, 0f64);
            for (a, b) in out[0]
                .as_f32()
                .unwrap()
                .iter()
                .zip(want[0].as_f32().unwrap())
            {
                maxd = maxd.max((f64::from(*a) - f64::from(*b)).abs());
                maxr = maxr.max(f64::from(*b).abs());
            }
            let mut times = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                m.run_into(std::slice::from_ref(&x), &mut out).unwrap();
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            if threads == 1 && std::env::var_os("KILN_PROFILE").is_some() {
                let mut prof = m.profile(std::slice::from_ref(&x)).unwrap();
                for _ in 0..4 {
                    for (p, q) in prof
                        .iter_mut()
                        .zip(m.profile(std::slice::from_ref(&x)).unwrap())
                    {
                        p.time = p.time.min(q.time);
                    }
                }
                let total: f64 = prof.iter().map(|p| p.time.as_secs_f64()).sum();
                // aggregate by kernel kind (first word of the description)
                let mut by: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
                for p in &prof {
                    let key: String = p
                        .kernel
                        .split([':', '('])
                        .next()
                        .unwrap_or("")
                        .trim()
                        .chars()
                        .take(40)
                        .collect();
                    let e = by.entry(key).or_default();
                    e.0 += p.time.as_secs_f64();
                    e.1 += 1;
                }
                let mut v: Vec<_> = by.into_iter().collect();
                v.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
                println!("profile total {:.2} ms", total * 1e3);
                for (k, (t, n)) in v.iter().take(15) {
                    println!("  {:8.3} ms {:5} x {k}", t * 1e3, n);
                }
                prof.sort_by_key(|p| std::cmp::Reverse(p.time));
                for p in prof.iter().take(12) {
                    println!(
                        "  {:8.3} ms {} {}",
                        p.time.as_secs_f64() * 1e3,
                        p.node,
                        p.kernel
                    );
                }
            }
            let st = m.stats();
            println!(
                "{name} threads={threads}: compile {:.0} ms, {} kernels, arena {:.1} MB, rel err {:.2e}, median {:.2} ms, min {:.2} ms (interp {:.0} ms)",
                st.compile_time.as_secs_f64() * 1e3,
                st.kernels,
                st.arena_bytes as f64 / 1e6,
                maxd / maxr,
                times[times.len() / 2],
                times[0],
                interp_time.as_secs_f64() * 1e3
            );
        }
    }
}
