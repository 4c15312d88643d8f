//! Batch separability (`kiln_ir::batch`): graphs that compute their images
//! independently are rewritten for fewer images, and the interpreter gives
//! each group of images exactly the batch's result for them; graphs that
//! mix images are refused with the node that mixes them.

use kiln_ir::batch::{batch_size, rebatch};
use kiln_ir::interp::run;
use kiln_ir::{
    BinaryOp, Float, Graph, Model, Op, ReduceKind, Tensor, TensorType, UnaryOp, Value, WeightStore,
};

const N: usize = 8;

/// Deterministic values in [-1, 1) for a tensor of type `ty`.
fn values(ty: &TensorType, seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let data: Vec<f32> = (0..ty.numel())
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_f32(ty.shape.clone(), data).unwrap()
}

fn model(g: &Graph) -> Model {
    Model {
        graph: g.clone(),
        weights: weights(g),
    }
}

fn weights(g: &Graph) -> WeightStore {
    let mut ws = WeightStore::new();
    for (k, &w) in g.weights().iter().enumerate() {
        let info = &g.node(w).outputs[0];
        ws.insert(info.name.clone(), values(&info.ty, 100 + k as u64));
    }
    ws
}

/// Runs `g` on a batch, then its `images`-image graph on each group of the
/// batch, and checks the groups' outputs are the batch's, bit for bit.
fn groups_match_the_batch(g: &Graph, images: usize) {
    groups_match(
        &Model {
            graph: g.clone(),
            weights: weights(g),
        },
        images,
    );
}

/// [`groups_match_the_batch`] with the model's own weights.
fn groups_match(m: &Model, images: usize) {
    let (g, ws) = (&m.graph, &m.weights);
    let small = rebatch(m, images).unwrap();
    assert_eq!(batch_size(&small.graph), Some(images));
    let inputs: Vec<Tensor> = g
        .inputs()
        .iter()
        .enumerate()
        .map(|(k, &i)| values(g.value_type(Value::of(i)), k as u64))
        .collect();
    let whole = run(g, ws, &inputs).unwrap();
    let groups = N / images;
    for grp in 0..groups {
        let part: Vec<Tensor> = inputs
            .iter()
            .map(|t| {
                let d = t.as_f32().unwrap();
                let len = d.len() / groups;
                let mut shape = t.shape().to_vec();
                shape[0] = images;
                Tensor::from_f32(shape, d[grp * len..(grp + 1) * len].to_vec()).unwrap()
            })
            .collect();
        let got = run(&small.graph, &small.weights, &part).unwrap();
        for (y, want) in got.iter().zip(&whole) {
            let w = want.as_f32().unwrap();
            let len = w.len() / groups;
            assert_eq!(
                y.as_f32().unwrap(),
                &w[grp * len..(grp + 1) * len],
                "group {grp} of {images} images"
            );
        }
    }
}

/// conv → relu → batch norm → tokens → matmul → softmax → layer norm →
/// mean over tokens → gemm head.
fn conv_head() -> Graph {
    let mut g = Graph::new("conv_head");
    let x = g.add_input("x", TensorType::f32([N, 3, 6, 6])).unwrap();
    let w = g.add_weight("w", TensorType::f32([4, 3, 3, 3])).unwrap();
    let b = g.add_weight("b", TensorType::f32([4])).unwrap();
    let bn: Vec<Value> = ["g", "be", "m", "v"]
        .iter()
        .map(|n| g.add_weight(*n, TensorType::f32([4])).unwrap())
        .collect();
    let c = g
        .add(
            Op::Conv2d {
                stride: [1, 1],
                pad: [1, 1, 1, 1],
                dilation: [1, 1],
                groups: 1,
            },
            &[x, w, b],
        )
        .unwrap();
    let r = g.add(Op::Unary(UnaryOp::Relu), &[c]).unwrap();
    let v = g.add(Op::Unary(UnaryOp::Abs), &[bn[3]]).unwrap();
    let n = g
        .add(
            Op::BatchNorm { eps: Float(1e-5) },
            &[r, bn[0], bn[1], bn[2], v],
        )
        .unwrap();
    let t = g
        .add(
            Op::Reshape {
                shape: vec![N, 4, 36],
            },
            &[n],
        )
        .unwrap();
    let t = g
        .add(
            Op::Transpose {
                perm: vec![0, 2, 1],
            },
            &[t],
        )
        .unwrap();
    let w2 = g.add_weight("w2", TensorType::f32([4, 6])).unwrap();
    let m = g.add(Op::MatMul, &[t, w2]).unwrap();
    let s = g.add(Op::Softmax { axis: 2 }, &[m]).unwrap();
    let lg = g.add_weight("lg", TensorType::f32([6])).unwrap();
    let l = g
        .add(
            Op::LayerNorm {
                axis: 2,
                eps: Float(1e-5),
            },
            &[s, lg],
        )
        .unwrap();
    let p = g
        .add(
            Op::Reduce {
                kind: ReduceKind::Mean,
                axes: vec![1],
                keepdims: false,
            },
            &[l],
        )
        .unwrap();
    let w3 = g.add_weight("w3", TensorType::f32([6, 5])).unwrap();
    let c3 = g.add_weight("c3", TensorType::f32([5])).unwrap();
    let y = g
        .add(
            Op::Gemm {
                alpha: Float(1.0),
                beta: Float(1.0),
                trans_a: false,
                trans_b: false,
            },
            &[p, w3, c3],
        )
        .unwrap();
    g.set_outputs(vec![y]);
    g
}

/// MobileViT's unfolding: the batch merged into the leading axis with the
/// channels and patch rows, attention-like work per patch, folded back.
fn unfold() -> Graph {
    let mut g = Graph::new("unfold");
    let x = g.add_input("x", TensorType::f32([N, 2, 4, 4])).unwrap();
    let u = g
        .add(
            Op::Reshape {
                shape: vec![N * 2 * 2, 2, 2, 2],
            },
            &[x],
        )
        .unwrap();
    let t = g
        .add(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[u],
        )
        .unwrap();
    let s = g.add(Op::Softmax { axis: 3 }, &[t]).unwrap();
    let t = g
        .add(
            Op::Transpose {
                perm: vec![0, 2, 1, 3],
            },
            &[s],
        )
        .unwrap();
    let f = g
        .add(
            Op::Reshape {
                shape: vec![N, 2, 4, 4],
            },
            &[t],
        )
        .unwrap();
    let y = g.add(Op::Binary(BinaryOp::Mul), &[f, x]).unwrap();
    g.set_outputs(vec![y]);
    g
}

/// A class token expanded to the batch and joined to the tokens, then
/// single-head attention.
fn class_token() -> Graph {
    let mut g = Graph::new("class_token");
    let x = g.add_input("x", TensorType::f32([N, 4, 3])).unwrap();
    let cls = g.add_weight("cls", TensorType::f32([1, 1, 3])).unwrap();
    let e = g
        .add(
            Op::Expand {
                shape: vec![N, 1, 3],
            },
            &[cls],
        )
        .unwrap();
    let t = g.add(Op::Concat { axis: 1 }, &[e, x]).unwrap();
    let wq = g.add_weight("wq", TensorType::f32([3, 3])).unwrap();
    let q = g.add(Op::MatMul, &[t, wq]).unwrap();
    let kt = g
        .add(
            Op::Transpose {
                perm: vec![0, 2, 1],
            },
            &[t],
        )
        .unwrap();
    let a = g.add(Op::MatMul, &[q, kt]).unwrap();
    let a = g.add(Op::Softmax { axis: 2 }, &[a]).unwrap();
    let y = g.add(Op::MatMul, &[a, t]).unwrap();
    let y = g
        .add(
            Op::Slice {
                axes: vec![1],
                starts: vec![0],
                ends: vec![1],
                steps: vec![1],
            },
            &[y],
        )
        .unwrap();
    g.set_outputs(vec![y]);
    g
}

#[test]
fn separable_graphs_run_in_groups_as_the_batch_does() {
    for g in [conv_head(), unfold(), class_token()] {
        for images in [1, 2, 4] {
            groups_match_the_batch(&g, images);
        }
        // the reshapes and the expand now spell the smaller batch
        let one = rebatch(&model(&g), 1).unwrap();
        let text = kiln_ir::text::print(&one.graph);
        assert!(!text.contains(&format!("f32[{N},")), "{text}");
    }
}

/// A graph on `x [N, 3]` with one op `f` applied, then made an output.
fn mixing(f: impl FnOnce(&mut Graph, Value) -> Value) -> String {
    let mut g = Graph::new("mix");
    let x = g.add_input("x", TensorType::f32([N, 3])).unwrap();
    let y = f(&mut g, x);
    g.set_outputs(vec![y]);
    rebatch(&model(&g), 1).unwrap_err()
}

#[test]
fn graphs_that_mix_images_are_refused_with_the_node() {
    let e = mixing(|g, x| g.add(Op::Softmax { axis: 0 }, &[x]).unwrap());
    assert!(e.contains("softmax") && e.contains("mixes"), "{e}");
    let e = mixing(|g, x| {
        let r = g
            .add(
                Op::Reduce {
                    kind: ReduceKind::Sum,
                    axes: vec![0],
                    keepdims: true,
                },
                &[x],
            )
            .unwrap();
        g.add(Op::Binary(BinaryOp::Sub), &[x, r]).unwrap()
    });
    assert!(e.contains("reduce_sum"), "{e}");
    // [N, 3] → [3, N] interleaves the images
    let e = mixing(|g, x| g.add(Op::Reshape { shape: vec![3, N] }, &[x]).unwrap());
    assert!(e.contains("reshape"), "{e}");
    // xᵀ·x sums over the images
    let e = mixing(|g, x| {
        let t = g.add(Op::Transpose { perm: vec![1, 0] }, &[x]).unwrap();
        g.add(Op::MatMul, &[t, x]).unwrap()
    });
    assert!(e.contains("matmul"), "{e}");
    // a weight that differs from image to image
    let e = mixing(|g, x| {
        let w = g.add_weight("w", TensorType::f32([N, 3])).unwrap();
        g.add(Op::Binary(BinaryOp::Add), &[x, w]).unwrap()
    });
    assert!(e.contains("varies along the batch"), "{e}");
    // an output that is the images side by side
    let e = mixing(|g, x| g.add(Op::Transpose { perm: vec![1, 0] }, &[x]).unwrap());
    assert!(e.contains("not contiguous"), "{e}");
    // the batch in the wrong place for a concat
    let e = mixing(|g, x| g.add(Op::Concat { axis: 0 }, &[x, x]).unwrap());
    assert!(e.contains("concat"), "{e}");
}

#[test]
fn group_sizes_must_divide_the_batch() {
    let g = conv_head();
    assert!(
        rebatch(&model(&g), 3)
            .unwrap_err()
            .contains("do not divide")
    );
    let same = rebatch(&model(&g), N).unwrap();
    assert_eq!(kiln_ir::text::print(&same.graph), kiln_ir::text::print(&g));
}

/// A class token an importer folded to the batch's size: `[N, 1, C]`, the
/// same row for every image, joined to the tokens.
#[test]
fn constants_repeated_per_image_are_sliced_to_the_group() {
    let mut g = Graph::new("folded_token");
    let x = g.add_input("x", TensorType::f32([N, 4, 3])).unwrap();
    let cls = g.add_weight("cls", TensorType::f32([N, 1, 3])).unwrap();
    let t = g.add(Op::Concat { axis: 1 }, &[cls, x]).unwrap();
    let y = g.add(Op::Unary(UnaryOp::Tanh), &[t]).unwrap();
    g.set_outputs(vec![y]);
    let mut ws = WeightStore::new();
    let row = [0.5f32, -1.25, 2.0];
    ws.insert(
        "cls",
        Tensor::from_f32(vec![N, 1, 3], row.repeat(N)).unwrap(),
    );
    let m = Model {
        graph: g,
        weights: ws.clone(),
    };
    for images in [1, 2, 4] {
        groups_match(&m, images);
    }
    let one = rebatch(&m, 2).unwrap();
    let part = one.weights.get("cls.group").unwrap();
    assert_eq!(part.shape(), [2, 1, 3]);
    assert_eq!(part.as_f32().unwrap(), row.repeat(2));
    // one value differing in one image: the images differ, refused
    let mut other = row.repeat(N);
    other[3 * (N - 1)] = 0.0;
    ws.insert("cls", Tensor::from_f32(vec![N, 1, 3], other).unwrap());
    let m = Model {
        graph: m.graph,
        weights: ws,
    };
    let e = rebatch(&m, 1).unwrap_err();
    assert!(e.contains("concat"), "{e}");
}

/// The tail of thin values after the last wide one runs on the whole
/// batch: the head's groups, then the tail, give the batch's result.
#[test]
fn a_thin_tail_is_cut_off_and_runs_on_the_whole_batch() {
    use kiln_ir::batch::split_tail;
    let m = model(&conv_head());
    // the reduction (6 floats an image) and the gemm (5) are thin at 100
    // bytes; the layer norm's 216 floats are not
    let split = split_tail(&m, 100).unwrap();
    let ops = |g: &Graph| -> Vec<String> {
        g.node_ids()
            .map(|id| g.node(id).op.name().to_string())
            .filter(|n| n != "input" && n != "weight")
            .collect()
    };
    assert_eq!(ops(&split.tail.graph), ["reduce_mean", "gemm"]);
    assert_eq!(split.head.graph.outputs().len(), 1);
    let x = values(m.graph.value_type(Value::of(m.graph.inputs()[0])), 0);
    let whole = run(&m.graph, &m.weights, std::slice::from_ref(&x)).unwrap();
    let cut = run(
        &split.head.graph,
        &split.head.weights,
        std::slice::from_ref(&x),
    )
    .unwrap();
    let got = run(&split.tail.graph, &split.tail.weights, &cut).unwrap();
    assert_eq!(got[0].as_f32().unwrap(), whole[0].as_f32().unwrap());
    // the head still splits into images
    groups_match(&split.head, 1);
    // everything thin reaches back to the input: no cut
    assert!(split_tail(&m, 1 << 20).is_none());
    // nothing thin: no cut
    assert!(split_tail(&m, 4).is_none());
}
