//! Round-trip guarantees of the `.kir` text format: every `.kir` file in the
//! repository is canonical (print ∘ parse gives it back), and graphs built
//! through the API survive print → parse unchanged.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use kiln_ir::op::OP_NAMES;
use kiln_ir::text::{parse, print, structural_diff, structurally_equal};
use kiln_ir::{BinaryOp, Float, Graph, Op, TensorType, UnaryOp, verify};

/// Every `.kir` file under `dir`, skipping `target/` and dot-directories.
/// Symlinked directories are not followed, so a link cannot make a loop.
fn kir_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            if name != "target" && !name.starts_with('.') {
                kir_files(&path, out);
            }
        } else if ft.is_file() && name.ends_with(".kir") {
            out.push(path);
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What a repository file promises. Whole-line `#` comments and blank lines
/// are not part of the graph (print cannot reproduce them), so they are
/// dropped before comparing; a comment line `# error: MESSAGE` says the file
/// must fail to parse with exactly `MESSAGE` (`line L, column C: ...`).
struct Expectation {
    canonical: String,
    error: Option<String>,
}

fn expectation(text: &str) -> Expectation {
    let mut canonical = String::new();
    let mut error = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(c) = t.strip_prefix('#') {
            if let Some(e) = c.trim_start().strip_prefix("error:") {
                error = Some(e.trim().to_string());
            }
        } else if !t.is_empty() {
            canonical.push_str(line);
            canonical.push('\n');
        }
    }
    Expectation { canonical, error }
}

/// Checks one file; returns what is wrong with it.
fn check_file(text: &str) -> Result<(), String> {
    let exp = expectation(text);
    match (parse(text), exp.error) {
        (Err(e), Some(want)) if e.to_string() == want => Ok(()),
        (Err(e), Some(want)) => Err(format!("fails with\n  {e}\nnot\n  {want}")),
        (Ok(_), Some(want)) => Err(format!("parses, but should fail with {want}")),
        (Err(e), None) => Err(format!("does not parse: {e}")),
        (Ok(g), None) => {
            let printed = print(&g);
            if printed != exp.canonical {
                return Err(format!(
                    "is not canonical; print(parse(file)) is:\n{printed}"
                ));
            }
            let again = parse(&printed).map_err(|e| format!("printed text fails: {e}"))?;
            match structural_diff(&g, &again) {
                None => Ok(()),
                Some(d) => Err(format!("reparsed graph differs: {d}")),
            }
        }
    }
}

#[test]
fn every_kir_file_in_the_repo_round_trips() {
    let root = workspace_root();
    let mut files = Vec::new();
    kir_files(&root, &mut files);
    files.sort();
    // The walk must see this crate's own data, or it is not looking at all.
    let own = root.join("ir/tests/data/tiny.kir");
    assert!(
        files.iter().any(|f| f.ends_with("ir/tests/data/tiny.kir")),
        "the walk from {} did not find {}",
        root.display(),
        own.display()
    );
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = match fs::read_to_string(f) {
                Ok(t) => t,
                Err(e) => return Some(format!("{}: unreadable: {e}", f.display())),
            };
            check_file(&text)
                .err()
                .map(|e| format!("{}: {e}", f.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} .kir files fail:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

/// The file check itself: it must reject non-canonical text, unexpected
/// errors, wrong error messages and files that should fail but parse.
#[test]
fn the_file_check_rejects_what_it_should() {
    let good = "graph t {\n  input %x : f32[2]\n  output %x\n}\n";
    assert_eq!(check_file(good), Ok(()));
    assert_eq!(check_file(&format!("# header\n\n{good}# footer\n")), Ok(()));
    let spaced = "graph t {\n  input %x :  f32[2]\n  output %x\n}\n";
    assert!(check_file(spaced).unwrap_err().contains("not canonical"));
    let trailing = "graph t {\n  input %x : f32[2] # why\n  output %x\n}\n";
    assert!(check_file(trailing).unwrap_err().contains("not canonical"));
    let bad = "graph t {\n  output %y\n}\n";
    assert!(check_file(bad).unwrap_err().contains("does not parse"));
    // The header comment is line 1, so the graph's error moves to line 3.
    let expected = format!("# error: line 3, column 10: undefined value %y\n{bad}");
    assert_eq!(check_file(&expected), Ok(()));
    let wrong = format!("# error: line 2, column 10: undefined value %y\n{bad}");
    assert!(check_file(&wrong).unwrap_err().contains("fails with"));
    let parses = format!("# error: anything\n{good}");
    assert!(check_file(&parses).unwrap_err().contains("should fail"));
}

/// The data files under ir/tests/data use every op name, so the repo-wide
/// round trip covers the whole op set.
#[test]
fn data_files_cover_every_op() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut used = BTreeSet::new();
    let mut files = Vec::new();
    kir_files(&dir, &mut files);
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        let Ok(g) = parse(&text) else { continue };
        for id in g.node_ids() {
            used.insert(g.node(id).op.name());
        }
    }
    let missing: Vec<&str> = OP_NAMES
        .iter()
        .copied()
        .filter(|n| !used.contains(n))
        .collect();
    assert!(missing.is_empty(), "ops without a data file: {missing:?}");
}

/// docs/ir-text.md documents every op: a new op fails here until it is
/// added to the reference.
#[test]
fn the_reference_documents_every_op() {
    let doc = fs::read_to_string(workspace_root().join("docs/ir-text.md")).unwrap();
    let reference = doc
        .split("## Op reference")
        .nth(1)
        .expect("docs/ir-text.md has an `## Op reference` section");
    let missing: Vec<&str> = OP_NAMES
        .iter()
        .copied()
        .filter(|n| !reference.contains(&format!("`{n}`")))
        .collect();
    assert!(missing.is_empty(), "not in docs/ir-text.md: {missing:?}");
}

fn roundtrip(g: &Graph) -> String {
    verify(g).unwrap();
    let text = print(g);
    let back = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    if let Some(d) = structural_diff(g, &back) {
        panic!("{d}\n{text}");
    }
    assert_eq!(print(&back), text);
    text
}

#[test]
fn builder_graph_prints_as_the_issue_example() {
    let mut g = Graph::new("tiny");
    let x = g.add_input("x", TensorType::f32([1, 3, 8, 8])).unwrap();
    let w = g
        .add_weight("conv.weight", TensorType::f32([4, 3, 3, 3]))
        .unwrap();
    let b = g.add_weight("conv.bias", TensorType::f32([4])).unwrap();
    let conv = Op::Conv2d {
        stride: [1, 1],
        pad: [1, 1, 1, 1],
        dilation: [1, 1],
        groups: 1,
    };
    let c = g.add(conv, &[x, w, b]).unwrap();
    let r = g.add(Op::Unary(UnaryOp::Relu), &[c]).unwrap();
    let split = Op::Split {
        axis: 1,
        sizes: vec![2, 2],
    };
    let parts = g
        .add_named(split, &[r], vec!["a".into(), "b".into()])
        .unwrap();
    g.set_outputs(vec![r, parts[1]]);
    let text = roundtrip(&g);
    let file =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny.kir"))
            .unwrap();
    assert_eq!(text, file);
}

/// Inputs and weights print first even when declared after the nodes that
/// use them; the graph prints in the order it was built otherwise.
#[test]
fn leaves_print_first_and_nodes_in_builder_order() {
    let mut g = Graph::new("order");
    let x = g.add_input("x", TensorType::f32([3])).unwrap();
    let a = g.add(Op::Unary(UnaryOp::Exp), &[x]).unwrap();
    let w = g.add_weight("w", TensorType::f32([3])).unwrap();
    let y = g.add_input("y", TensorType::f32([3])).unwrap();
    let b = g.add(Op::Binary(BinaryOp::Mul), &[a, w]).unwrap();
    let c = g.add(Op::Binary(BinaryOp::Add), &[b, y]).unwrap();
    g.set_outputs(vec![c, a]);
    assert_eq!(
        roundtrip(&g),
        "graph order {\n  input %x : f32[3]\n  input %y : f32[3]\n  weight @w : f32[3]\n  \
         %0 = exp(%x) : f32[3]\n  %1 = mul(%0, @w) : f32[3]\n  %2 = add(%1, %y) : f32[3]\n  \
         output %2, %0\n}\n"
    );
}

/// Text written by hand need not be canonical: any spacing, comments,
/// forward references, default attributes spelled out and integers where
/// floats are expected all parse, and print in canonical form.
#[test]
fn hand_written_text_parses_and_prints_canonically() {
    let src = "# a comment\ngraph   hand{input %x:f32[ 1 , 4 ]  # trailing comment\n\
               output %s , %x\n\
               %s = clip( %r ) { max = 6 , min = 0 } : f32[1,4]\n\
               %r = relu(%x):f32[1,4]}";
    // The output line must come last; everything else may be in any order.
    assert_eq!(
        parse(src).unwrap_err().to_string(),
        "line 4, column 1: expected `,` or the closing `}` after an output value, found `%s`"
    );
    let src = "# a comment\ngraph   hand{input %x:f32[ 1 , 4 ]  # trailing comment\n\
               %s = clip( %r ) { max = 6 , min = 0 } : f32[1,4]\n\
               %c = conv2d(%u, @w) {groups=1, pad=[0,0,0,0], stride=[1,1], dilation=[1,1]} : f32[1,1,1,4]\n\
               weight @w : f32[1,1,1,1]\n\
               %u = unsqueeze(%r) {axes=[0,1]} : f32[1,1,1,4]\n\
               %r = relu(%x):f32[1,4]\n\
               output %s , %x, %c}";
    let g = parse(src).unwrap();
    assert_eq!(
        print(&g),
        "graph hand {\n  input %x : f32[1,4]\n  weight @w : f32[1,1,1,1]\n  \
         %r = relu(%x) : f32[1,4]\n  %s = clip(%r) {min=0.0, max=6.0} : f32[1,4]\n  \
         %u = unsqueeze(%r) {axes=[0,1]} : f32[1,1,1,4]\n  \
         %c = conv2d(%u, @w) {stride=[1,1], pad=[0,0,0,0], groups=1} : f32[1,1,1,4]\n  \
         output %s, %x, %c\n}\n"
    );
    roundtrip(&g);
}

#[test]
fn structural_diff_finds_each_kind_of_difference() {
    let build = |name: &str, op: Op, swap: bool, out_first: bool| {
        let mut g = Graph::new(name);
        let x = g.add_input("x", TensorType::f32([2])).unwrap();
        let y = g.add_input("y", TensorType::f32([2])).unwrap();
        let s = g.add(op, &if swap { [y, x] } else { [x, y] }).unwrap();
        g.set_outputs(if out_first { vec![x, s] } else { vec![s, x] });
        g
    };
    let add = Op::Binary(BinaryOp::Add);
    let base = build("g", add.clone(), false, false);
    assert!(structurally_equal(&base, &base.clone()));
    let cases = [
        (build("h", add.clone(), false, false), "graph names differ"),
        (
            build("g", Op::Binary(BinaryOp::Sub), false, false),
            "op add vs sub",
        ),
        (
            build("g", add.clone(), true, false),
            "operands (%x, %y) vs (%y, %x)",
        ),
        (build("g", add.clone(), false, true), "graph outputs differ"),
    ];
    for (other, want) in cases {
        let d = structural_diff(&base, &other).expect("graphs differ");
        assert!(d.contains(want), "{d:?} should mention {want:?}");
    }
    let mut renamed = Graph::new("g");
    let x = renamed.add_input("x", TensorType::f32([2])).unwrap();
    let y = renamed.add_input("y", TensorType::f32([2])).unwrap();
    let s = renamed.add_named(add, &[x, y], vec!["sum".into()]).unwrap()[0];
    renamed.set_outputs(vec![s, x]);
    assert!(
        structural_diff(&base, &renamed)
            .unwrap()
            .contains("outputs")
    );
    let mut clip = base.clone();
    let id = clip.outputs()[0].node;
    clip.node_mut(id).op = Op::Clip {
        min: Float(0.0),
        max: Float(-0.0),
    };
    assert!(structural_diff(&base, &clip).is_some());
}
