//! matmul (numpy semantics, batch broadcasting) and gemm (ONNX: transposes,
//! alpha, beta and a broadcast `c`), both on the GEMM driver.
//!
//! A constant operand is packed at compile time (B preferred: linear layers
//! have their weights on the right). A matmul whose right operand has no
//! batch dimensions folds the left operand's batch into M, so a linear layer
//! over tokens is one GEMM. Batches otherwise go through an offset table.
//! A gemm with a transposed *run-time* B first transposes it into arena
//! scratch (B must be contiguous along N); constant B is simply packed from
//! the transposed layout.

use kiln_ir::types::broadcast_shapes;
use kiln_ir::{Graph, NodeId, Op};

use super::copy::{Copy, Region};
use super::epilogue::Epilogue;
use super::gemm::{self, ASrc, BSrc, CIn, Gemm, Init, Tile};
use super::nest::{Nest, broadcast_strides, contiguous};
use super::{Kernels, NodeCx, is_const};
use crate::codegen::Buf;
use crate::error::BackendError;

/// Scratch for a gemm that transposes a run-time B.
pub(crate) fn scratch_bytes(g: &Graph, id: NodeId) -> usize {
    let ops = g.operands(id);
    match (&g.node(id).op, ops.get(1)) {
        (Op::Gemm { trans_b: true, .. }, Some(&b)) if !is_const(g, b) => {
            g.value_type(b).size_bytes()
        }
        _ => 0,
    }
}

/// Lowers matmul and gemm nodes.
pub(crate) fn lower(cx: &mut NodeCx) -> Result<Kernels, BackendError> {
    match *cx.op {
        Op::MatMul => lower_matmul(cx, Init::Zero, Epilogue::NONE, None),
        Op::Gemm {
            alpha,
            beta,
            trans_a,
            trans_b,
        } => lower_gemm(cx, alpha.0, beta.0, trans_a, trans_b),
        _ => Err(cx.unsupported("not a matrix product")),
    }
}

/// The tile to pack for: the assembled one (its default shape) when it
/// will be used.
pub(crate) fn tile_for(cx: &NodeCx, asm_ok: bool) -> Tile {
    match cx.asm.as_deref() {
        Some(store) if asm_ok => {
            let (mr, nr) = store.tile_shape();
            Tile { mr, nv: nr / 4 }
        }
        _ => cx.tile,
    }
}

/// The tile to pack an `m × n` product over `k` for: the assembled shape
/// fitted to it (`gemm::asm_tile_for`) when assembled tiles will be used.
pub(crate) fn tile_for_shape(cx: &NodeCx, asm_ok: bool, m: usize, n: usize, k: usize) -> Tile {
    match cx.asm.as_deref() {
        Some(store) if asm_ok => {
            let (mr, nr) = gemm::asm_shape_for(store.level(), m, n, k);
            Tile { mr, nv: nr / 4 }
        }
        _ => cx.tile,
    }
}

/// Partitions `gm` and switches it to the assembled tiles when available.
pub(crate) fn finish(cx: &mut NodeCx, mut gm: Gemm) -> Result<Gemm, BackendError> {
    gm.partition(cx.threads);
    if let Some(store) = cx.asm.as_deref_mut() {
        gm.request_asm(store).map_err(|msg| BackendError::Codegen {
            node: cx.name.clone(),
            msg: format!("assembling the GEMM tile: {msg}"),
        })?;
    }
    Ok(gm)
}

/// Lowers the `x @ w` of a `fused_linear` with its column bias and
/// epilogue (the residual has the output's layout, like C).
pub(crate) fn lower_linear(
    cx: &mut NodeCx,
    bias: Option<Buf>,
    epi: Epilogue,
) -> Result<Kernels, BackendError> {
    let (k, n) = (cx.ins[0].ty.shape.last(), cx.ins[1].ty.shape.last());
    let title = format!(
        "fused linear {}→{}{}",
        k.copied().unwrap_or(0),
        n.copied().unwrap_or(0),
        epi.suffix(bias.is_some())
    );
    let init = bias.map_or(Init::Zero, Init::Col);
    lower_matmul(cx, init, epi, Some(title))
}

fn lower_matmul(
    cx: &mut NodeCx,
    init: Init,
    epi: Epilogue,
    title: Option<String>,
) -> Result<Kernels, BackendError> {
    let (out_buf, _) = cx.outs[0].clone();
    let a_sh = &cx.ins[0].ty.shape;
    let b_sh = &cx.ins[1].ty.shape;
    let a2: Vec<usize> = if a_sh.len() == 1 {
        vec![1, a_sh[0]]
    } else {
        a_sh.clone()
    };
    let b2: Vec<usize> = if b_sh.len() == 1 {
        vec![b_sh[0], 1]
    } else {
        b_sh.clone()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let n = b2[b2.len() - 1];
    let a_batch = &a2[..a2.len() - 2];
    let b_batch = &b2[..b2.len() - 2];
    let batch_shape = broadcast_shapes(a_batch, b_batch)
        .ok_or_else(|| cx.unsupported("batch dimensions do not broadcast"))?;
    let batches: usize = batch_shape.iter().product();
    let b_single = b_batch.iter().all(|&d| d == 1);
    // fold A's batch into M when B is one matrix: rows are consecutive
    let (m_eff, batches_eff) = if b_single && a_batch == &batch_shape[..] {
        (m * batches, 1)
    } else {
        (m, batches)
    };
    let tile = tile_for_shape(cx, true, m_eff, n, k);
    let nr = 4 * tile.nv;
    // batch strides counted in matrices
    let a_bs = broadcast_strides(a_batch, &batch_shape);
    let b_bs = broadcast_strides(b_batch, &batch_shape);
    let a_mats: usize = if batches_eff == 1 {
        1
    } else {
        a_batch.iter().product()
    };
    let b_mats: usize = b_batch.iter().product();
    // Operand sources and the element size of one (packed) matrix.
    let (b, b_scale) = match cx.ins[1].data {
        Some(w) => {
            let per = gemm::packed_b_len(k, n, nr);
            let mut packed = Vec::with_capacity(b_mats * per);
            for i in 0..b_mats {
                packed.extend(gemm::pack_b(&w[i * k * n..], k, n, n, 1, nr));
            }
            let addr = cx.consts.add(&packed);
            (BSrc::Packed { addr }, per)
        }
        None => (
            BSrc::Strided {
                buf: cx.ins[1].buf,
                ks: n as i64,
            },
            k * n,
        ),
    };
    let (a, a_scale) = match (cx.ins[0].data, &b) {
        (Some(w), BSrc::Strided { .. }) => {
            let per = gemm::packed_a_len(m_eff, k, tile.mr);
            let mut packed = Vec::with_capacity(a_mats * per);
            for i in 0..a_mats {
                packed.extend(gemm::pack_a(&w[i * m_eff * k..], m_eff, k, k, 1, tile.mr));
            }
            let addr = cx.consts.add(&packed);
            (ASrc::Packed { addr }, per)
        }
        _ => (
            ASrc::Strided {
                buf: cx.ins[0].buf,
                rs: k as i64,
                ks: 1,
            },
            m * k,
        ),
    };
    let mut offs = Vec::with_capacity(batches_eff);
    if batches_eff == 1 {
        offs.push([0; 4]);
    } else {
        let bstr = contiguous(&batch_shape);
        for bi in 0..batches {
            let (mut an, mut bn) = (0i64, 0i64);
            for (d, &s) in bstr.iter().enumerate() {
                let idx = (bi as i64 / s) % batch_shape[d] as i64;
                an += idx * a_bs[d];
                bn += idx * b_bs[d];
            }
            offs.push([
                an * a_scale as i64,
                bn * b_scale as i64,
                (bi * m * n) as i64,
                0,
            ]);
        }
    }
    let gm = Gemm {
        batch: batches_eff,
        offsets: gemm::offset_table(cx.consts, &offs),
        init,
        epi,
        title,
        ..Gemm::new("matmul", [m_eff, n, k], a, b, (out_buf, n as i64), tile)
    };
    Ok(vec![Box::new(finish(cx, gm)?)])
}

fn lower_gemm(
    cx: &mut NodeCx,
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
) -> Result<Kernels, BackendError> {
    // the assembled tiles have no epilogue: alpha and beta·C need the
    // Cranelift tile (a bias row with unit scales is a seed, not an epilogue)
    let (out_buf, out_ty) = cx.outs[0].clone();
    let (m, n) = (out_ty.shape[0], out_ty.shape[1]);
    let c_is_bias_row = beta == 0.0
        || cx.ins.get(2).is_none_or(|c| {
            beta == 1.0
                && c.ty.shape.iter().rev().skip(1).all(|&d| d == 1)
                && c.ty.shape.last() == Some(&n)
        });
    let a_sh = cx.ins[0].ty.shape.clone();
    let k = if trans_a { a_sh[0] } else { a_sh[1] };
    let tile = tile_for_shape(cx, alpha == 1.0 && c_is_bias_row, m, n, k);
    let nr = 4 * tile.nv;
    let mut kernels: Kernels = Vec::new();
    // B: element (k, j) of op(b)
    let b = match cx.ins[1].data {
        Some(w) => {
            let (ks, js) = if trans_b { (1, k) } else { (n, 1) };
            BSrc::Packed {
                addr: cx.consts.add(&gemm::pack_b(w, k, n, ks, js, nr)),
            }
        }
        None if !trans_b => BSrc::Strided {
            buf: cx.ins[1].buf,
            ks: n as i64,
        },
        None => {
            // transpose b [N, K] into scratch [K, N]
            // an empty b (a zero-sized dimension) gets no scratch and is never read
            let scratch = match cx.scratch {
                Some(b) => b,
                None if k * n == 0 => Buf::output(crate::codegen::Loc::Arena(0)),
                None => return Err(cx.unsupported("transpose scratch was not planned")),
            };
            let dims = [k, n];
            let nest = Nest::new(
                &dims,
                vec![contiguous(&dims), vec![1, k as i64]],
                vec![0, 0],
            );
            kernels.push(Box::new(Copy::new(
                "gemm transpose of b",
                vec![Region::copy(nest, scratch, cx.ins[1].buf)],
            )));
            BSrc::Strided {
                buf: Buf::input(scratch.loc),
                ks: n as i64,
            }
        }
    };
    let (rs, ks) = if trans_a {
        (1, m as i64)
    } else {
        (k as i64, 1)
    };
    let a = match (cx.ins[0].data, &b) {
        (Some(w), BSrc::Strided { .. }) => ASrc::Packed {
            addr: cx
                .consts
                .add(&gemm::pack_a(w, m, k, rs as usize, ks as usize, tile.mr)),
        },
        _ => ASrc::Strided {
            buf: cx.ins[0].buf,
            rs,
            ks,
        },
    };
    let mut init = Init::Zero;
    let cin = match cx.ins.get(2) {
        // a bias row with unit scales seeds the accumulators instead
        Some(c)
            if beta == 1.0
                && alpha == 1.0
                && c.ty.shape.iter().rev().skip(1).all(|&d| d == 1)
                && c.ty.shape.last() == Some(&n) =>
        {
            init = Init::Col(c.buf);
            None
        }
        Some(c) if beta != 0.0 => {
            let s = broadcast_strides(&c.ty.shape, &[m, n]);
            Some(CIn {
                beta,
                buf: c.buf,
                rs: s[0],
                cs: s[1],
            })
        }
        _ => None,
    };
    let gm = Gemm {
        init,
        alpha,
        cin,
        ..Gemm::new("gemm", [m, n, k], a, b, (out_buf, n as i64), tile)
    };
    kernels.push(Box::new(finish(cx, gm)?));
    Ok(kernels)
}
