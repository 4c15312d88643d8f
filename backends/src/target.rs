//! The host target: two Cranelift ISAs (`opt_level` none and speed) built from
//! the features `cranelift_native` detects, and the choices that follow from
//! them (fused multiply-add or not).

use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};

use crate::error::BackendError;

/// The ISAs kernels are compiled for and the host facts lowering depends on.
pub(crate) struct Target {
    /// `opt_level=none`: register-heavy GEMM tiles spill less here (measured,
    /// see docs/ARCHITECTURE.md).
    pub none: OwnedTargetIsa,
    /// `opt_level=speed`: the default for everything else.
    pub speed: OwnedTargetIsa,
    /// Emit `fma`: only when it lowers to one instruction (x86 needs both
    /// AVX and FMA; otherwise Cranelift would call `fmaf` per element).
    pub fma: bool,
    /// The assembled AVX-512 GEMM tiles can run here: x86-64 with AVX-512F
    /// and the System V calling convention they are written for.
    pub avx512_tiles: bool,
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
        let has = |name: &str| {
            speed
                .isa_flags()
                .iter()
                .any(|v| v.name == name && v.as_bool() == Some(true))
        };
        // the JIT targets the host, so the host's architecture is the target's
        let avx512_tiles = cfg!(target_arch = "x86_64")
            && speed.default_call_conv() == cranelift_codegen::isa::CallConv::SystemV
            && has("has_avx512f")
            && fma;
        Ok(Target {
            none,
            speed,
            fma,
            avx512_tiles,
        })
    }

    /// A one-line description for reports: architecture and the features
    /// that matter to kiln.
    pub fn describe(&self) -> String {
        let wanted = ["has_avx", "has_avx2", "has_fma", "has_avx512f", "has_sse41"];
        let feats: Vec<&str> = self
            .speed
            .isa_flags()
            .iter()
            .filter(|v| wanted.contains(&v.name) && v.as_bool() == Some(true))
            .map(|v| v.name)
            .collect();
        format!(
            "{} [{}] fma={} avx512-tiles={}",
            self.speed.triple().architecture,
            feats.join(","),
            self.fma,
            self.avx512_tiles
        )
    }
}
