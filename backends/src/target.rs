//! The host target: two Cranelift ISAs (`opt_level` none and speed) built from
//! the features `cranelift_native` detects, and the choices that follow from
//! them (fused multiply-add or not).

use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};

use crate::error::BackendError;

/// The ISAs kernels are compiled for and the host facts lowering depends on.
pub(crate) struct Target {
    /// `opt_level=none`: register-heavy GEMM tiles spill less here (measured,
    /// see docs/kernels.md).
    pub none: OwnedTargetIsa,
    /// `opt_level=speed`: the default for everything else.
    pub speed: OwnedTargetIsa,
    /// Emit `fma`: only when it lowers to one instruction (x86 needs both
    /// AVX and FMA; otherwise Cranelift would call `fmaf` per element).
    pub fma: bool,
    /// The widest GEMM tiles that can run here: assembled AVX-512 (x86-64
    /// with AVX-512F) or AVX2 (AVX2 + FMA) tiles, both written for the
    /// System V calling convention, else the Cranelift f32x4 tile.
    pub tiles: TileLevel,
    /// The ISA cannot lower 128-bit vectors (riscv64 without V): every
    /// kernel is scalarised (`scalarize.rs`) before compilation.
    pub scalar: bool,
}

/// Which GEMM tiles (and other assembled functions) a target uses, from the
/// narrowest to the widest; see "Tile levels" in docs/kernels.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TileLevel {
    /// The Cranelift f32x4 tile (4×8) everywhere; nothing assembled.
    F32x4,
    /// Assembled AVX2 + FMA GEMM tiles (6×16, ymm); the other kernels stay
    /// Cranelift code.
    Avx2,
    /// Assembled AVX-512F GEMM tiles (14×32, zmm), transcendental rows and
    /// depthwise interiors.
    Avx512,
}

impl TileLevel {
    /// Every level, narrowest first.
    pub const ALL: [TileLevel; 3] = [TileLevel::F32x4, TileLevel::Avx2, TileLevel::Avx512];

    /// The name `--tiles` takes and reports print (`f32x4`, `avx2`,
    /// `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            TileLevel::F32x4 => "f32x4",
            TileLevel::Avx2 => "avx2",
            TileLevel::Avx512 => "avx512",
        }
    }

    /// The widest level the JIT uses on this host (what `compile` picks
    /// without a cap); `F32x4` when the host cannot be described.
    pub fn host() -> TileLevel {
        Target::host(false).map_or(TileLevel::F32x4, |t| t.tiles)
    }

    /// The level named `s` (see [`TileLevel::name`]).
    pub fn parse(s: &str) -> Option<TileLevel> {
        TileLevel::ALL.into_iter().find(|l| l.name() == s)
    }

    /// The level an ISA with these Cranelift flags supports: x86-64 with
    /// the System V convention only (the assembled code is written for it).
    fn of(isa: &dyn cranelift_codegen::isa::TargetIsa) -> TileLevel {
        let flags = enabled_flags(isa);
        let has = |name: &str| flags.contains(&name);
        let x86_sysv = isa.name() == "x64"
            && isa.default_call_conv() == cranelift_codegen::isa::CallConv::SystemV;
        if !x86_sysv || !isa.has_native_fma() {
            TileLevel::F32x4
        } else if has("has_avx512f") && has("has_avx512vl") {
            // VL: the tiles' last vector of a row may be a ymm16–31
            // (`asm_tile`), which needs EVEX on 256 bits
            TileLevel::Avx512
        } else if has("has_avx2") && has("has_fma") {
            TileLevel::Avx2
        } else {
            TileLevel::F32x4
        }
    }
}

impl std::fmt::Display for TileLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The boolean ISA flags `isa` has switched on (`has_avx2`, `has_lse`, ...).
pub(crate) fn enabled_flags(isa: &dyn cranelift_codegen::isa::TargetIsa) -> Vec<&'static str> {
    isa.isa_flags()
        .iter()
        .filter(|v| v.as_bool() == Some(true))
        .map(|v| v.name)
        .collect()
}

/// Whether `isa` lacks the 128-bit float SIMD every kernel is written in.
/// x86-64 (SSE2) and aarch64 (NEON) always have it; riscv64 only with V.
fn lacks_simd(isa: &dyn cranelift_codegen::isa::TargetIsa) -> bool {
    isa.name() == "riscv64" && !enabled_flags(isa).contains(&"has_v")
}

impl Target {
    /// Detects the host. `verify` runs Cranelift's IR verifier on every
    /// kernel (slower compiles; tests turn it on).
    pub fn host(verify: bool) -> Result<Target, BackendError> {
        let make = |opt: &str| -> Result<OwnedTargetIsa, BackendError> {
            let mut flags = settings::builder();
            let set = |f: &mut settings::Builder, k: &str, v: &str| {
                f.set(k, v)
                    .map_err(|e| BackendError::Jit(format!("setting {k}={v}: {e}")))
            };
            set(&mut flags, "opt_level", opt)?;
            set(
                &mut flags,
                "enable_verifier",
                if verify { "true" } else { "false" },
            )?;
            // Kernel code is position-independent by construction (no
            // relocations), so this only keeps Cranelift from adding a GOT.
            set(&mut flags, "is_pic", "false")?;
            let isa = cranelift_native::builder()
                .map_err(|e| BackendError::Jit(format!("unsupported host: {e}")))?;
            isa.finish(settings::Flags::new(flags))
                .map_err(|e| BackendError::Jit(format!("building the host ISA: {e}")))
        };
        let none = make("none")?;
        let speed = make("speed")?;
        let fma = speed.has_native_fma();
        let tiles = TileLevel::of(&*speed);
        let scalar = lacks_simd(&*speed);
        Ok(Target {
            none,
            speed,
            fma,
            tiles,
            scalar,
        })
    }

    /// The ISAs for an ahead-of-time object: `triple` and `cpu` must be one
    /// of [`AOT_TARGETS`]. Objects are position-independent (they link into
    /// PIE executables and shared libraries).
    pub fn aot(triple: &str, cpu: &str, verify: bool) -> Result<Target, BackendError> {
        let Some((_, levels)) = AOT_TARGETS.iter().find(|(t, _)| *t == triple) else {
            return Err(BackendError::Target(format!(
                "unknown target `{triple}`; supported: {}",
                supported_list()
            )));
        };
        let Some((_, features)) = levels.iter().find(|(c, _)| *c == cpu) else {
            let names: Vec<&str> = levels.iter().map(|(c, _)| *c).collect();
            return Err(BackendError::Target(format!(
                "unknown cpu level `{cpu}` for {triple}; supported: {}",
                names.join(", ")
            )));
        };
        let make = |opt: &str| -> Result<OwnedTargetIsa, BackendError> {
            let err = |e: String| BackendError::Target(format!("{triple} --cpu {cpu}: {e}"));
            let mut flags = settings::builder();
            flags
                .set("opt_level", opt)
                .map_err(|e| err(e.to_string()))?;
            flags
                .set("enable_verifier", if verify { "true" } else { "false" })
                .map_err(|e| err(e.to_string()))?;
            flags
                .set("is_pic", "true")
                .map_err(|e| err(e.to_string()))?;
            let named =
                cranelift_codegen::isa::lookup_by_name(triple).map_err(|e| err(e.to_string()))?;
            let mut isa = if cpu == "native" {
                let host = cranelift_native::builder().map_err(|e| err(e.to_string()))?;
                if host.triple().architecture != named.triple().architecture {
                    return Err(err(format!(
                        "`native` needs the host's architecture ({})",
                        host.triple().architecture
                    )));
                }
                host
            } else {
                named
            };
            for f in *features {
                isa.enable(f)
                    .map_err(|e| err(format!("feature {f}: {e}")))?;
            }
            isa.finish(settings::Flags::new(flags))
                .map_err(|e| err(e.to_string()))
        };
        let none = make("none")?;
        let speed = make("speed")?;
        let fma = speed.has_native_fma();
        // Objects for levels with AVX-512F carry the assembled functions
        // (tiles, transcendentals, depthwise rows) like the JIT; levels
        // with AVX2 + FMA (x86-64-v3) the AVX2 tiles.
        let tiles = TileLevel::of(&*speed);
        let scalar = lacks_simd(&*speed);
        Ok(Target {
            none,
            speed,
            fma,
            tiles,
            scalar,
        })
    }

    /// A one-line description for reports: architecture and the features
    /// that matter to kiln.
    pub fn describe(&self) -> String {
        let wanted = [
            "has_avx",
            "has_avx2",
            "has_fma",
            "has_avx512f",
            "has_avx512vl",
            "has_sse41",
        ];
        let feats: Vec<&str> = enabled_flags(&*self.speed)
            .into_iter()
            .filter(|f| wanted.contains(f))
            .collect();
        format!(
            "{} [{}] fma={} tiles={}{}",
            self.speed.triple().architecture,
            feats.join(","),
            self.fma,
            self.tiles,
            if self.scalar { " scalar" } else { "" }
        )
    }
}

/// A `--cpu` level: its name and the Cranelift settings it enables.
pub type CpuLevel = (&'static str, &'static [&'static str]);

/// Targets of ahead-of-time objects: triple, then each `--cpu` level with
/// the Cranelift ISA settings (presets or flags) it enables; the first level
/// is the default. Kernels use f32x4 vectors throughout, which every level
/// lowers natively except riscv64 `rv64gc`, whose kernels are scalarised.
pub const AOT_TARGETS: &[(&str, &[CpuLevel])] = &[
    (
        "x86_64-unknown-linux-gnu",
        &[
            // SSE4.2, no FMA: kernels multiply and add separately (never
            // calling `fmaf`).
            ("x86-64-v2", &["x86-64-v2"]),
            // AVX2 + FMA (Haswell and later): the assembled AVX2 tiles.
            // Cranelift's preset leaves out AVX itself, without which it
            // emits no FMA (and no VEX encodings); every v3 CPU has it.
            ("x86-64-v3", &["x86-64-v3", "has_avx"]),
            // AVX-512 F/VL/DQ/BW (Skylake-X, Zen 4 and later): the
            // assembled 16-lane functions as well
            // (Cranelift's preset names DQ and VL; the assembled code
            // needs F and VL, for the tiles' ymm16–31 row tails)
            ("x86-64-v4", &["x86-64-v4", "has_avx", "has_avx512f"]),
            // whatever this machine has
            ("native", &[]),
        ],
    ),
    (
        "aarch64-unknown-linux-gnu",
        &[
            // ARMv8.0-A: NEON (and vector FMA) is baseline.
            ("generic", &[]),
            // ARMv8.2-A with LSE atomics (Neoverse N1, Cortex-A76 class).
            ("neoverse-n1", &["has_lse"]),
            ("native", &[]),
        ],
    ),
    (
        "riscv64gc-unknown-linux-gnu",
        &[
            // Plain RV64GC (IMAFDC + Zicsr/Zifencei): Cranelift lowers f32x4
            // only with V, so every kernel is scalarised (docs/aot.md).
            (
                "rv64gc",
                &[
                    "has_m",
                    "has_a",
                    "has_f",
                    "has_d",
                    "has_c",
                    "has_zicsr",
                    "has_zifencei",
                ],
            ),
            // RV64GC plus the V extension with VLEN >= 128: vector kernels.
            (
                "rv64gcv",
                &[
                    "has_m",
                    "has_a",
                    "has_f",
                    "has_d",
                    "has_c",
                    "has_zicsr",
                    "has_zifencei",
                    "has_v",
                    "has_zvl128b",
                ],
            ),
        ],
    ),
];

/// `triple (cpu, cpu, ...)` for every supported target, `; `-separated.
pub fn supported_list() -> String {
    AOT_TARGETS
        .iter()
        .map(|(t, levels)| {
            let names: Vec<&str> = levels.iter().map(|(c, _)| *c).collect();
            format!("{t} (--cpu {})", names.join(" | "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}
