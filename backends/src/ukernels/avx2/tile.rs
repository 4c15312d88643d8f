//! AVX2 + FMA GEMM tiles assembled at compile time with iced-x86 (the
//! `ukernels/tile.rs` contract), for x86-64 CPUs
//! without AVX-512 (and `--cpu x86-64-v3` objects).
//!
//! Same contract as the AVX-512 tiles (`ukernels/tile.rs`: the [`Variant`] fields,
//! the signature, the bias modes and epilogues, the `b_pack` copy), on a
//! 6×16 tile: 12 ymm accumulators, the B row in two ymm, one A element
//! broadcast per row and k. AVX2 has no mask registers, no embedded
//! broadcast and no `vscalefps`, so:
//!
//! - column tails use `vmaskmovps` with a lane mask built per variant in
//!   the red zone and kept in ymm15 (an unpadded B, C or residual is never
//!   read or written past the row's end; masked-out lanes load as zero, so
//!   a `b_pack` panel is zero-padded);
//! - scalar constants live in the red zone (the same slots and exp2
//!   polynomial as the AVX-512 tile) and are `vbroadcastss`ed into one of
//!   the four registers the K loop frees;
//! - silu's `2^n` adds `n << 23` to the float's exponent bits
//!   (`vcvtps2dq`, `vpslld`, `vpaddd`) after clamping the exponent to
//!   `[-126, 127]`, where `1 + 2^t` is already `1` or the quotient already
//!   rounds to ±0 (up to a denormal), so no overflow can reach the bits.
//!
//! Every instruction is VEX-encoded (no EVEX): the tiles run on any AVX2+FMA
//! CPU. The function ends with `vzeroupper`.

use iced_x86::code_asm::*;

use crate::ukernels::tile::{
    Act, Bias, EXP2_POLY, GELU_HI, GELU_LO, GELU_SCALE, HALF, NEG_LOG2E, ONE, SIX, SIXTH, THREE,
    Variant, check_variant, disp, gelu_slot, k_loop, prefetch_step, write_act_consts,
};

/// Rows of a full tile.
pub(crate) const MR: usize = 6;
/// Columns of a full tile (two ymm vectors).
pub(crate) const NR: usize = 16;

/// Red-zone slot (bytes below rsp) of silu's exponent clamp bounds.
const EXP_LO: i32 = 52;
const EXP_HI: i32 = 56;
/// Red-zone bytes `[rsp - MASK, rsp - MASK + 32)`: the column-tail mask.
const MASK: i32 = 128;

// The slots above must not overlap the shared ones (`asm_tile` owns those
// and may add to them): checked at compile time.
const _: () = {
    let mut i = 0;
    while i < EXP2_POLY.len() {
        assert!(EXP2_POLY[i].0 < EXP_LO);
        i += 1;
    }
    // slot `s` is the bytes `[rsp - s, rsp - s + 4)`
    assert!(NEG_LOG2E < EXP_LO && EXP_LO < EXP_HI && EXP_HI <= MASK - 32);
    // GELU's (which reuse SiLU's) end below the mask too
    assert!(GELU_SCALE < GELU_HI && GELU_HI < GELU_LO);
    assert!(crate::ukernels::tile::GELU_Q_SLOT + 4 * 5 <= MASK - 32);
};

fn ymm(i: usize) -> AsmRegisterYmm {
    const Y: [AsmRegisterYmm; 16] = [
        ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13,
        ymm14, ymm15,
    ];
    Y[i]
}

/// Accumulator of row `i`, vector `z`.
fn acc(i: usize, z: usize) -> AsmRegisterYmm {
    ymm(2 * i + z)
}

/// Assembles `v` (with [`MR`] and [`NR`] as the full tile); the bytes are
/// position-independent.
pub(crate) fn assemble(v: &Variant) -> Result<Vec<u8>, String> {
    check_variant(v, MR, NR, 32, "AVX2")?;
    if v.cols_in_lanes {
        return Err(format!("no lanes tail at AVX2: {v:?}"));
    }
    emit(v).map_err(|e| e.to_string())
}

fn emit(v: &Variant) -> Result<Vec<u8>, IcedError> {
    let nz = v.nt.div_ceil(8);
    // lanes of the last vector
    let tail = v.nt - 8 * (nz - 1);
    let masked = tail < 8;
    let mut a = CodeAssembler::new(64)?;
    // VEX encodings only (the default, stated because it is the point)
    a.set_prefer_vex(true);
    if v.act == Act::DyRelu {
        // the seventh argument: above the return address
        a.mov(r11, qword_ptr(rsp + 8))?;
    }
    if v.b_pack {
        // the eighth argument: rax is the panel pointer
        a.mov(rax, qword_ptr(rsp + 16))?;
    }
    if masked {
        for l in 0..8 {
            let bits: u32 = if l < tail { u32::MAX } else { 0 };
            a.mov(dword_ptr(rsp - MASK + 4 * l as i32), bits)?;
        }
        a.vmovups(ymm15, ymmword_ptr(rsp - MASK))?;
    }
    // the last vector of a row at `mem`, into `dst` (masked when a tail)
    let load_last = |a: &mut CodeAssembler,
                     dst: AsmRegisterYmm,
                     mem: AsmMemoryOperand|
     -> Result<(), IcedError> {
        if masked {
            a.vmaskmovps(dst, ymm15, mem)
        } else {
            a.vmovups(dst, mem)
        }
    };
    for i in 0..v.mr {
        for z in 0..nz {
            match v.bias {
                Bias::Row => a.vbroadcastss(acc(i, z), dword_ptr(rcx + disp(4 * i)))?,
                Bias::Col => {
                    let src = ymmword_ptr(rcx + disp(32 * z));
                    if z == nz - 1 {
                        load_last(&mut a, acc(i, z), src)?;
                    } else {
                        a.vmovups(acc(i, z), src)?;
                    }
                }
                Bias::None => a.vxorps(acc(i, z), acc(i, z), acc(i, z))?,
            }
        }
    }
    // One k step: B row(s) into ymm12/13 (and to the panel when packing),
    // then every row's broadcast and FMAs. `a_off`/`b_off`/`p_off` are byte
    // offsets from rdi/rsi/rax.
    let step = |a: &mut CodeAssembler,
                a_off: usize,
                b_off: usize,
                p_off: usize|
     -> Result<(), IcedError> {
        prefetch_step(a, v, a_off, b_off)?;
        for z in 0..nz {
            let src = ymmword_ptr(rsi + disp(b_off + 32 * z));
            if z == nz - 1 && !v.b_padded {
                load_last(a, ymm(12 + z), src)?;
            } else {
                a.vmovups(ymm(12 + z), src)?;
            }
            if v.b_pack {
                // the masked load wrote zeros past the tail: padding
                a.vmovups(ymmword_ptr(rax + disp(p_off + 32 * z)), ymm(12 + z))?;
            }
        }
        if v.b_pack && (v.act != Act::None || v.residual) {
            // the next column panel's line of this B row, as the AVX-512
            // tile does (see there why only under an epilogue)
            a.prefetcht0(byte_ptr(rsi + disp(b_off + 4 * NR)))?;
        }
        for i in 0..v.mr {
            a.vbroadcastss(ymm14, dword_ptr(rdi + disp(a_off + 4 * i * v.a_rs)))?;
            for z in 0..nz {
                a.vfmadd231ps(acc(i, z), ymm(12 + z), ymm14)?;
            }
        }
        Ok(())
    };
    k_loop(&mut a, v, NR, step)?;
    activation(&mut a, v, nz)?;
    if masked && v.act != Act::None {
        // the activation used ymm15
        a.vmovups(ymm15, ymmword_ptr(rsp - MASK))?;
    }
    if v.residual {
        for i in 0..v.mr {
            for z in 0..nz {
                let src = ymmword_ptr(r8 + disp(4 * (i * v.c_rs + 8 * z)));
                if z == nz - 1 && masked {
                    // masked: the residual is not padded past its row
                    a.vmaskmovps(ymm12, ymm15, src)?;
                    a.vaddps(acc(i, z), acc(i, z), ymm12)?;
                } else {
                    a.vaddps(acc(i, z), acc(i, z), src)?;
                }
            }
        }
    }
    for i in 0..v.mr {
        for z in 0..nz {
            let dst = ymmword_ptr(rdx + disp(4 * (i * v.c_rs + 8 * z)));
            if z == nz - 1 && masked {
                a.vmaskmovps(dst, ymm15, acc(i, z))?;
            } else {
                a.vmovups(dst, acc(i, z))?;
            }
        }
    }
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// `dst = broadcast(constant in red-zone slot)`.
fn bcst(a: &mut CodeAssembler, dst: AsmRegisterYmm, slot: i32) -> Result<(), IcedError> {
    a.vbroadcastss(dst, dword_ptr(rsp - slot))
}

/// `acc = Σ c_k · var^k` by Horner's rule: `acc` starts at the constant in
/// red-zone slot `top`, then `acc = acc·var + c` for each slot of `rest`,
/// each broadcast into `tmp`.
fn horner(
    a: &mut CodeAssembler,
    (acc, var, tmp): (AsmRegisterYmm, AsmRegisterYmm, AsmRegisterYmm),
    top: i32,
    rest: impl IntoIterator<Item = i32>,
) -> Result<(), IcedError> {
    bcst(a, acc, top)?;
    for slot in rest {
        bcst(a, tmp, slot)?;
        a.vfmadd213ps(acc, var, tmp)?;
    }
    Ok(())
}

/// The activation on the accumulators (ymm0..11); ymm12..15 are free once
/// the K loop is done (the caller reloads the tail mask into ymm15).
/// `max(0, x)` is written `vmaxps x, zero, x` so that a NaN accumulator
/// stays NaN (the instruction returns its second source when either is
/// NaN), as the interpreter's relu does.
fn activation(a: &mut CodeAssembler, v: &Variant, nz: usize) -> Result<(), IcedError> {
    if v.act == Act::None {
        return Ok(());
    }
    write_act_consts(a, v.act)?;
    let (t0, t1, t2, t3) = (ymm12, ymm13, ymm14, ymm15);
    match v.act {
        Act::None | Act::DyRelu | Act::Silu | Act::Gelu => {}
        Act::Relu => a.vxorps(t0, t0, t0)?,
        Act::Relu6 => {
            a.vxorps(t0, t0, t0)?;
            bcst(a, t1, SIX)?;
        }
        Act::HardSigmoid => {
            a.vxorps(t0, t0, t0)?;
            bcst(a, t1, SIXTH)?;
            bcst(a, t2, HALF)?;
            bcst(a, t3, ONE)?;
        }
        Act::HardSwish => {
            a.vxorps(t0, t0, t0)?;
            bcst(a, t1, THREE)?;
            bcst(a, t2, SIX)?;
        }
    }
    if v.act == Act::Silu {
        a.mov(dword_ptr(rsp - EXP_LO), (-126.0f32).to_bits())?;
        a.mov(dword_ptr(rsp - EXP_HI), 127.0f32.to_bits())?;
    }
    for i in 0..v.mr {
        if v.act == Act::DyRelu {
            // this row's slope pair
            a.vbroadcastss(t0, dword_ptr(r9 + disp(4 * i)))?;
            a.vbroadcastss(t1, dword_ptr(r11 + disp(4 * i)))?;
        }
        for z in 0..nz {
            let x = acc(i, z);
            match v.act {
                Act::None => {}
                Act::Relu => a.vmaxps(x, t0, x)?,
                Act::Relu6 => {
                    a.vmaxps(x, t0, x)?;
                    a.vminps(x, x, t1)?;
                }
                Act::HardSigmoid => {
                    a.vfmadd213ps(x, t1, t2)?;
                    a.vmaxps(x, t0, x)?;
                    a.vminps(x, x, t3)?;
                }
                Act::HardSwish => {
                    a.vaddps(t3, x, t1)?;
                    a.vmaxps(t3, t0, t3)?;
                    a.vminps(t3, t3, t2)?;
                    a.vmulps(x, x, t3)?;
                    bcst(a, t3, SIXTH)?;
                    a.vmulps(x, x, t3)?;
                }
                Act::Silu => {
                    // t = -x·log2 e (clamped) = n + f; 2^t = 2^f · 2^n
                    bcst(a, t3, NEG_LOG2E)?;
                    a.vmulps(t0, x, t3)?;
                    bcst(a, t3, EXP_LO)?;
                    a.vmaxps(t0, t3, t0)?;
                    bcst(a, t3, EXP_HI)?;
                    a.vminps(t0, t0, t3)?;
                    a.vroundps(t1, t0, 0)?;
                    a.vsubps(t0, t0, t1)?;
                    let (first, rest) = EXP2_POLY.split_first().expect("non-empty polynomial");
                    let rest = rest.iter().map(|&(slot, _)| slot).chain([ONE]);
                    horner(a, (t2, t0, t3), first.0, rest)?;
                    // 2^f · 2^n: n (an integer in [-126, 127]) into the
                    // exponent field; 2^f ∈ [2^-½, 2^½] keeps it in range
                    a.vcvtps2dq(t1, t1)?;
                    a.vpslld(t1, t1, 23)?;
                    a.vpaddd(t2, t2, t1)?;
                    a.vaddps(t2, t2, t3)?;
                    a.vdivps(x, x, t2)?;
                }
                Act::DyRelu => {
                    a.vmulps(t2, x, t0)?;
                    a.vmulps(x, x, t1)?;
                    a.vmaxps(x, t2, x)?;
                }
                Act::Gelu => {
                    // as the AVX-512 tile's `gelu`, with each constant
                    // broadcast into t3 (AVX2 has no broadcast operands):
                    // t0 = z, t1 = z², t2 = P·z, t0 = Q
                    bcst(a, t3, GELU_SCALE)?;
                    a.vmulps(t0, x, t3)?;
                    bcst(a, t3, GELU_HI)?;
                    a.vminps(t0, t0, t3)?;
                    bcst(a, t3, GELU_LO)?;
                    a.vmaxps(t0, t0, t3)?;
                    a.vmulps(t1, t0, t0)?;
                    let coeffs = |p: bool| (0..5).rev().map(move |k| gelu_slot(p, k));
                    horner(a, (t2, t1, t3), gelu_slot(true, 5), coeffs(true))?;
                    a.vmulps(t2, t2, t0)?;
                    horner(a, (t0, t1, t3), gelu_slot(false, 5), coeffs(false))?;
                    a.vdivps(t2, t2, t0)?;
                    bcst(a, t3, HALF)?;
                    a.vmulps(x, x, t3)?;
                    a.vfmadd213ps(x, t2, x)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Variant {
        Variant {
            k: 7,
            mr: MR,
            nt: NR,
            nr: NR,
            a_rs: 1,
            a_ks: MR,
            b_ks: NR,
            b_padded: true,
            b_pack: false,
            c_rs: 100,
            bias: Bias::Row,
            act: Act::None,
            residual: false,
            cols_in_lanes: false,
        }
    }

    #[test]
    fn variants_assemble_and_end_with_vzeroupper() {
        let v = base();
        let code = assemble(&v).unwrap();
        // ends with vzeroupper; ret
        assert_eq!(&code[code.len() - 4..], &[0xC5, 0xF8, 0x77, 0xC3]);
        assert!(assemble(&Variant { mr: 7, ..v }).is_err());
        assert!(assemble(&Variant { nt: 17, ..v }).is_err());
        // only the 16-column panel
        assert!(assemble(&Variant { nr: 32, ..v }).is_err());
        assert!(assemble(&Variant { b_pack: true, ..v }).is_err());
        assert!(assemble(&Variant { c_rs: 1 << 30, ..v }).is_err());
    }

    /// No instruction of any variant is EVEX-encoded (an AVX-512
    /// instruction would fault on the CPUs these tiles are for): every
    /// variant is decoded and each instruction's encoding checked.
    #[test]
    fn no_avx512_encodings() {
        use crate::ukernels::vector::assert_vex_only;
        let mut checked = 0;
        for act in Act::ALL {
            for bias in [Bias::None, Bias::Row, Bias::Col] {
                for (nt, b_padded, b_pack) in [
                    (16, true, false),
                    (11, false, false),
                    (5, false, true),
                    (8, false, false),
                ] {
                    let v = Variant {
                        nt,
                        b_padded,
                        b_pack,
                        b_ks: 4096,
                        bias,
                        act,
                        residual: true,
                        mr: 5,
                        ..base()
                    };
                    checked += assert_vex_only(&format!("{v:?}"), &assemble(&v).unwrap());
                }
            }
        }
        assert!(checked > 1000);
    }
}
