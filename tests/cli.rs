//! The `kiln` command line, run as a user would: each command's output, and
//! the failure contract for bad input — a non-zero exit code, one line
//! `error: ...` naming the file, node or flag, never a panic.

mod common;

use std::path::Path;

use common::{arg, example, kiln, scratch};
use kiln::frontends::{npy, safetensors, zoo};
use kiln::ir::Tensor;

const KIR: &str = "conv_norm_attention.kir";
const WEIGHTS: &str = "conv_norm_attention.safetensors";
const INPUT: &str = "conv_norm_attention_input.npy";

/// The example's parameter count, by hand: conv 16·3·3·3 + 16, batch norm
/// γ and β 2·16, Q/K/V 3·16·16, layer norm 2·16.
const PARAMS: u64 = 432 + 16 + 32 + 768 + 32;
/// Its buffers: the batch norm's running mean and variance 2·16, the
/// scalar scale 1.
const BUFFERS: u64 = 32 + 1;
/// The example's MACs, by hand: conv 1024 outputs × 27; Q, K, V 3 × 1024
/// outputs × 16; scores 64·64 outputs × 16; probs @ V 1024 outputs × 64.
const MACS: u64 = 1024 * 27 + 3 * 1024 * 16 + 4096 * 16 + 1024 * 64;
/// Computing nodes in the example file (every `%name = ...` line).
const NODES: u64 = 15;

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let p = scratch(name);
    std::fs::write(&p, text).unwrap();
    p
}

// ---------------------------------------------------------------- list

#[test]
fn list_shows_every_zoo_model() {
    let out = kiln(["list"]).ok().to_string();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("name") && lines[0].contains("family"));
    assert_eq!(lines.len(), zoo::list().len() + 1, "{out}");
    for (line, e) in lines[1..].iter().zip(zoo::list()) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], e.name);
        assert_eq!(
            cols.last().copied(),
            Some(format!("{0}x{0}", e.resolution).as_str())
        );
        assert!(line.contains(e.family), "{line}");
    }
}

// ---------------------------------------------------------------- info

#[test]
fn info_text_reports_signature_and_counts() {
    let out = kiln(["info", arg(&example(KIR))]).ok().to_string();
    assert!(out.contains("inputs:  %x f32[1,3,8,8]\n"), "{out}");
    assert!(out.contains("outputs: %out f32[1,64,16]\n"), "{out}");
    assert!(
        out.contains(
            "params:  1,280 (1.28 K), plus 33 buffer elements (BN running stats, constants)\n"
        ),
        "{out}"
    );
    assert_eq!((PARAMS, BUFFERS), (1280, 33));
    assert!(out.contains("MACs:    207,872 (207.87 K)\n"), "{out}");
    assert_eq!(MACS, 207_872);
    assert!(out.contains(&format!("nodes:   {NODES}\n")), "{out}");
    // One table row per computing node, named as in the file.
    let rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("value"))
        .skip(1)
        .collect();
    assert_eq!(rows.len() as u64, NODES, "{out}");
    let conv = rows[0].split_whitespace().collect::<Vec<_>>();
    assert_eq!(conv, ["%conv", "conv2d", "f32[1,16,8,8]", "448", "27,648"]);
}

#[test]
fn info_json_has_integer_keys_scripts_rely_on() {
    let out = kiln(["info", arg(&example(KIR)), "--json"])
        .ok()
        .to_string();
    let j: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(j["params"].as_u64(), Some(PARAMS));
    assert_eq!(j["buffers"].as_u64(), Some(BUFFERS));
    assert_eq!(j["macs"].as_u64(), Some(MACS));
    assert_eq!(j["nodes"].as_u64(), Some(NODES));
    assert_eq!(j["inputs"][0]["name"], "x");
    assert_eq!(j["inputs"][0]["shape"], serde_json::json!([1, 3, 8, 8]));
    assert_eq!(j["outputs"][0]["name"], "out");
    let layers = j["layers"].as_array().unwrap();
    assert_eq!(layers.len() as u64, NODES);
    assert_eq!(layers[9]["value"], "%scores");
    assert_eq!(layers[9]["macs"], 4096 * 16);
}

#[test]
fn info_checks_weights_when_given() {
    let line = kiln([
        "info",
        arg(&example(KIR)),
        "--weights",
        arg(&example(INPUT)),
    ])
    .fails_with(1)
    .to_string();
    assert!(line.contains(INPUT), "{line}");
}

// ---------------------------------------------------------------- run

#[test]
fn run_without_input_uses_a_seeded_input_and_says_so() {
    let a = kiln([
        "run",
        arg(&example(KIR)),
        "--weights",
        arg(&example(WEIGHTS)),
    ]);
    let out = a.ok().to_string();
    assert!(a.stderr.contains("no --input given"), "{}", a.stderr);
    assert!(a.stderr.contains("f32[1,3,8,8]"), "{}", a.stderr);
    assert!(out.contains("output %out: f32[1,64,16]"), "{out}");
    // Deterministic: the same seed gives the same output file.
    let (p1, p2, p3) = (
        scratch("seeded1.npy"),
        scratch("seeded2.npy"),
        scratch("seeded3.npy"),
    );
    for (p, seed) in [(&p1, "3"), (&p2, "3"), (&p3, "4")] {
        kiln([
            "run",
            arg(&example(KIR)),
            "--weights",
            arg(&example(WEIGHTS)),
            "--seed",
            seed,
            "--output",
            arg(p),
        ])
        .ok();
    }
    let read = |p: &Path| npy::read(p).unwrap();
    assert_eq!(read(&p1), read(&p2));
    assert_ne!(read(&p1), read(&p3));
}

#[test]
fn run_prints_top5_of_a_1xk_output() {
    let kir = write(
        "softmax6.kir",
        "graph softmax6 {\n  input %x : f32[1,6]\n  %p = softmax(%x) {axis=1} : f32[1,6]\n  output %p\n}\n",
    );
    let logits = [0.1f32, 0.9, -0.5, 0.3, 0.7, 0.2];
    let input = scratch("softmax6_in.npy");
    npy::write(&input, &Tensor::from_f32([1, 6], logits.to_vec()).unwrap()).unwrap();
    let out = kiln(["run", arg(&kir), "--input", arg(&input)])
        .ok()
        .to_string();
    assert!(out.contains("output %p: f32[1,6]"), "{out}");
    // Softmax keeps the order of the logits: 0.9, 0.7, 0.3, 0.2, 0.1.
    let z: f64 = logits.iter().map(|&x| f64::from(x).exp()).sum();
    let ranked: Vec<(usize, f64)> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            // "1.  index     1  value 0.263..."
            (w[2].parse().unwrap(), w[4].parse().unwrap())
        })
        .collect();
    assert_eq!(
        ranked.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1, 4, 3, 5, 0],
        "{out}"
    );
    for (i, v) in ranked {
        let want = f64::from(logits[i]).exp() / z;
        assert!((v - want).abs() < 2e-6, "index {i}: {v} vs {want}");
    }
}

#[test]
fn run_writes_output_npy() {
    let out = scratch("run_output.npy");
    let _ = std::fs::remove_file(&out);
    let r = kiln([
        "run",
        arg(&example(KIR)),
        "--weights",
        arg(&example(WEIGHTS)),
        "--input",
        arg(&example(INPUT)),
        "--output",
        arg(&out),
    ]);
    r.ok();
    assert!(r.stderr.contains("wrote"), "{}", r.stderr);
    assert_eq!(npy::read(&out).unwrap().shape(), &[1, 64, 16]);
}

// ---------------------------------------------------------------- export-kir

#[test]
fn export_kir_round_trips_graph_and_weights() {
    let kir = scratch("exported.kir");
    let w = scratch("exported.safetensors");
    kiln([
        "export-kir",
        arg(&example(KIR)),
        "--weights",
        arg(&example(WEIGHTS)),
        "-o",
        arg(&kir),
        "--weights-out",
        arg(&w),
    ])
    .ok();
    // The example is canonical text, so the export is the file without its
    // comment lines.
    let original = std::fs::read_to_string(example(KIR)).unwrap();
    let canonical: String = original
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(std::fs::read_to_string(&kir).unwrap(), canonical);
    assert_eq!(
        safetensors::load(&w).unwrap(),
        safetensors::load(&example(WEIGHTS)).unwrap()
    );
    // And the exported pair computes exactly what the original does.
    let (y1, y2) = (scratch("export_y1.npy"), scratch("export_y2.npy"));
    for (k, ws, y) in [(&example(KIR), &example(WEIGHTS), &y1), (&kir, &w, &y2)] {
        kiln([
            "run",
            arg(k),
            "--weights",
            arg(ws),
            "--input",
            arg(&example(INPUT)),
            "--output",
            arg(y),
        ])
        .ok();
    }
    assert_eq!(npy::read(&y1).unwrap(), npy::read(&y2).unwrap());
}

// ---------------------------------------------------------------- failures

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let line = kiln(["frobnicate"]).fails_with(2).to_string();
    assert!(line.contains("frobnicate"), "{line}");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let line = kiln(["info", "x.kir", "--jsno"]).fails_with(2).to_string();
    assert!(line.contains("--jsno"), "{line}");
    assert!(line.contains("--json"), "the tip is kept: {line}");
}

#[test]
fn unknown_model_lists_the_zoo() {
    let line = kiln(["info", "no_such_model"]).fails_with(2).to_string();
    assert!(line.contains("unknown model `no_such_model`"), "{line}");
    for e in zoo::list() {
        assert!(line.contains(e.name), "{line}");
    }
}

#[test]
fn missing_file_is_named() {
    let line = kiln(["info", "missing/model.kir"])
        .fails_with(1)
        .to_string();
    assert!(line.contains("missing/model.kir"), "{line}");
    let line = kiln([
        "run",
        arg(&example(KIR)),
        "--weights",
        "missing.safetensors",
    ])
    .fails_with(1)
    .to_string();
    assert!(line.contains("missing.safetensors"), "{line}");
}

#[test]
fn malformed_kir_names_file_and_line() {
    let kir = write(
        "malformed.kir",
        "graph t {\n  input %x : f32[2]\n  output %y\n}\n",
    );
    let line = kiln(["info", arg(&kir)]).fails_with(1).to_string();
    assert!(line.contains("malformed.kir"), "{line}");
    assert!(line.contains("line 3"), "{line}");
    assert!(line.contains("%y"), "{line}");
}

fn run_with_input(input: &Path) -> String {
    kiln([
        "run",
        arg(&example(KIR)),
        "--weights",
        arg(&example(WEIGHTS)),
        "--input",
        arg(input),
    ])
    .fails_with(1)
    .to_string()
}

#[test]
fn wrong_input_shape_names_file_and_input() {
    let p = scratch("wrong_shape.npy");
    npy::write(&p, &Tensor::from_f32([1, 3, 4, 4], vec![0.0; 48]).unwrap()).unwrap();
    let line = run_with_input(&p);
    assert!(line.contains("wrong_shape.npy"), "{line}");
    assert!(line.contains("holds f32[1,3,4,4]"), "{line}");
    assert!(line.contains("model input %x is f32[1,3,8,8]"), "{line}");
}

#[test]
fn wrong_input_dtype_is_named() {
    // int64 of the right shape: read fine, rejected by type.
    let p = scratch("wrong_dtype.npy");
    npy::write(&p, &Tensor::from_i64([1, 3, 8, 8], vec![0; 192]).unwrap()).unwrap();
    let line = run_with_input(&p);
    assert!(
        line.contains("wrong_dtype.npy") && line.contains("i64[1,3,8,8]"),
        "{line}"
    );
    // float64: not readable, with the conversion to apply.
    let f64_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("frontends/tests/data/npy/f64.npy");
    let line = run_with_input(&f64_file);
    assert!(
        line.contains("f64.npy") && line.contains("float64"),
        "{line}"
    );
    assert!(line.contains("a.astype(np.float32)"), "{line}");
}

#[test]
fn truncated_input_is_named() {
    let bytes = std::fs::read(example(INPUT)).unwrap();
    let p = scratch("truncated.npy");
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let line = run_with_input(&p);
    assert!(
        line.contains("truncated.npy") && line.contains("truncated data"),
        "{line}"
    );
}

#[test]
fn safetensors_missing_a_weight_is_named() {
    let mut w = safetensors::load(&example(WEIGHTS)).unwrap();
    w.remove("ln.beta");
    let p = scratch("missing_weight.safetensors");
    safetensors::save(&p, &w).unwrap();
    let line = kiln(["run", arg(&example(KIR)), "--weights", arg(&p)])
        .fails_with(1)
        .to_string();
    assert!(line.contains("missing_weight.safetensors"), "{line}");
    assert!(line.contains("@ln.beta: missing"), "{line}");
}

#[test]
fn wrong_number_of_inputs_is_a_usage_error() {
    let x = example(INPUT);
    let line = kiln([
        "run",
        arg(&example(KIR)),
        "--weights",
        arg(&example(WEIGHTS)),
        "--input",
        arg(&x),
        "--input",
        arg(&x),
    ])
    .fails_with(2)
    .to_string();
    assert!(line.contains("--input"), "{line}");
}

#[test]
fn bare_kiln_prints_help_and_fails() {
    let r = kiln(std::iter::empty::<&str>());
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("Usage: kiln <COMMAND>"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"));
    assert!(r.stdout.is_empty());
}

#[test]
fn help_and_version_succeed() {
    let help = kiln(["run", "--help"]).ok().to_string();
    for flag in ["--input", "--output", "--weights", "--seed", "--backend"] {
        assert!(help.contains(flag), "{help}");
    }
    assert!(kiln(["--version"]).ok().starts_with("kiln "));
}

#[test]
fn export_kir_alone_needs_no_weights() {
    let kir = scratch("exported_graph_only.kir");
    kiln(["export-kir", arg(&example(KIR)), "--output", arg(&kir)]).ok();
    let text = std::fs::read_to_string(&kir).unwrap();
    assert!(text.starts_with("graph conv_norm_attention {\n"), "{text}");
    assert!(text.contains("  output %out\n"), "{text}");
}

// ---------------------------------------------------------------- zoo

/// The README's model: the smallest Mobile-Former.
const ZOO: &str = "mobile_former_26m";

#[test]
fn zoo_model_runs_and_prints_top5() {
    let out = kiln(["run", ZOO]).ok().to_string();
    assert!(out.contains(": f32[1,1000]\n"), "{out}");
    assert!(out.contains("top-5 of 1000:"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" index ")).count(),
        5,
        "{out}"
    );
}

#[test]
fn zoo_weights_round_trip_through_safetensors_and_kir() {
    let (kir, w) = (scratch("zoo.kir"), scratch("zoo.safetensors"));
    kiln(["export-kir", ZOO, "-o", arg(&kir), "--weights-out", arg(&w)]).ok();
    // Same seed, so the same seeded input in all three runs; only where the
    // weights come from differs.
    let run = |args: &[&str], name: &str| {
        let y = scratch(name);
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--output", arg(&y)]);
        kiln(all).ok();
        npy::read(&y).unwrap()
    };
    let seeded = run(&[ZOO], "zoo_y_seeded.npy");
    let from_file = run(&[ZOO, "--weights", arg(&w)], "zoo_y_file.npy");
    let from_kir = run(&[arg(&kir), "--weights", arg(&w)], "zoo_y_kir.npy");
    assert_eq!(seeded, from_file);
    assert_eq!(seeded, from_kir);
}

#[test]
fn zoo_checkpoint_problems_are_listed_on_one_line() {
    let w = scratch("zoo_good.safetensors");
    kiln([
        "export-kir",
        ZOO,
        "-o",
        arg(&scratch("zoo_good.kir")),
        "--weights-out",
        arg(&w),
    ])
    .ok();
    let mut store = safetensors::load(&w).unwrap();
    let first = store.iter().next().unwrap().0.to_string();
    store.remove(&first);
    store.insert("not.a.layer", Tensor::from_f32([2], vec![0.0; 2]).unwrap());
    let bad = scratch("zoo_bad.safetensors");
    safetensors::save(&bad, &store).unwrap();
    let line = kiln(["run", ZOO, "--weights", arg(&bad)])
        .fails_with(1)
        .to_string();
    assert!(line.contains("zoo_bad.safetensors"), "{line}");
    assert!(line.contains(&format!("@{first}: missing")), "{line}");
    assert!(line.contains("@not.a.layer"), "{line}");
}

#[test]
fn run_kir_without_weights_uses_seeded_weights() {
    // A fixed input, so that only the weights depend on --seed.
    let run = |seed: &str, name: &str| {
        let p = scratch(name);
        kiln([
            "run",
            arg(&example(KIR)),
            "--input",
            arg(&example(INPUT)),
            "--seed",
            seed,
            "--output",
            arg(&p),
        ])
        .ok();
        npy::read(&p).unwrap()
    };
    let (a, b, c) = (
        run("5", "sw_a.npy"),
        run("5", "sw_b.npy"),
        run("6", "sw_c.npy"),
    );
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.as_f32().unwrap().iter().all(|x| x.is_finite()));
}

// ---------------------------------------------------------------- bench

#[test]
fn bench_prints_the_measurement_as_text_and_json() {
    let text = kiln([
        "bench",
        ZOO,
        "--threads",
        "1",
        "--iters",
        "3",
        "--warmup",
        "1",
    ])
    .ok()
    .to_string();
    for want in ["threads:  1", "compile:", "median", "GFLOP/s", "arena:"] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let json = kiln(["bench", ZOO, "--threads", "2", "--iters", "2", "--json"])
        .ok()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["threads"], 2, "{json}");
    for key in ["median_ms", "min_ms", "compile_ms", "gflops", "arena_bytes"] {
        assert!(v[key].is_number(), "{key}: {json}");
    }
    assert!(v["median_ms"].as_f64().unwrap() >= v["min_ms"].as_f64().unwrap());
    // images/s is the batch over the median latency.
    assert_eq!(v["batch"], 1, "{json}");
    let ips = v["images_per_s"].as_f64().unwrap();
    let want = 1e3 / v["median_ms"].as_f64().unwrap();
    assert!((ips - want).abs() <= 1e-9 * want, "{ips} vs {want}");
    assert!(text.contains(" images/s (batch 1)\n"), "{text}");
}

#[test]
fn bench_optimises_first_unless_told_not_to_and_profiles_per_node() {
    let json = kiln([
        "bench",
        ZOO,
        "--threads",
        "1",
        "--iters",
        "2",
        "--warmup",
        "0",
        "--json",
        "--profile",
    ])
    .ok()
    .to_string();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["optimized"], true, "{json}");
    assert!(v["fused_ops"].as_u64().unwrap() > 0, "{json}");
    assert!(v["passes_ms"].as_f64().unwrap() > 0.0, "{json}");
    let rows = v["profile"].as_array().expect("a profile array");
    assert!(
        rows.iter()
            .any(|r| r["node"].as_str().unwrap().contains("fused_conv"))
    );
    let share: f64 = rows.iter().map(|r| r["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-6, "shares sum to {share}");
    // every row carries a rate: GFLOP/s for MAC work, GB/s otherwise
    assert!(
        rows.iter()
            .all(|r| r["gflops"].is_number() || r["gbps"].is_number())
    );

    let json = kiln(["bench", ZOO, "--iters", "1", "--json", "--no-opt"])
        .ok()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["optimized"], false, "{json}");
    assert_eq!(v["fused_ops"], 0, "{json}");
    assert!(v.get("profile").is_none(), "{json}");
}

/// `--tiles` caps the GEMM tile level and the report names it; a level
/// above the CPU's is capped to the CPU's, a name kiln does not know is a
/// usage error.
#[test]
fn bench_tiles_caps_the_level() {
    let level = |tiles: &str| {
        let json = kiln([
            "bench",
            ZOO,
            "--threads",
            "1",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--json",
            "--tiles",
            tiles,
        ])
        .ok()
        .to_string();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["tiles"].as_str().unwrap().to_string()
    };
    assert_eq!(level("f32x4"), "f32x4");
    let avx2 = level("avx2");
    assert!(avx2 == "avx2" || avx2 == "f32x4", "{avx2}");
    let widest = level("avx512");
    assert!(["avx512", "avx2", "f32x4"].contains(&widest.as_str()));
    let text = kiln(["bench", ZOO, "--iters", "1", "--tiles", "f32x4"])
        .ok()
        .to_string();
    assert!(text.contains("tiles:    f32x4"), "{text}");
    let line = kiln(["bench", ZOO, "--tiles", "avx3"])
        .fails_with(2)
        .to_string();
    assert!(line.contains("avx3"), "{line}");
}

#[test]
fn run_at_every_tile_level_agrees() {
    let run = |tiles: &str| {
        let y = scratch(&format!("tiles_{tiles}.npy"));
        kiln(["run", ZOO, "--tiles", tiles, "--output", arg(&y)]).ok();
        npy::read(&y).unwrap()
    };
    let want = run("f32x4");
    for tiles in ["avx2", "avx512"] {
        assert_close(tiles, &run(tiles), &want);
    }
}

/// `--banded-chains` runs MobileViTv2's inverted residuals band by band:
/// the same output, a smaller arena (the expanded tensors are gone).
#[test]
fn banded_chains_agree_and_shrink_the_arena() {
    const MVIT: &str = "mobilevitv2_050";
    let run = |extra: &[&str], name: &str| {
        let y = scratch(name);
        let mut args = vec!["run", MVIT, "--output", arg(&y)];
        args.extend(extra);
        kiln(args).ok();
        npy::read(&y).unwrap()
    };
    let want = run(&[], "chains_split.npy");
    assert_close(
        "--banded-chains",
        &run(&["--banded-chains"], "chains_banded.npy"),
        &want,
    );
    let arena = |extra: &[&str]| {
        let mut args = vec!["bench", MVIT, "--iters", "1", "--warmup", "0", "--json"];
        args.extend(extra);
        let json = kiln(args).ok().to_string();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["arena_bytes"].as_u64().unwrap()
    };
    let (split, banded) = (arena(&[]), arena(&["--banded-chains"]));
    assert!(banded < split, "arena {banded} banded vs {split} split");
}

/// `got` is within 1e-4 of `want`'s largest magnitude, element by element.
fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    let (a, b) = (got.as_f32().unwrap(), want.as_f32().unwrap());
    let max_ref = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let max_diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        max_diff <= 1e-4 * max_ref,
        "{what}: {max_diff} vs {max_ref}"
    );
}

#[test]
fn bench_rejects_zero_iterations() {
    let line = kiln(["bench", ZOO, "--iters", "0"])
        .fails_with(2)
        .to_string();
    assert!(line.contains("--iters"), "{line}");
}

#[test]
fn run_with_jit_and_interp_agree() {
    let run = |backend: &str, name: &str| {
        let y = scratch(name);
        kiln(["run", ZOO, "--backend", backend, "--output", arg(&y)]).ok();
        npy::read(&y).unwrap()
    };
    // the JIT runs the optimised graph, the interpreter the graph as loaded
    let jit = run("jit", "agree_jit.npy");
    let interp = run("interp", "agree_interp.npy");
    assert_close("jit", &jit, &interp);
    let y = scratch("agree_noopt.npy");
    kiln(["run", ZOO, "--no-opt", "--output", arg(&y)]).ok();
    let unoptimised = npy::read(&y).unwrap();
    assert_close("jit --no-opt", &unoptimised, &interp);
    // the optimiser changed the arithmetic (batch norms folded), so the two
    // JIT results are close but not bit-identical
    assert_ne!(jit, unoptimised);
}

// ---------------------------------------------------------------- compile

#[test]
fn compile_lists_targets() {
    let r = kiln(["compile", "--list-targets"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for t in [
        "x86_64-unknown-linux-gnu",
        "aarch64-unknown-linux-gnu",
        "riscv64gc-unknown-linux-gnu",
    ] {
        assert!(r.stdout.contains(t), "{}", r.stdout);
    }
    assert!(r.stdout.contains("x86-64-v3"), "{}", r.stdout);
    // plain rv64gc (scalarised kernels) is riscv64's default level
    assert!(r.stdout.contains("--cpu rv64gc | rv64gcv"), "{}", r.stdout);
}

#[test]
fn compile_writes_an_object_and_its_header() {
    let o = scratch("cli_compile_model.o");
    let r = kiln([
        "compile",
        arg(&example(KIR)),
        "--weights",
        arg(&example(WEIGHTS)),
        "--target",
        "aarch64-unknown-linux-gnu",
        "--name",
        "cna",
        "--threads",
        "2",
        "-o",
        arg(&o),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("for up to 2 threads"), "{}", r.stderr);
    let obj = std::fs::read(&o).unwrap();
    assert_eq!(&obj[..4], b"\x7fELF");
    // e_machine 183 = EM_AARCH64
    assert_eq!(u16::from_le_bytes([obj[18], obj[19]]), 183);
    let h = std::fs::read_to_string(o.with_extension("h")).unwrap();
    assert!(h.contains("int kiln_cna_run(const float *input, float *output, void *scratch);"));
    assert!(h.contains("size_t kiln_cna_scratch_bytes(void);"));
    assert!(
        h.contains("int kiln_cna_run_parallel(const float *input, float *output, void *scratch,")
    );
    assert!(h.contains("#define KILN_CNA_ABI_VERSION 2"));
    assert!(h.contains("#define KILN_CNA_THREADS 2"));
    assert!(h.contains("#define KILN_CNA_TARGET \"aarch64-unknown-linux-gnu\""));
}

#[test]
fn compile_rejects_an_unknown_target_listing_the_supported_ones() {
    let r = kiln([
        "compile",
        "mobilevitv2_050",
        "--target",
        "sparc64-sun-solaris",
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.starts_with("error:")
            && r.stderr.contains("sparc64")
            && r.stderr.contains("x86_64-unknown-linux-gnu"),
        "{}",
        r.stderr
    );
}

#[test]
fn compile_creates_the_output_folder_first() {
    let dir = scratch("cli_compile_new_folder");
    let _ = std::fs::remove_dir_all(&dir);
    let o = dir.join("sub").join("m.o");
    let r = kiln([
        "compile",
        arg(&example(KIR)),
        "--weights",
        arg(&example(WEIGHTS)),
        "-o",
        arg(&o),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("note: created folder"), "{}", r.stderr);
    assert!(o.is_file() && o.with_extension("h").is_file());
}

#[test]
fn compile_into_a_file_fails_before_compiling() {
    let file = write("cli_compile_not_a_folder", "x");
    let o = file.join("m.o");
    let r = kiln(["compile", "mobilevitv2_050", "-o", arg(&o)]);
    let line = r.fails_with(1);
    assert!(
        line.contains("cli_compile_not_a_folder") && line.contains("is not a folder"),
        "{line}"
    );
    // It failed before building the model (whose name it would print).
    assert!(!r.stderr.contains("wrote"), "{}", r.stderr);
}

// ---------------------------------------------------------------- --input-shape

#[test]
fn input_shape_of_a_static_input_must_repeat_it() {
    let kir = example(KIR);
    kiln(["info", arg(&kir), "--input-shape", "x=1,3,8,8"]).ok();
    let r = kiln(["info", arg(&kir), "--input-shape", "x=4,3,8,8"]);
    let line = r.fails_with(2);
    assert!(
        line.contains("--input-shape x=4,3,8,8: input 'x' has the static shape 1,3,8,8"),
        "{line}"
    );
    let r = kiln(["run", arg(&kir), "--input-shape", "image=1,3,8,8"]);
    assert!(
        r.fails_with(2).contains("no input 'image' (inputs: x)"),
        "{}",
        r.stderr
    );
    let r = kiln(["bench", "mobile_former_26m", "--input-shape", "x=1,3,0,8"]);
    assert!(
        r.fails_with(2)
            .contains("dimension `0` is not a positive integer"),
        "{}",
        r.stderr
    );
    let r = kiln([
        "opt",
        arg(&kir),
        "--input-shape",
        "x=1,3,8,8",
        "--input-shape",
        "x=1,3,8,8",
    ]);
    assert!(
        r.fails_with(2).contains("given twice for 'x'"),
        "{}",
        r.stderr
    );
}

#[test]
fn input_shape_sizes_a_symbolic_onnx_batch() {
    // A TorchScript export with a symbolic batch (tools/export_spellings.py).
    let onnx = common::root().join("tests/data/spellings/vit.ts13.onnx");
    let r = kiln(["info", arg(&onnx)]);
    assert!(
        r.ok().contains("inputs:  %input f32[1,3,32,32]"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains(
            "note: input 'input' has a symbolic batch dimension 'batch': compiled for batch 1 \
             (another size: --input-shape input=N,3,32,32)"
        ),
        "{}",
        r.stderr
    );
    let r = kiln(["info", arg(&onnx), "--input-shape", "input=3,3,32,32"]);
    assert!(
        r.ok().contains("inputs:  %input f32[3,3,32,32]"),
        "{}",
        r.stdout
    );
    assert!(!r.stderr.contains("note:"), "{}", r.stderr);
    // The batch runs: three images, each as the batch-1 model computes it.
    let r = kiln(["run", arg(&onnx), "--input-shape", "input=3,3,32,32"]);
    assert!(r.ok().contains("output %logits: f32[3,10]"), "{}", r.stdout);
    let r = kiln(["info", arg(&onnx), "--input-shape", "input=1,3,16,16"]);
    assert!(
        r.fails_with(1)
            .contains("does not fit its declared shape [batch,3,32,32]"),
        "{}",
        r.stderr
    );
}

#[test]
fn input_shape_sets_a_zoo_models_batch() {
    let r = kiln([
        "info",
        "mobile_former_26m",
        "--input-shape",
        "image=4,3,224,224",
    ]);
    assert!(
        r.ok().contains("inputs:  %image f32[4,3,224,224]"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(" f32[4,1000]\n"), "{}", r.stdout);
    let r = kiln([
        "info",
        "mobile_former_26m",
        "--input-shape",
        "image=4,3,256,256",
    ]);
    assert!(
        r.fails_with(2).contains("has the static shape 4,3,224,224"),
        "{}",
        r.stderr
    );
}
