//! Repository tidiness: every file path cited in `docs/` and in `//!` module
//! comments names a file or folder that exists, so a renamed module or a
//! document that was never in the repository shows up here instead of
//! misleading a reader.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Endings of the files docs cite by name.
const CITED: [&str; 7] = [".rs", ".md", ".kir", ".py", ".toml", ".snap", ".sh"];

/// Cited paths that are not the repository's, each with why.
const NOT_OURS: [&str; 7] = [
    // placeholders for the user's model files (docs/cli.md)
    "path.kir",
    "m.kir",
    // the Python attribute `Model.kir` (docs/python.md), not a file
    "model.kir",
    // files of the user's crate that links an object (docs/aot.md)
    "build.rs",
    ".cargo/config.toml",
    // upstream sources a frontend follows (numpy's format, timm's model)
    "numpy/lib/format.py",
    "timm/models/mobilevit.py",
];

/// Every file and folder below `dir` (relative, `/`-separated), skipping
/// build output and version control.
fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "target" || name == ".git" {
            continue;
        }
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if p.is_dir() {
            out.insert(format!("{rel}/"));
            walk(root, &p, out);
        } else {
            out.insert(rel);
        }
    }
}

/// The path-like words of `text`: words ending in a cited file type, or
/// backquoted folders (`backends/src/`). Only letters, digits and `_./-`
/// make a path: formulas (`relu6(x+3)/6`), patterns (`*.rs`) and URLs are
/// not paths, and neither is build output (`target/`).
fn cited(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let quoted: Vec<&str> = text.split('`').skip(1).step_by(2).collect();
    let words = text.split(|c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '`' | '(' | ')' | '[' | ']' | ',' | ';' | '"' | '\'' | '|'
            )
    });
    for w in words.chain(quoted.iter().copied()) {
        let w = w.trim_end_matches([':', '.', ',']);
        let w = w.trim_start_matches("./");
        let pathy = w
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'));
        if w.is_empty() || !pathy || w.starts_with(['/', '-']) || w.starts_with("target/") {
            continue;
        }
        let file = CITED
            .iter()
            .any(|e| w.ends_with(e) && w.len() > e.len() && !w.ends_with(&format!("/{e}")));
        let folder = quoted.contains(&w) && w.len() > 1 && w.ends_with('/');
        if (file || folder) && !NOT_OURS.contains(&w) && !out.iter().any(|o| o == w) {
            out.push(w.to_string());
        }
    }
    out
}

/// Whether `p` names a file or folder of the repository: itself, or the
/// tail of one (`kernels/gemm.rs` in the backend's docs).
fn exists(all: &BTreeSet<String>, p: &str) -> bool {
    let dir = format!("{}/", p.trim_end_matches('/'));
    all.iter().any(|f| {
        f == p || *f == dir || f.ends_with(&format!("/{p}")) || f.ends_with(&format!("/{dir}"))
    })
}

#[test]
fn every_cited_path_exists() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut all = BTreeSet::new();
    walk(&root, &root, &mut all);
    let mut missing = Vec::new();
    let mut checked = 0;
    for f in &all {
        let text = if f.starts_with("docs/") && f.ends_with(".md") {
            fs::read_to_string(root.join(f)).unwrap()
        } else if f.ends_with(".rs") {
            let s = fs::read_to_string(root.join(f)).unwrap();
            s.lines()
                .filter_map(|l| l.trim_start().strip_prefix("//!"))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            continue;
        };
        for p in cited(&text) {
            // the model specs cite the upstream Python they were read from
            if f.starts_with("docs/models/") && p.ends_with(".py") {
                continue;
            }
            checked += 1;
            if !exists(&all, &p) {
                missing.push(format!("{f}: {p}"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        checked > 100,
        "only {checked} citations found: the scan is broken"
    );
    assert!(
        missing.is_empty(),
        "{} cited paths do not exist:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

#[test]
fn a_missing_path_is_found() {
    let all: BTreeSet<String> = ["backends/src/", "backends/src/kernels/gemm.rs"]
        .map(String::from)
        .into();
    let c = cited("see `kernels/gemm.rs` and DESIGN.md, or `backends/src/` (`*.rs`)");
    assert_eq!(
        c,
        ["kernels/gemm.rs", "DESIGN.md", "backends/src/"].map(String::from)
    );
    assert!(exists(&all, "kernels/gemm.rs"));
    assert!(exists(&all, "backends/src/"));
    assert!(!exists(&all, "DESIGN.md"));
}

/// The longest function the backend may hold, in lines from its `fn` line
/// to its closing brace (issue 14): past it a function does several jobs
/// that want names of their own.
const MAX_FN_LINES: usize = 150;

/// The functions of `text` longer than `max` lines, as `(lines, name)`: a
/// function runs from the line its `fn` starts (after any visibility and
/// qualifiers) to the first later line that is a `}` at the same indent.
/// Declarations without a body (`fn f();`) and one-line functions are not
/// counted.
fn long_functions(text: &str, max: usize) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let indent = &l[..l.len() - l.trim_start().len()];
        let mut rest = l.trim_start();
        for q in [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "const ",
            "unsafe ",
            "extern \"C\" ",
        ] {
            rest = rest.strip_prefix(q).unwrap_or(rest);
        }
        let Some(sig) = rest.strip_prefix("fn ") else {
            continue;
        };
        let name: String = sig
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // the signature ends at the first `{` or `;` that ends a line
        let Some(open) = (i..lines.len()).find(|&j| {
            let t = lines[j].trim_end();
            t.ends_with('{') || t.ends_with(';') || t.ends_with('}')
        }) else {
            continue;
        };
        if !lines[open].trim_end().ends_with('{') {
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(end) = (open + 1..lines.len()).find(|&j| lines[j].trim_end() == close) {
            let n = end - i + 1;
            if n > max {
                out.push((n, name));
            }
        }
    }
    out
}

#[test]
fn no_backend_function_is_too_long() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("backends/src");
    let mut all = BTreeSet::new();
    walk(&src, &src, &mut all);
    let mut long = Vec::new();
    let mut files = 0;
    for f in all.iter().filter(|f| f.ends_with(".rs")) {
        files += 1;
        let text = fs::read_to_string(src.join(f)).unwrap();
        for (n, name) in long_functions(&text, MAX_FN_LINES) {
            long.push(format!("{n:5} backends/src/{f} {name}"));
        }
    }
    assert!(files > 30, "only {files} files found: the scan is broken");
    long.sort();
    long.reverse();
    assert!(
        long.is_empty(),
        "{} functions in backends/src are longer than {MAX_FN_LINES} lines \
         (split them where their jobs part):\n{}",
        long.len(),
        long.join("\n")
    );
}

#[test]
fn a_long_function_is_found() {
    let body = "        x += 1;\n".repeat(3);
    let text = format!(
        "impl A {{\n    pub(crate) fn long(\n        x: usize,\n    ) -> usize {{\n{body}    }}\n\n    \
         fn short() {{}}\n    fn decl(&self);\n}}\n\nfn free() {{\n{body}}}\n"
    );
    // `long`: signature 3 lines, body 3, closing brace 1; `free`: 5
    assert_eq!(
        long_functions(&text, 4),
        [(7, "long".to_string()), (5, "free".to_string())]
    );
    assert_eq!(long_functions(&text, 6), [(7, "long".to_string())]);
    assert!(long_functions(&text, 7).is_empty());
}
