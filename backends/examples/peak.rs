//! Measures this core's fp32 FMA peak and its read bandwidth by working-set
//! size, the figures kernel efficiencies are quoted against:
//! `cargo run --release -p kiln-backends --example peak`.
//!
//! Each probe runs 12 independent FMA chains (zmm, ymm or xmm), enough to
//! cover the FMA latency on every x86-64 core we know, so the loop
//! is bound by FMA throughput alone. A vendor's datasheet figure can be far
//! off in a VM (this project's issue quoted 175 GFLOP/s; the Zen 4 VM it runs
//! on measures ~117 at both 256 and 512 bits, since Zen 4 executes zmm FMAs
//! as two 256-bit halves), so the efficiency targets use this measurement.

// The probes call `std::arch` intrinsics behind run-time feature checks.
#![allow(unsafe_code)]

use std::time::Instant;

/// FMAs per chain per probe run.
const STEPS: usize = 20_000_000;
/// Probe runs; the median is reported.
const RUNS: usize = 7;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// GFLOP/s of `probe`, which performs `flops` floating-point operations.
fn measure(name: &str, flops: f64, probe: impl Fn() -> f32) {
    let rates: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let sink = probe();
            let dt = t.elapsed().as_secs_f64();
            // keeps the chains alive
            std::hint::black_box(sink);
            flops / dt / 1e9
        })
        .collect();
    println!(
        "{name:<28} median {:6.1} GFLOP/s  (min {:.1}, max {:.1}, {RUNS} runs)",
        median(rates.clone()),
        rates.iter().copied().fold(f64::INFINITY, f64::min),
        rates.iter().copied().fold(0.0, f64::max),
    );
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::STEPS;

    /// An FMA probe `$name`: 12 independent chains of `$vec` (12 cover the
    /// FMA latency on every x86-64 core we know; 24 zmm make LLVM spill),
    /// each running `STEPS` FMAs, then the sum of every lane. The chains
    /// are spelt out (not a loop over an array) so that they stay in
    /// registers.
    macro_rules! probe {
        ($(#[$doc:meta])* $name:ident, $feature:literal, $vec:ty, $set1:ident, $fma:ident) => {
            $(#[$doc])*
            #[target_feature(enable = $feature)]
            pub unsafe fn $name() -> f32 {
                let (b, c) = ($set1(0.999_9), $set1(1e-4));
                let [
                    mut a0,
                    mut a1,
                    mut a2,
                    mut a3,
                    mut a4,
                    mut a5,
                    mut a6,
                    mut a7,
                    mut a8,
                    mut a9,
                    mut a10,
                    mut a11,
                ] = [$set1(0.5); 12];
                for _ in 0..STEPS {
                    a0 = $fma(a0, b, c);
                    a1 = $fma(a1, b, c);
                    a2 = $fma(a2, b, c);
                    a3 = $fma(a3, b, c);
                    a4 = $fma(a4, b, c);
                    a5 = $fma(a5, b, c);
                    a6 = $fma(a6, b, c);
                    a7 = $fma(a7, b, c);
                    a8 = $fma(a8, b, c);
                    a9 = $fma(a9, b, c);
                    a10 = $fma(a10, b, c);
                    a11 = $fma(a11, b, c);
                }
                const LANES: usize = size_of::<$vec>() / 4;
                [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11]
                    .into_iter()
                    .map(|a| {
                        // SAFETY: a vector of `LANES` f32 has the size of
                        // `[f32; LANES]`, and every bit pattern is valid
                        // for both.
                        let lanes: [f32; LANES] = unsafe { std::mem::transmute(a) };
                        lanes.iter().sum::<f32>()
                    })
                    .sum()
            }
        };
    }

    probe!(
        /// zmm chains.
        ///
        /// # Safety
        /// The CPU must have AVX-512F.
        zmm, "avx512f", __m512, _mm512_set1_ps, _mm512_fmadd_ps
    );
    probe!(
        /// ymm chains.
        ///
        /// # Safety
        /// The CPU must have AVX and FMA.
        ymm, "avx,fma", __m256, _mm256_set1_ps, _mm256_fmadd_ps
    );
    probe!(
        /// xmm chains: the width the portable Cranelift tile uses.
        ///
        /// # Safety
        /// The CPU must have FMA.
        xmm, "fma", __m128, _mm_set1_ps, _mm_fmadd_ps
    );
}

/// `Σ buf` with 16 independent accumulators (plain Rust, so the baseline
/// 128-bit loads, which are enough to saturate every level but L1).
fn sum(buf: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for c in buf.chunks_exact(16) {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum()
}

/// Read bandwidth over working sets from L2 to memory, with one thread and
/// with every core (each summing its own slice). A model's weights are read
/// once per inference: with batch 1 the weight stream runs at the rate of
/// the level they fit in, and a second thread helps only as far as the
/// shared levels give it more.
fn bandwidth() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for kb in [256usize, 4 << 10, 16 << 10, 64 << 10, 256 << 10] {
        let n = kb * 1024 / 4;
        let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        // about 1 GB per run
        let passes = ((1usize << 30) / (4 * n)).max(1);
        // touch it once: page faults are not bandwidth
        std::hint::black_box(sum(&buf));
        let rate = |threads: usize| -> f64 {
            let rates: Vec<f64> = (0..RUNS)
                .map(|_| {
                    let t = Instant::now();
                    std::thread::scope(|s| {
                        for part in buf.chunks(n.div_ceil(threads)) {
                            s.spawn(move || {
                                for _ in 0..passes {
                                    std::hint::black_box(sum(std::hint::black_box(part)));
                                }
                            });
                        }
                    });
                    (4 * n * passes) as f64 / t.elapsed().as_secs_f64() / 1e9
                })
                .collect();
            median(rates)
        };
        println!(
            "read {:>7} KB                median {:6.1} GB/s, {:6.1} GB/s on {cores} threads",
            kb,
            rate(1),
            rate(cores)
        );
    }
}

#[cfg(target_arch = "x86_64")]
fn main() {
    bandwidth();
    let steps = STEPS as f64;
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected on this CPU.
        measure("avx-512 (12 zmm chains)", steps * 12.0 * 32.0, || unsafe {
            x86::zmm()
        });
    } else {
        println!("avx-512: not on this CPU, skipped");
    }
    if is_x86_feature_detected!("avx") && is_x86_feature_detected!("fma") {
        // SAFETY: AVX and FMA were detected on this CPU.
        measure("avx2+fma (12 ymm chains)", steps * 12.0 * 16.0, || unsafe {
            x86::ymm()
        });
        // SAFETY: FMA was detected on this CPU.
        measure("f32x4 fma (12 xmm chains)", steps * 12.0 * 8.0, || unsafe {
            x86::xmm()
        });
    } else {
        println!("fma: not on this CPU, skipped");
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    bandwidth();
    // `measure` is x86-only today; keep it referenced so the build is clean.
    let _ = measure;
    println!("the FMA peak probe covers x86-64 only");
}
