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

    /// Runs `STEPS` FMAs on each listed accumulator. The chains are spelt
    /// out (not a loop over an array) so that they stay in registers.
    macro_rules! chains {
        ($fma:ident($b:ident, $c:ident); $($a:ident)*) => {
            for _ in 0..STEPS {
                $($a = $fma($a, $b, $c);)*
            }
        };
    }

    /// 12 zmm chains (24 make LLVM spill some of them).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn zmm() -> f32 {
        let (b, c) = (_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-4));
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
        ] = [_mm512_set1_ps(0.5); 12];
        chains!(_mm512_fmadd_ps(b, c); a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 a10 a11);
        [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11]
            .iter()
            .map(|&a| _mm512_reduce_add_ps(a))
            .sum()
    }

    /// 12 ymm chains.
    ///
    /// # Safety
    /// The CPU must have AVX and FMA.
    #[target_feature(enable = "avx,fma")]
    pub unsafe fn ymm() -> f32 {
        let (b, c) = (_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-4));
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
        ] = [_mm256_set1_ps(0.5); 12];
        chains!(_mm256_fmadd_ps(b, c); a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 a10 a11);
        let acc = [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11];
        let mut out = [0f32; 8];
        let mut sum = 0.0;
        for a in acc {
            // SAFETY: `out` holds 8 floats, one ymm.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), a) };
            sum += out.iter().sum::<f32>();
        }
        sum
    }

    /// 12 xmm chains: the width the portable Cranelift tile uses.
    ///
    /// # Safety
    /// The CPU must have FMA.
    #[target_feature(enable = "fma")]
    pub unsafe fn xmm() -> f32 {
        let (b, c) = (_mm_set1_ps(0.999_9), _mm_set1_ps(1e-4));
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
        ] = [_mm_set1_ps(0.5); 12];
        chains!(_mm_fmadd_ps(b, c); a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 a10 a11);
        let acc = [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11];
        let mut out = [0f32; 4];
        let mut sum = 0.0;
        for a in acc {
            // SAFETY: `out` holds 4 floats, one xmm.
            unsafe { _mm_storeu_ps(out.as_mut_ptr(), a) };
            sum += out.iter().sum::<f32>();
        }
        sum
    }
}

/// Read bandwidth of one core over working sets from L2 to memory: a sum
/// over the buffer with 16 independent accumulators (plain Rust, so the
/// baseline 128-bit loads, which are enough to saturate every level but L1).
/// A model's weights are read once per inference: with batch 1 the weight
/// stream runs at the rate of the level they fit in.
fn bandwidth() {
    for kb in [256usize, 4 << 10, 16 << 10, 64 << 10, 256 << 10] {
        let n = kb * 1024 / 4;
        let buf: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        // about 1 GB per run
        let passes = ((1usize << 30) / (4 * n)).max(1);
        let sum = |buf: &[f32]| -> f32 {
            let mut acc = [0f32; 16];
            for c in buf.chunks_exact(16) {
                for (a, x) in acc.iter_mut().zip(c) {
                    *a += x;
                }
            }
            acc.iter().sum()
        };
        // touch it once: page faults are not bandwidth
        std::hint::black_box(sum(&buf));
        let rates: Vec<f64> = (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..passes {
                    std::hint::black_box(sum(std::hint::black_box(&buf)));
                }
                (4 * n * passes) as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .collect();
        println!(
            "read {:>7} KB                median {:6.1} GB/s",
            kb,
            median(rates)
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
