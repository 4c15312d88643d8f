//! Transposed panels: 16×16 blocks of f32 transposed in zmm registers,
//! assembled at compile time with iced-x86 for AVX-512.
//!
//! A transpose (NCHW ↔ NHWC around channel layer norms, token
//! flattening, attention heads) was copied element by element, a strided
//! load and a store each, at 14–19 GB/s: up to two fifths of PVT v2's
//! time. One call here moves a panel: `a` (at most 16) consecutive source
//! elements — contiguous in the source, one destination row apart — for
//! each of `b` source rows, written as `a` contiguous destination rows of
//! `b`. Sixteen source rows are loaded as sixteen vectors, transposed with
//! the classic four stages (`vunpck{l,h}ps`, `vunpck{l,h}pd`, then two
//! rounds of `vshuff32x4`: 64 shuffles per 256 elements), and stored as
//! sixteen vectors. A panel narrower than 16 loads under an opmask, and
//! the last block of fewer than 16 rows stores under one: nothing outside
//! the panel is read or written. With [`Spec::res`] each destination row
//! adds the residual laid out like the destination before its store (a
//! conv computed transposed, `kernels/conv.rs`, finishes here).
//!
//! Calling convention: System V, `fn(src, dst, res)`: the panel's first
//! source element (rdi), its first destination element (rsi) and residual
//! element (rdx, read only with [`Spec::res`]). Ends with `vzeroupper`.

use iced_x86::code_asm::*;

use super::vector::zmm;

/// One panel shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Spec {
    /// elements per source row (contiguous), 1..=16: destination rows
    pub a: usize,
    /// source rows: elements per destination row (contiguous)
    pub b: usize,
    /// elements from one source row to the next
    pub sb: usize,
    /// elements from one destination row to the next
    pub da: usize,
    /// whether a residual laid out like the destination is added
    pub res: bool,
    /// bytes ahead of the source to prefetch as it is read (0: none): a
    /// banded im2col's next band, whose input rows the hardware
    /// prefetchers do not fetch in time (`kernels/conv.rs`)
    pub ahead: usize,
}

impl Spec {
    /// Whether the panel is assembled: a non-empty block of at most 16
    /// columns, and offsets within the 32-bit displacements.
    pub fn fits(&self) -> bool {
        let far = |x: usize| {
            x.checked_mul(16 * 4)
                .is_some_and(|v| v < i32::MAX as usize / 2)
        };
        (1..=16).contains(&self.a)
            && self.b > 0
            && far(self.sb)
            && far(self.da)
            && self.ahead < i32::MAX as usize / 4
    }

    /// A short name for kernel plans.
    pub fn label(&self) -> String {
        format!(
            "transpose panel {}x{} sb{} da{}{}{}",
            self.a,
            self.b,
            self.sb,
            self.da,
            if self.res { " +res" } else { "" },
            if self.ahead > 0 {
                format!(" prefetch+{}", self.ahead)
            } else {
                String::new()
            }
        )
    }
}

/// The panels' signature, `fn(src, dst, res)` (System V), for the kernels
/// that call them.
pub(crate) fn signature() -> cranelift_codegen::ir::Signature {
    use cranelift_codegen::ir::{AbiParam, Signature, types::I64};
    let mut sig = Signature::new(cranelift_codegen::isa::CallConv::SystemV);
    for _ in 0..3 {
        sig.params.push(AbiParam::new(I64));
    }
    sig
}

/// Assembles `s`; the bytes are position-independent.
pub(crate) fn assemble(s: &Spec) -> Result<Vec<u8>, String> {
    if !s.fits() {
        return Err(format!("transpose panel not assembled: {s:?}"));
    }
    emit(s).map_err(|e| e.to_string())
}

fn emit(s: &Spec) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    // k1: the loads' lanes (the panel's columns)
    let masked = s.a < 16;
    if masked {
        a.mov(eax, (1u32 << s.a) - 1)?;
        a.kmovw(k1, eax)?;
    }
    let full = s.b / 16;
    if full > 0 {
        let mut next = a.create_label();
        a.mov(rax, full as u64)?;
        a.set_label(&mut next)?;
        block(&mut a, s, 16, masked)?;
        a.add(rdi, (16 * s.sb * 4) as i32)?;
        a.add(rsi, 64)?;
        if s.res {
            a.add(rdx, 64)?;
        }
        a.dec(rax)?;
        a.jnz(next)?;
    }
    let rest = s.b % 16;
    if rest > 0 {
        // k2: the stores' lanes (the last source rows)
        a.mov(eax, (1u32 << rest) - 1)?;
        a.kmovw(k2, eax)?;
        block(&mut a, s, rest, masked)?;
    }
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// One block: `rows` source rows at rdi into `s.a` destination rows of
/// `rows` at rsi.
fn block(a: &mut CodeAssembler, s: &Spec, rows: usize, masked: bool) -> Result<(), IcedError> {
    let sb = (4 * s.sb) as i32;
    let da = (4 * s.da) as i32;
    for i in 0..rows {
        let m = zmmword_ptr(rdi + i as i32 * sb);
        if masked {
            a.vmovups(zmm(i).k1().z(), m)?;
        } else {
            a.vmovups(zmm(i), m)?;
        }
    }
    if s.ahead > 0 {
        // every line the block's rows span, `ahead` bytes further
        let span = (rows - 1) * 4 * s.sb + 4 * s.a;
        for line in 0..span.div_ceil(64) {
            a.prefetcht0(byte_ptr(rdi + (s.ahead + 64 * line) as i32))?;
        }
    }
    // rows past the block's end only reach lanes the stores leave alone
    // stage 1: pairs of rows interleaved (t in zmm16..31)
    for p in 0..8 {
        a.vunpcklps(zmm(16 + 2 * p), zmm(2 * p), zmm(2 * p + 1))?;
        a.vunpckhps(zmm(17 + 2 * p), zmm(2 * p), zmm(2 * p + 1))?;
    }
    // stage 2: u[4q + c] holds rows 4q..4q+3 of column 4k + c in 128-bit
    // lane k (zmm0..15)
    for q in 0..4 {
        let t = |i: usize| zmm(16 + 4 * q + i);
        a.vunpcklpd(zmm(4 * q), t(0), t(2))?;
        a.vunpckhpd(zmm(4 * q + 1), t(0), t(2))?;
        a.vunpcklpd(zmm(4 * q + 2), t(1), t(3))?;
        a.vunpckhpd(zmm(4 * q + 3), t(1), t(3))?;
    }
    // stage 3: lanes 0 and 2 (0x88), 1 and 3 (0xdd) of row groups 0/1 and
    // 2/3 (zmm16..31)
    for c in 0..4 {
        a.vshuff32x4(zmm(16 + 4 * c), zmm(c), zmm(4 + c), 0x88)?;
        a.vshuff32x4(zmm(17 + 4 * c), zmm(c), zmm(4 + c), 0xdd)?;
        a.vshuff32x4(zmm(18 + 4 * c), zmm(8 + c), zmm(12 + c), 0x88)?;
        a.vshuff32x4(zmm(19 + 4 * c), zmm(8 + c), zmm(12 + c), 0xdd)?;
    }
    // stage 4: column j in zmm j
    for c in 0..4 {
        let v = |i: usize| zmm(16 + 4 * c + i);
        a.vshuff32x4(zmm(c), v(0), v(2), 0x88)?;
        a.vshuff32x4(zmm(c + 8), v(0), v(2), 0xdd)?;
        a.vshuff32x4(zmm(c + 4), v(1), v(3), 0x88)?;
        a.vshuff32x4(zmm(c + 12), v(1), v(3), 0xdd)?;
    }
    for j in 0..s.a {
        if s.res {
            // zmm16.. are free after stage 4; the residual is read under
            // the stores' mask, never past the panel
            let r = zmmword_ptr(rdx + j as i32 * da);
            if rows < 16 {
                a.vmovups(zmm(16).k2().z(), r)?;
                a.vaddps(zmm(j), zmm(j), zmm(16))?;
            } else {
                a.vaddps(zmm(j), zmm(j), r)?;
            }
        }
        let m = zmmword_ptr(rsi + j as i32 * da);
        if rows < 16 {
            a.vmovups(m.k2(), zmm(j))?;
        } else {
            a.vmovups(m, zmm(j))?;
        }
    }
    Ok(())
}
