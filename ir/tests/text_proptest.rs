//! Property tests of the `.kir` text format: the parser never panics, on
//! noise or on damaged real text; whatever it accepts prints to a fixed
//! point; and random graphs built through the API survive print → parse.

use std::path::Path;
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use kiln_ir::text::{parse, print, structural_diff};
use kiln_ir::{
    BinaryOp, DType, Float, Graph, Op, PadMode, PoolKind, ReduceKind, TensorType, UnaryOp, Value,
    verify,
};

/// For any text the parser accepts: printing the graph and parsing that
/// gives an equal graph that prints the same (print ∘ parse is a fixed point).
fn accepted_text_is_stable(src: &str) -> Result<(), TestCaseError> {
    let Ok(g) = parse(src) else { return Ok(()) };
    let text = print(&g);
    let again = parse(&text)
        .map_err(|e| TestCaseError::fail(format!("printed text fails: {e}\n{text}")))?;
    if let Some(d) = structural_diff(&g, &again) {
        return Err(TestCaseError::fail(format!("{d}\n{text}")));
    }
    prop_assert_eq!(print(&again), text);
    Ok(())
}

/// The `.kir` files of this crate: valid text to damage.
static CORPUS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("ir/tests/data exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "kir"))
        .collect();
    files.sort();
    let texts: Vec<String> = files
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("readable data file"))
        .collect();
    assert!(texts.len() >= 5, "the corpus lost its files");
    texts
});

/// Fragments that are likely to take a damaged text somewhere interesting:
/// tokens, numbers at the edges of their range, whole statements.
const SNIPPETS: &[&str] = &[
    "%0",
    "%x",
    "%a",
    "@w",
    "@conv.weight",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    "=",
    "\"",
    "\\",
    "#",
    "\n",
    " ",
    "%\"q\\\"/:\"",
    "1e-5",
    "-inf",
    "inf",
    "NaN",
    "-0.0",
    "0",
    "1",
    "2",
    "-1",
    "3.5e38",
    "1e39",
    "99999999999999999999",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "4294967296",
    "relu",
    "add",
    "split",
    "conv2d",
    "concat",
    "reshape",
    "slice",
    "pad",
    "gather",
    "input",
    "weight",
    "output",
    "graph",
    "true",
    "false",
    "reflect",
    "edge",
    "i64",
    "f32",
    "f32[2]",
    "i64[]",
    "f32[1,4]",
    "f32[4294967296,4294967296]",
    "axis=0",
    "sizes=[1,1]",
    "pads=[]",
    "[]",
    "input %z : f32[1]\n",
    "weight @z : f32[1]\n",
    "output %0\n",
    "%a, %b = ",
    "%n = relu(%n) : f32[1]\n",
    "%n = add(%x, %n) : f32[2,3]\n",
];

/// A way to damage text. Positions are taken modulo its length.
#[derive(Clone, Debug)]
enum Mutation {
    DeleteChars(usize, usize),
    InsertChar(usize, char),
    ReplaceChar(usize, char),
    InsertSnippet(usize, usize),
    DeleteToken(usize),
    ReplaceToken(usize, usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let pos = any::<usize>();
    let snippet = 0..SNIPPETS.len();
    let ch = prop_oneof![
        proptest::char::range(' ', '~'),
        Just('\n'),
        Just('é'),
        Just('\u{0}')
    ];
    prop_oneof![
        (pos, 1usize..8).prop_map(|(a, n)| Mutation::DeleteChars(a, n)),
        (pos, ch.clone()).prop_map(|(a, c)| Mutation::InsertChar(a, c)),
        (pos, ch).prop_map(|(a, c)| Mutation::ReplaceChar(a, c)),
        (pos, snippet.clone()).prop_map(|(a, s)| Mutation::InsertSnippet(a, s)),
        pos.prop_map(Mutation::DeleteToken),
        (pos, snippet).prop_map(|(a, s)| Mutation::ReplaceToken(a, s)),
        pos.prop_map(Mutation::DuplicateLine),
        (pos, pos).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

/// The span of the token-like run around `at`: a name or number (with a
/// leading sigil or sign), or else the single character.
fn token_span(t: &[char], at: usize) -> (usize, usize) {
    let word = |c: char| c.is_ascii_alphanumeric() || "_.%@-".contains(c);
    if !word(t[at]) {
        return (at, at + 1);
    }
    let mut a = at;
    while a > 0 && word(t[a - 1]) {
        a -= 1;
    }
    let mut b = at;
    while b < t.len() && word(t[b]) {
        b += 1;
    }
    (a, b)
}

fn apply(src: &str, muts: &[Mutation]) -> String {
    let mut t: Vec<char> = src.chars().collect();
    for m in muts {
        let n = t.len().max(1);
        match *m {
            Mutation::DeleteChars(a, len) => {
                let a = a % n;
                let b = (a + len).min(t.len());
                t.drain(a.min(t.len())..b);
            }
            Mutation::InsertChar(a, c) => t.insert(a % (t.len() + 1), c),
            Mutation::ReplaceChar(a, c) => {
                if !t.is_empty() {
                    t[a % n] = c;
                }
            }
            Mutation::InsertSnippet(a, s) => {
                let a = a % (t.len() + 1);
                t.splice(a..a, SNIPPETS[s].chars());
            }
            Mutation::DeleteToken(a) => {
                if !t.is_empty() {
                    let (a, b) = token_span(&t, a % n);
                    t.drain(a..b);
                }
            }
            Mutation::ReplaceToken(a, s) => {
                if !t.is_empty() {
                    let (a, b) = token_span(&t, a % n);
                    t.splice(a..b, SNIPPETS[s].chars());
                }
            }
            Mutation::DuplicateLine(a) | Mutation::SwapLines(a, _) => {
                let s: String = t.iter().collect();
                let mut lines: Vec<&str> = s.split('\n').collect();
                let i = a % lines.len();
                if let Mutation::SwapLines(_, b) = *m {
                    let j = b % lines.len();
                    lines.swap(i, j);
                } else {
                    lines.insert(i, lines[i]);
                }
                t = lines.join("\n").chars().collect();
            }
        }
    }
    t.into_iter().collect()
}

// ---------------------------------------------------------------------------
// Random graphs through the builder API.

/// One build step: an op kind and the numbers that choose its operands,
/// attributes and result name. Steps the shapes do not allow are skipped.
#[derive(Clone, Debug)]
struct Step {
    kind: u8,
    a: usize,
    b: usize,
    p: u64,
    f: f32,
    g: f32,
    name: Option<String>,
}

#[derive(Clone, Debug)]
struct Spec {
    name: String,
    inputs: Vec<(Option<String>, bool, Vec<usize>)>,
    steps: Vec<Step>,
    outputs: Vec<usize>,
}

/// Names a hand-written graph or an ONNX export might use, quoting included.
fn name() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => Just(None),
        2 => "[a-z][a-z0-9_.]{0,6}".prop_map(Some),
        1 => "[0-9]{1,2}".prop_map(Some),
        2 => "[a-z0-9_./:\"\\\\ #%@é{}-]{0,6}".prop_map(Some),
    ]
}

/// Any float the format can carry exactly. NaN payloads cannot round-trip
/// (every NaN prints as `NaN`), so NaNs are the canonical one.
fn float() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => any::<f32>().prop_map(|x| if x.is_nan() { f32::NAN } else { x }),
        1 => prop_oneof![
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(f32::NAN),
            Just(-0.0f32),
            Just(f32::MAX),
            Just(f32::MIN_POSITIVE / 8.0),
            Just(1e-5f32),
        ],
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        any::<u8>(),
        any::<usize>(),
        any::<usize>(),
        any::<u64>(),
        float(),
        float(),
        name(),
    )
        .prop_map(|(kind, a, b, p, f, g, name)| Step {
            kind,
            a,
            b,
            p,
            f,
            g,
            name,
        })
}

fn spec() -> impl Strategy<Value = Spec> {
    let input = (
        name(),
        proptest::bool::weighted(0.1),
        proptest::collection::vec(1usize..5, 0..5),
    );
    (
        name(),
        proptest::collection::vec(input, 1..4),
        proptest::collection::vec(step(), 0..24),
        proptest::collection::vec(any::<usize>(), 1..4),
    )
        .prop_map(|(name, inputs, steps, outputs)| Spec {
            name: name.unwrap_or_else(|| "g".into()),
            inputs,
            steps,
            outputs,
        })
}

/// Adds `op`, under the step's name when it is free, else under fresh
/// numeric names. An op the shapes reject adds nothing.
fn add(g: &mut Graph, op: Op, operands: &[Value], name: &Option<String>) -> Vec<Value> {
    let n = op.num_outputs();
    if let Some(base) = name {
        let names = if n == 1 {
            vec![base.clone()]
        } else {
            (0..n).map(|i| format!("{base}{i}")).collect()
        };
        if let Ok(v) = g.add_named(op.clone(), operands, names) {
            return v;
        }
    }
    g.add_multi(op, operands).unwrap_or_default()
}

/// A weight of the given shape, under the step's name when it is free.
fn weight(g: &mut Graph, shape: Vec<usize>, s: &Step) -> Option<Value> {
    let ty = TensorType::f32(shape);
    let fallback = format!("w{}", g.node_count());
    let name = s.name.clone().unwrap_or_else(|| fallback.clone());
    g.add_weight(name, ty.clone())
        .or_else(|_| g.add_weight(fallback, ty))
        .ok()
}

/// A permutation of `0..n` chosen by `p`.
fn permutation(n: usize, mut p: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (p % (i as u64 + 1)) as usize;
        p /= i as u64 + 1;
        v.swap(i, j);
    }
    v
}

fn apply_step(g: &mut Graph, vals: &[Value], s: &Step) -> Vec<Value> {
    let x = vals[s.a % vals.len()];
    let y = vals[s.b % vals.len()];
    let t = g.value_type(x).clone();
    let r = t.rank();
    let p = s.p;
    // `p` split into small independent choices.
    let c = |shift: u32, n: u64| ((p >> shift) % n.max(1)) as usize;
    let ax = c(0, r as u64);
    let dim = t.shape.get(ax).copied().unwrap_or(0);
    let nm = &s.name;
    match s.kind % 24 {
        0 => add(
            g,
            Op::Unary(UnaryOp::ALL[c(0, UnaryOp::ALL.len() as u64)]),
            &[x],
            nm,
        ),
        1 => {
            let op = Op::Binary(BinaryOp::ALL[c(0, BinaryOp::ALL.len() as u64)]);
            let v = add(g, op.clone(), &[x, y], nm);
            if v.is_empty() {
                add(g, op, &[x, x], nm)
            } else {
                v
            }
        }
        2 => {
            let shape = match c(4, 3) {
                0 => vec![t.numel()],
                1 => t.shape.iter().rev().copied().collect(),
                _ => [&[1][..], &t.shape].concat(),
            };
            add(g, Op::Reshape { shape }, &[x], nm)
        }
        3 => add(
            g,
            Op::Transpose {
                perm: permutation(r, p),
            },
            &[x],
            nm,
        ),
        4 if r > 0 => {
            let operands = if p & 16 == 0 {
                vec![x; 1 + c(5, 3)]
            } else {
                vec![x, y]
            };
            add(g, Op::Concat { axis: ax }, &operands, nm)
        }
        5 if r > 0 => add(g, Op::Softmax { axis: ax }, &[x], nm),
        6 if r > 0 => {
            let k = (1 + c(8, 3)).min(dim.max(1));
            let mut sizes = vec![1; k - 1];
            sizes.push(dim - (k - 1));
            add(g, Op::Split { axis: ax, sizes }, &[x], nm)
        }
        7 if r > 0 => {
            let mut axes: Vec<usize> = (0..r).filter(|i| (p >> (8 + i)) & 1 == 1).collect();
            if axes.is_empty() {
                axes.push(ax);
            }
            let kind = [ReduceKind::Mean, ReduceKind::Sum, ReduceKind::Max][c(4, 3)];
            add(
                g,
                Op::Reduce {
                    kind,
                    axes,
                    keepdims: p & 8 != 0,
                },
                &[x],
                nm,
            )
        }
        8 => {
            let op = if r == 0 || p & 1 == 0 {
                Op::Slice {
                    axes: vec![],
                    starts: vec![],
                    ends: vec![],
                    steps: vec![],
                }
            } else {
                let d = dim as i64;
                let step = [1, 2, -1, -3, i64::MAX, i64::MIN][c(8, 6)];
                let start = (p >> 16) as i64 % (d + 3) - 1;
                let end = if p & 2 == 0 {
                    i64::MAX
                } else {
                    (p >> 24) as i64 % (d + 3) - 2
                };
                Op::Slice {
                    axes: vec![ax],
                    starts: vec![start],
                    ends: vec![end],
                    steps: vec![step],
                }
            };
            add(g, op, &[x], nm)
        }
        9 => {
            let pads = (0..2 * r).map(|i| c(4 + 2 * i as u32, 3)).collect();
            let mode = [PadMode::Constant, PadMode::Reflect, PadMode::Edge][c(0, 3)];
            let value = Float(if mode == PadMode::Constant { s.f } else { 0.0 });
            add(g, Op::Pad { pads, mode, value }, &[x], nm)
        }
        10 => {
            let axes = match c(0, 3) {
                0 => vec![0],
                1 => vec![r],
                _ => vec![0, r + 1],
            };
            add(g, Op::Unsqueeze { axes }, &[x], nm)
        }
        11 => {
            let axes: Vec<usize> = (0..r).filter(|&i| t.shape[i] == 1).collect();
            if axes.is_empty() {
                vec![]
            } else {
                add(g, Op::Squeeze { axes }, &[x], nm)
            }
        }
        12 => add(
            g,
            Op::Flatten {
                axis: c(0, r as u64 + 1),
            },
            &[x],
            nm,
        ),
        13 => {
            let op = if p & 1 == 0 {
                Op::Clip {
                    min: Float(s.f),
                    max: Float(s.g),
                }
            } else {
                Op::HardSigmoid {
                    alpha: Float(s.f),
                    beta: Float(s.g),
                }
            };
            add(g, op, &[x], nm)
        }
        14 if r == 2 => {
            let (trans_a, trans_b) = (p & 1 != 0, p & 2 != 0);
            let k = if trans_a { t.shape[0] } else { t.shape[1] };
            let n = 1 + c(4, 4);
            let Some(b) = weight(g, if trans_b { vec![n, k] } else { vec![k, n] }, s) else {
                return vec![];
            };
            let mut operands = vec![x, b];
            if p & 4 != 0 {
                operands.extend(weight(g, vec![n], s));
            }
            let op = Op::Gemm {
                alpha: Float(s.f),
                beta: Float(s.g),
                trans_a,
                trans_b,
            };
            [vec![b], add(g, op, &operands, nm)].concat()
        }
        15 if r == 4 => {
            let ch = t.shape[1];
            let groups = if p & 1 == 0 { 1 } else { ch };
            let o = if groups == 1 {
                1 + c(1, 4)
            } else {
                ch * (1 + c(1, 2))
            };
            let (kh, kw) = (1 + c(3, 3), 1 + c(5, 3));
            let Some(w) = weight(g, vec![o, ch / groups.max(1), kh, kw], s) else {
                return vec![];
            };
            let mut operands = vec![x, w];
            if p & 2048 != 0 {
                operands.extend(weight(g, vec![o], s));
            }
            let op = Op::Conv2d {
                stride: [1 + c(7, 2), 1 + c(8, 2)],
                pad: [c(12, 2), c(13, 2), c(14, 2), c(15, 2)],
                dilation: [1 + c(9, 2), 1 + c(10, 2)],
                groups,
            };
            add(g, op, &operands, nm)
        }
        16 if r > 0 => {
            let Some(gamma) = weight(g, t.shape[ax..].to_vec(), s) else {
                return vec![];
            };
            let mut operands = vec![x, gamma];
            if p & 64 != 0 {
                operands.extend(weight(g, t.shape[ax..].to_vec(), s));
            }
            add(
                g,
                Op::LayerNorm {
                    axis: ax,
                    eps: Float(s.f.abs()),
                },
                &operands,
                nm,
            )
        }
        17 if r >= 2 => {
            let ch = t.shape[1];
            let params: Vec<Value> = (0..4).filter_map(|_| weight(g, vec![ch], s)).collect();
            if params.len() < 4 {
                return vec![];
            }
            if p & 1 == 0 {
                let op = Op::BatchNorm { eps: Float(s.f) };
                add(g, op, &[&[x][..], &params].concat(), nm)
            } else {
                // (an empty slice can leave zero channels: no divisors)
                let divisors: Vec<usize> = (1..=ch).filter(|&d| ch.is_multiple_of(d)).collect();
                let groups = divisors
                    .get(c(1, divisors.len() as u64))
                    .copied()
                    .unwrap_or(1);
                let op = Op::GroupNorm {
                    groups,
                    eps: Float(s.g),
                };
                add(g, op, &[x, params[0], params[1]], nm)
            }
        }
        18 if r == 4 && p & (1 << 40) != 0 => {
            use kiln_ir::{CoordMode, NearestMode, ResizeMode};
            let mode = ResizeMode::ALL[c(41, 2)];
            let op = Op::Resize {
                mode,
                nearest: if mode == ResizeMode::Nearest {
                    NearestMode::ALL[c(43, 4)]
                } else {
                    NearestMode::RoundPreferFloor
                },
                coord: CoordMode::ALL[c(45, 4)],
                size: [1 + c(47, 6), 1 + c(50, 6)],
                scale: (p & (1 << 53) != 0).then(|| [Float(0.5 + c(54, 4) as f32), Float(1.5)]),
            };
            add(g, op, &[x], nm)
        }
        18 if r == 4 => {
            let kind = if p & 1 == 0 {
                PoolKind::Max
            } else {
                PoolKind::Avg
            };
            let kernel = [1 + c(1, 3), 1 + c(3, 3)];
            let pad = [
                c(5, kernel[0] as u64),
                c(7, kernel[1] as u64),
                c(9, kernel[0] as u64),
                c(11, kernel[1] as u64),
            ];
            let op = Op::Pool2d {
                kind,
                kernel,
                stride: [1 + c(13, 2), 1 + c(14, 2)],
                pad,
                count_include_pad: kind == PoolKind::Avg && p & 64 != 0,
            };
            add(g, op, &[x], nm)
        }
        19 if r > 0 && dim > 0 => {
            let d = dim as i64;
            let n = 1 + c(8, 3);
            let indices: Vec<i64> = (0..n)
                .map(|i| ((p >> (12 + 4 * i)) as i64 % (2 * d)) - d)
                .collect();
            let indices_shape = if n == 1 && p & 16 != 0 {
                vec![]
            } else {
                vec![n]
            };
            add(
                g,
                Op::Gather {
                    axis: ax,
                    indices,
                    indices_shape,
                },
                &[x],
                nm,
            )
        }
        20 => {
            let to = if p & 1 == 0 { DType::I64 } else { DType::F32 };
            add(g, Op::Cast { to }, &[x], nm)
        }
        21 => {
            let shape = [&[1 + c(1, 3)][..], &t.shape].concat();
            add(g, Op::Expand { shape }, &[x], nm)
        }
        22 => add(g, Op::GlobalAvgPool, &[x], nm),
        23 if r > 0 => {
            let v = add(g, Op::MatMul, &[x, y], nm);
            if !v.is_empty() {
                return v;
            }
            let Some(w) = weight(g, vec![t.shape[r - 1], 1 + c(0, 3)], s) else {
                return vec![];
            };
            [vec![w], add(g, Op::MatMul, &[x, w], nm)].concat()
        }
        _ => vec![],
    }
}

fn build(spec: &Spec) -> Graph {
    let mut g = Graph::new(spec.name.clone());
    let mut vals = Vec::new();
    for (i, (name, is_i64, shape)) in spec.inputs.iter().enumerate() {
        let ty = TensorType::new(if *is_i64 { DType::I64 } else { DType::F32 }, shape.clone());
        let name = name.clone().unwrap_or_else(|| format!("in{i}"));
        let v = match g.add_input(name, ty.clone()) {
            Ok(v) => v,
            Err(_) => {
                let fresh = g.fresh_name();
                g.add_input(fresh, ty).expect("a fresh name is free")
            }
        };
        vals.push(v);
    }
    for s in &spec.steps {
        let new = apply_step(&mut g, &vals, s);
        vals.extend(new);
    }
    let outputs = spec.outputs.iter().map(|i| vals[i % vals.len()]).collect();
    g.set_outputs(outputs);
    g
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes (as text) never make the parser panic.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        accepted_text_is_stable(&String::from_utf8_lossy(&bytes))?;
    }

    /// Random printable text, and random sequences of the format's own
    /// fragments (which get much further into the parser), never panic.
    #[test]
    fn random_text_never_panics(
        noise in "[ -~\n\t]{0,300}",
        soup in proptest::collection::vec(0..SNIPPETS.len(), 0..60),
    ) {
        accepted_text_is_stable(&noise)?;
        let soup: String = soup.iter().map(|&i| SNIPPETS[i]).collect::<Vec<_>>().join(" ");
        accepted_text_is_stable(&format!("graph t {{\n{soup}\n}}\n"))?;
    }

    /// Damaged valid text (data files and printed random graphs) parses or
    /// fails cleanly; what parses is a print∘parse fixed point.
    #[test]
    fn mutated_text_never_panics(
        file in 0usize..64,
        random in spec(),
        use_random in any::<bool>(),
        muts in proptest::collection::vec(mutation(), 1..5),
    ) {
        let src = if use_random {
            print(&build(&random))
        } else {
            CORPUS[file % CORPUS.len()].clone()
        };
        accepted_text_is_stable(&apply(&src, &muts))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Random graphs built through the API print, parse back structurally
    /// equal, and print identically.
    #[test]
    fn random_graphs_round_trip(spec in spec()) {
        let g = build(&spec);
        verify(&g).map_err(|e| TestCaseError::fail(format!("builder made a bad graph: {e}")))?;
        let text = print(&g);
        let back = parse(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        if let Some(d) = structural_diff(&g, &back) {
            return Err(TestCaseError::fail(format!("{d}\n{text}")));
        }
        prop_assert_eq!(print(&back), text);
    }
}

/// The random graphs are not trivial: across a fixed sample they reach
/// every op, multi-output splits and quoted names, so the round-trip
/// property above is exercised on all of them.
#[test]
fn random_graphs_cover_the_op_set() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let mut seen = std::collections::BTreeSet::new();
    let (mut quoted, mut multi) = (false, false);
    for _ in 0..500 {
        let g = build(&spec().new_tree(&mut runner).expect("a spec").current());
        let text = print(&g);
        quoted |= text.contains("%\"") || text.contains("@\"");
        for id in g.node_ids() {
            let node = g.node(id);
            seen.insert(node.op.name());
            multi |= node.outputs.len() > 1;
        }
    }
    let missing: Vec<&str> = kiln_ir::op::OP_NAMES
        .iter()
        .copied()
        .filter(|n| !seen.contains(n))
        .collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
    assert!(
        quoted && multi,
        "quoted names: {quoted}, multi-output nodes: {multi}"
    );
}
