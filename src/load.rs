//! Model loading: one entry point for `.kir` files, `.onnx` files and zoo
//! names, so that every command accepts the same `MODEL` argument.

use std::path::{Path, PathBuf};

use kiln_frontends::{FrontendError, init, onnx, safetensors, zoo};
use kiln_ir::{Graph, IrError, Limits, Model, WeightStore, text, verify, verify_weights};

use crate::error::KilnError;

/// How [`load_model`] finds weight values.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Take every weight from this safetensors file instead of the model's
    /// own (ONNX initialisers, the zoo's seeded values) or seeded ones (`.kir`).
    pub weights: Option<PathBuf>,
    /// Seed of the deterministic initialisation, used when `weights` is
    /// `None` for `.kir` files and zoo models.
    pub seed: u64,
    /// Only the graph is needed (`kiln info`): a `.kir` file without
    /// `weights` gets no seeded values and an empty store. Weights that are
    /// given are still loaded and checked against the graph.
    pub graph_only: bool,
    /// Resource limits: the loaded graph's node count and value sizes are
    /// checked against them before any weight is allocated.
    pub limits: Limits,
    /// Concrete shapes for inputs, by name (`--input-shape NAME=D0,D1,...`):
    /// they size an ONNX input's symbolic dimensions; every static
    /// dimension given — and every dimension of a `.kir` or zoo input,
    /// which are all static — must equal the declared one.
    pub input_shapes: Vec<(String, Vec<usize>)>,
}

/// What a `MODEL` argument names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// a `.kir` text file
    Kir(PathBuf),
    /// an `.onnx` file
    Onnx(PathBuf),
    /// a zoo model name
    Zoo(String),
}

impl ModelSpec {
    /// Classifies `spec` by its extension (`.kir`, `.onnx`, case-insensitive);
    /// anything else must be a zoo name. A spec that looks like a path to
    /// some other kind of file is a usage error that says what kiln reads.
    pub fn parse(spec: &str) -> Result<ModelSpec, KilnError> {
        let path = Path::new(spec);
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("kir") => Ok(ModelSpec::Kir(path.to_path_buf())),
            Some("onnx") => Ok(ModelSpec::Onnx(path.to_path_buf())),
            _ if ext.is_some() || spec.contains(['/', '\\']) || spec.is_empty() => {
                Err(KilnError::Usage(format!(
                    "cannot load `{spec}`: kiln reads .kir and .onnx files and zoo models ({})",
                    zoo_names()
                )))
            }
            _ => Ok(ModelSpec::Zoo(spec.to_string())),
        }
    }
}

/// The zoo's names for error messages: `kiln list` shows them.
fn zoo_names() -> String {
    let names: Vec<&str> = zoo::list().iter().map(|e| e.name).collect();
    if names.is_empty() {
        "the zoo has no models yet".to_string()
    } else {
        format!("`kiln list` shows: {}", names.join(", "))
    }
}

/// Loads a model named by `spec`: a `.kir` path (parsed; weights from
/// `opts.weights` or [`init::seeded_weights`]), an `.onnx` path (imported,
/// weights from the file) or a zoo name (built with seeded weights). With
/// `opts.weights`, the safetensors file supplies every weight in all three
/// cases; for a zoo model it is bound with [`zoo::bind_weights`], which also
/// rejects tensors the graph does not declare. The result is verified, and its weights cover the graph (unless
/// `opts.graph_only` left them out).
pub fn load_model(spec: &str, opts: &LoadOptions) -> Result<Model, KilnError> {
    load_model_with_notes(spec, opts).map(|(m, _)| m)
}

/// [`load_model`], also returning what loading chose for the user where the
/// model left it open (an ONNX input's symbolic batch pinned to 1), one
/// sentence each: the CLI prints them as `note:` lines on stderr.
pub fn load_model_with_notes(
    spec: &str,
    opts: &LoadOptions,
) -> Result<(Model, Vec<String>), KilnError> {
    let spec = ModelSpec::parse(spec)?;
    for (i, (name, _)) in opts.input_shapes.iter().enumerate() {
        if opts.input_shapes[..i].iter().any(|(n, _)| n == name) {
            return Err(KilnError::Usage(format!(
                "--input-shape given twice for '{name}'"
            )));
        }
    }
    let mut notes = Vec::new();
    let own = match &spec {
        ModelSpec::Kir(_) => format!("the seeded initialiser (--seed {})", opts.seed),
        ModelSpec::Onnx(path) => path.display().to_string(),
        ModelSpec::Zoo(name) => format!("the zoo's `{name}`"),
    };
    let is_zoo = matches!(spec, ModelSpec::Zoo(_));
    let is_onnx = matches!(spec, ModelSpec::Onnx(_));
    let mut model = match spec {
        ModelSpec::Kir(path) => {
            let src = std::fs::read_to_string(&path).map_err(|source| KilnError::Io {
                path: path.clone(),
                source,
            })?;
            let graph = text::parse(&src).map_err(|source| KilnError::Kir { path, source })?;
            // before the seeded initialiser allocates what the text declares
            opts.limits.check_graph(&graph)?;
            let weights = if opts.weights.is_some() || opts.graph_only {
                // Loaded below, once for every kind of model, or not needed.
                WeightStore::new()
            } else {
                init::seeded_weights(&graph, opts.seed)
            };
            Model { graph, weights }
        }
        ModelSpec::Onnx(path) => {
            let (m, report) = onnx::import_with_report(&path, &import_options(opts))?;
            notes = report.notes;
            m
        }
        ModelSpec::Zoo(name) => {
            if !zoo::list().iter().any(|e| e.name == name) {
                return Err(KilnError::Usage(format!(
                    "unknown model `{name}`: not a .kir or .onnx file, nor a zoo model ({})",
                    zoo_names()
                )));
            }
            // A zoo model is built for any batch: the first dimension of a
            // shape given for its input (the rest is checked below).
            let batch = opts
                .input_shapes
                .first()
                .and_then(|(_, s)| s.first().copied())
                .unwrap_or(1);
            let zo = zoo::ZooOptions {
                seed: opts.seed,
                batch,
                ..Default::default()
            };
            if opts.weights.is_some() || opts.graph_only {
                // Seeded values would only be thrown away.
                Model {
                    graph: zoo::build_graph(&name, &zo)?,
                    weights: WeightStore::new(),
                }
            } else {
                zoo::build(&name, &zo)?
            }
        }
    };
    verify(&model.graph)?;
    opts.limits.check_graph(&model.graph)?;
    if !is_onnx {
        check_static_shapes(&model.graph, &opts.input_shapes)?;
    }
    let from = match &opts.weights {
        Some(path) => {
            let given = safetensors::load(path)?;
            let from = path.display().to_string();
            model.weights = if is_zoo {
                // A zoo checkpoint may need the zoo's few layout fixes
                // (Linear vs 1x1 conv, BN counters); see docs/zoo.md.
                zoo::bind_weights(&model.graph, given).map_err(|e| match e {
                    FrontendError::Ir(IrError::Weights(problems)) => KilnError::Weights {
                        from: from.clone(),
                        problems,
                    },
                    other => other.into(),
                })?
            } else {
                given
            };
            from
        }
        None if opts.graph_only && model.weights.is_empty() => return Ok((model, notes)),
        None => own,
    };
    check_weights(&model.graph, &model.weights, &from)?;
    Ok((model, notes))
}

/// The ONNX import options [`load_model`] uses for `opts`.
pub fn import_options(opts: &LoadOptions) -> onnx::ImportOptions {
    onnx::ImportOptions {
        input_shapes: opts.input_shapes.clone(),
    }
}

/// `.kir` and zoo inputs are static: a given shape must name an input and
/// repeat its shape.
fn check_static_shapes(g: &Graph, given: &[(String, Vec<usize>)]) -> Result<(), KilnError> {
    for (name, shape) in given {
        let found = g
            .inputs()
            .iter()
            .map(|&id| g.value_info(kiln_ir::Value::of(id)))
            .find(|info| &info.name == name);
        let show = |s: &[usize]| {
            s.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match found {
            None => {
                let names: Vec<String> = g
                    .inputs()
                    .iter()
                    .map(|&id| g.value_info(kiln_ir::Value::of(id)).name.clone())
                    .collect();
                return Err(KilnError::Usage(format!(
                    "--input-shape {name}={}: the model has no input '{name}' (inputs: {})",
                    show(shape),
                    names.join(", ")
                )));
            }
            Some(info) if info.ty.shape != *shape => {
                return Err(KilnError::Usage(format!(
                    "--input-shape {name}={}: input '{name}' has the static shape {}; only an .onnx input's symbolic dimensions and a zoo model's batch (first dimension) can be set",
                    show(shape),
                    show(&info.ty.shape)
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Parses one `--input-shape` value, `NAME=D0,D1,...` (dimensions positive).
pub fn parse_input_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    let (name, dims) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=D0,D1,... (e.g. input=1,3,224,224)"))?;
    if name.is_empty() {
        return Err(format!("`{s}` names no input (NAME=D0,D1,...)"));
    }
    let mut shape = Vec::new();
    for d in dims.split(',') {
        match d.trim().parse::<usize>() {
            Ok(v) if v > 0 => shape.push(v),
            _ => {
                return Err(format!(
                    "`{s}`: dimension `{d}` is not a positive integer (NAME=D0,D1,...)"
                ));
            }
        }
    }
    Ok((name.to_string(), shape))
}

/// Loads an ONNX model held in memory (the Python binding's bytes and
/// `onnx.ModelProto`, or a file read with `import` options): imported with
/// `import` (concrete shapes for symbolic input dims), verified, and its
/// weights from `weights` (a safetensors file) when given, else its own
/// initialisers, and checked against `limits`; `origin` names it in
/// messages.
pub fn load_onnx_bytes(
    bytes: &[u8],
    origin: &str,
    import: &onnx::ImportOptions,
    weights: Option<&Path>,
    limits: &Limits,
) -> Result<Model, KilnError> {
    let (mut model, _) = onnx::import_bytes(bytes, import)?;
    verify(&model.graph)?;
    limits.check_graph(&model.graph)?;
    let from = match weights {
        Some(path) => {
            model.weights = safetensors::load(path)?;
            path.display().to_string()
        }
        None => origin.to_string(),
    };
    check_weights(&model.graph, &model.weights, &from)?;
    Ok(model)
}

/// [`verify_weights`], with its multi-line list turned into a one-line error
/// that says where the values came from.
pub fn check_weights(g: &Graph, weights: &WeightStore, from: &str) -> Result<(), KilnError> {
    verify_weights(g, weights).map_err(|e| match e {
        IrError::Weights(problems) => KilnError::Weights {
            from: from.to_string(),
            problems,
        },
        other => KilnError::Ir(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_classified_by_extension() {
        assert_eq!(
            ModelSpec::parse("m/a.KIR").unwrap(),
            ModelSpec::Kir("m/a.KIR".into())
        );
        assert_eq!(
            ModelSpec::parse("a.onnx").unwrap(),
            ModelSpec::Onnx("a.onnx".into())
        );
        assert_eq!(
            ModelSpec::parse("mobile_former_26m").unwrap(),
            ModelSpec::Zoo("mobile_former_26m".into())
        );
        for bad in ["model.pt", "dir/model", ""] {
            let e = ModelSpec::parse(bad).unwrap_err();
            assert!(matches!(e, KilnError::Usage(_)), "{bad}");
            assert!(e.to_string().contains(".kir and .onnx"), "{e}");
        }
    }

    #[test]
    fn input_shapes_parse() {
        assert_eq!(
            parse_input_shape("x=1,3,224,224").unwrap(),
            ("x".to_string(), vec![1, 3, 224, 224])
        );
        // The last `=` splits: names may contain one.
        assert_eq!(
            parse_input_shape("a=b=2").unwrap(),
            ("a=b".to_string(), vec![2])
        );
        for (bad, want) in [
            ("x", "is not NAME=D0,D1,..."),
            ("=1,2", "names no input"),
            ("x=1,,2", "dimension `` is not a positive integer"),
            ("x=1,0", "dimension `0`"),
            ("x=-1", "dimension `-1`"),
        ] {
            let e = parse_input_shape(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn static_inputs_take_only_their_own_shape() {
        let mut g = Graph::new("t");
        g.add_input("x", kiln_ir::TensorType::f32([1, 3])).unwrap();
        assert!(check_static_shapes(&g, &[("x".into(), vec![1, 3])]).is_ok());
        let e = check_static_shapes(&g, &[("x".into(), vec![4, 3])]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("static shape 1,3"), "{e}");
        let e = check_static_shapes(&g, &[("y".into(), vec![1, 3])]).unwrap_err();
        assert!(e.to_string().contains("no input 'y' (inputs: x)"), "{e}");
    }

    #[test]
    fn unknown_zoo_name_is_a_usage_error() {
        let e = load_model("no_such_model", &LoadOptions::default()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let msg = e.to_string();
        assert!(msg.contains("unknown model `no_such_model`"), "{msg}");
        for entry in zoo::list() {
            assert!(msg.contains(entry.name), "{msg}");
        }
    }

    #[test]
    fn missing_kir_file_names_it() {
        let e = load_model("no/such/file.kir", &LoadOptions::default()).unwrap_err();
        assert!(matches!(e, KilnError::Io { .. }));
        assert!(e.to_string().starts_with("no/such/file.kir: "), "{e}");
    }

    #[test]
    fn long_weight_lists_are_cut() {
        let problems: Vec<String> = (0..10).map(|i| format!("@w{i}: missing")).collect();
        let msg = KilnError::Weights {
            from: "f".into(),
            problems,
        }
        .to_string();
        assert!(msg.contains("@w5: missing; and 4 more"), "{msg}");
        assert!(!msg.contains("@w6"), "{msg}");
    }

    #[test]
    fn weight_problems_are_one_line() {
        let mut g = Graph::new("t");
        g.add_weight("a", kiln_ir::TensorType::f32([2])).unwrap();
        g.add_weight("b", kiln_ir::TensorType::f32([3])).unwrap();
        let e = check_weights(&g, &WeightStore::new(), "w.safetensors").unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.starts_with("weights from w.safetensors do not match the graph: @a: missing"));
        assert!(msg.contains("; @b: missing"), "{msg}");
    }
}
