//! kiln's Python binding, the extension module `kiln._kiln`: compiling
//! (`load_model` / `load_onnx_bytes` + `kiln::compile`), running on numpy
//! arrays through `CompiledModel::run_views` (inputs read in place, the GIL
//! released while kernels run), profiles, reports, ahead-of-time objects,
//! the zoo and safetensors. The Python package `kiln` (kiln/__init__.py)
//! wraps it: model-kind dispatch (ONNX protos, PyTorch modules) lives
//! there, everything else here. Safe code only: numpy memory is reached
//! through rust-numpy's borrow-checked slices.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use kiln::backends::{BackendError, Elems, ElemsMut, TensorMut, TensorRef, TileLevel};
use kiln::frontends::{FrontendError, onnx, safetensors};
use kiln::ir::{DType, Tensor, TensorType, text};
use numpy::{
    PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArrayDyn,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

create_exception!(
    kiln,
    KilnError,
    PyException,
    "Base class of every error kiln raises; the message is the CLI's one line."
);
create_exception!(
    kiln,
    ModelImportError,
    KilnError,
    "A model or weights that cannot be read: a missing file, not ONNX, a bad .kir, an unknown zoo name, weights that do not match."
);
create_exception!(
    kiln,
    UnsupportedOpError,
    KilnError,
    "An operator (or element type, or opset) kiln cannot import or compile; the message names the op and the node."
);
create_exception!(
    kiln,
    ShapeError,
    KilnError,
    "Arrays that do not fit the model: wrong count, dtype, shape, or an output buffer that is not writable C-contiguous memory."
);
create_exception!(
    kiln,
    CompileError,
    KilnError,
    "The optimiser or the code generator failed on a model that imported fine."
);

/// Where an error happened, which picks its exception class when its kind
/// alone does not.
#[derive(Clone, Copy)]
enum Phase {
    Load,
    Compile,
    Run,
}

/// A kiln error as the matching Python exception, with the CLI's message.
fn py_err(e: kiln::KilnError, phase: Phase) -> PyErr {
    use kiln::KilnError as K;
    // One line, as the CLI prints it (src/main.rs): a list of unsupported
    // ops is several lines in the error itself.
    let msg = kiln::error::one_line(&e.to_string());
    match (&e, phase) {
        (K::Frontend(FrontendError::OnnxUnsupported(_)), _)
        | (K::Backend(BackendError::Unsupported { .. }), _) => UnsupportedOpError::new_err(msg),
        (K::Backend(BackendError::Input(_) | BackendError::Output(_)), _) | (K::Input(_), _) => {
            ShapeError::new_err(msg)
        }
        (_, Phase::Load) => ModelImportError::new_err(msg),
        (_, Phase::Compile) => CompileError::new_err(msg),
        (_, Phase::Run) => KilnError::new_err(msg),
    }
}

fn backend_err(e: BackendError, phase: Phase) -> PyErr {
    py_err(kiln::KilnError::Backend(e), phase)
}

/// numpy's name of a kiln element type.
fn numpy_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::I64 => "int64",
    }
}

/// One graph input or output: name, shape, numpy dtype name.
#[pyclass(module = "kiln", frozen, get_all)]
struct TensorInfo {
    /// the value's name in the graph
    name: String,
    /// the static shape
    shape: Vec<usize>,
    /// numpy's name of the element type: `float32` or `int64`
    dtype: &'static str,
}

#[pymethods]
impl TensorInfo {
    fn __repr__(&self) -> String {
        format!(
            "TensorInfo(name={:?}, shape={:?}, dtype={:?})",
            self.name, self.shape, self.dtype
        )
    }
}

fn infos(list: &[(String, TensorType)]) -> Vec<TensorInfo> {
    list.iter()
        .map(|(name, ty)| TensorInfo {
            name: name.clone(),
            shape: ty.shape.clone(),
            dtype: numpy_name(ty.dtype),
        })
        .collect()
}

thread_local! {
    /// The input addresses the last `Model.run` on this thread handed to
    /// the kernels: what the zero-copy test compares with the arrays' own.
    static LAST_INPUTS: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The addresses of the input memory the last call on this thread read
/// (the array's own when it was read in place, a copy's otherwise).
#[pyfunction]
fn _last_input_addresses() -> Vec<usize> {
    LAST_INPUTS.with_borrow(|v| v.clone())
}

/// A compiled model (see `kiln.Model` in the stubs for the Python-facing
/// documentation).
#[pyclass(module = "kiln", frozen)]
struct Model {
    /// `None` once closed; runs in progress keep their own `Arc`, so
    /// closing never frees code another thread is executing.
    inner: RwLock<Option<Arc<kiln::Compiled>>>,
}

/// An input held for one call: the caller's array, or a C-ordered aligned
/// copy of it.
enum Held<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    I64(PyReadonlyArrayDyn<'py, i64>),
}

impl Held<'_> {
    fn view(&self) -> TensorRef<'_> {
        // `hold_input` only keeps arrays whose `as_slice` succeeds (a wrong
        // length would be reported by `run_views`, never read).
        match self {
            Held::F32(a) => TensorRef {
                shape: a.shape(),
                data: Elems::F32(a.as_slice().unwrap_or(&[])),
            },
            Held::I64(a) => TensorRef {
                shape: a.shape(),
                data: Elems::I64(a.as_slice().unwrap_or(&[])),
            },
        }
    }
}

/// `got` as kiln's `dtype[shape]` text, with numpy's name for dtypes kiln
/// has none for.
fn describe(a: &Bound<'_, PyUntypedArray>) -> String {
    let dims: Vec<String> = a.shape().iter().map(|d| d.to_string()).collect();
    let dt = a.dtype();
    let name = if dt.is_equiv_to(&numpy::dtype::<f32>(a.py())) {
        "f32".to_string()
    } else if dt.is_equiv_to(&numpy::dtype::<i64>(a.py())) {
        "i64".to_string()
    } else {
        dt.getattr("name")
            .map_or_else(|_| "?".into(), |n| n.to_string())
    };
    format!("{name}[{}]", dims.join(","))
}

/// Whether kernels can read `a` in place: C order, aligned (so that
/// `as_slice` gives the elements in row-major order).
fn in_place(a: &Bound<'_, PyUntypedArray>) -> bool {
    a.is_c_contiguous() && a.is_aligned()
}

/// Input `k` of a call: the array itself when it is C-contiguous and
/// aligned with the declared dtype; a C-ordered aligned copy (numpy's
/// `require`) when only the layout differs; an error when the dtype does.
/// Objects that are not arrays go through `numpy.asarray(obj,
/// dtype=declared)`.
fn hold_input<'py>(
    py: Python<'py>,
    obj: &Bound<'py, PyAny>,
    k: usize,
    want: Option<&(String, TensorType)>,
) -> PyResult<Held<'py>> {
    let np = || py.import("numpy");
    let mut arr: Bound<'py, PyUntypedArray> = match obj.cast::<PyUntypedArray>() {
        Ok(a) => a.clone(),
        Err(_) => {
            let dtype = want.map_or("float32", |(_, ty)| numpy_name(ty.dtype));
            np()?
                .call_method1("asarray", (obj, dtype))?
                .cast_into::<PyUntypedArray>()
                .map_err(PyErr::from)?
        }
    };
    let is_f32 = arr.cast::<PyArrayDyn<f32>>().is_ok();
    if !is_f32 && arr.cast::<PyArrayDyn<i64>>().is_err() {
        return Err(ShapeError::new_err(match want {
            Some((name, ty)) => format!(
                "input: input {k} (%{name}) must be {ty}, got {}",
                describe(&arr)
            ),
            None => format!("input: input {k} has unsupported type {}", describe(&arr)),
        }));
    }
    if !in_place(&arr) {
        arr = np()?
            .call_method1("require", (&arr, py.None(), "CA"))?
            .cast_into::<PyUntypedArray>()
            .map_err(PyErr::from)?;
    }
    let busy = |e: numpy::BorrowError| {
        ShapeError::new_err(format!(
            "input: input {k} is being written by another call: {e}"
        ))
    };
    Ok(if is_f32 {
        Held::F32(
            arr.cast::<PyArrayDyn<f32>>()?
                .try_readonly()
                .map_err(busy)?,
        )
    } else {
        Held::I64(
            arr.cast::<PyArrayDyn<i64>>()?
                .try_readonly()
                .map_err(busy)?,
        )
    })
}

/// An output of a call: a numpy array written in place.
enum HeldOut<'py> {
    F32(PyReadwriteArrayDyn<'py, f32>),
    I64(PyReadwriteArrayDyn<'py, i64>),
}

/// A caller-provided output array: it must have the declared dtype, be
/// writable, C-contiguous and aligned (it is written in place; a copy
/// would defeat the purpose). The shape is checked by the backend.
fn hold_output<'py>(
    obj: &Bound<'py, PyAny>,
    k: usize,
    want: Option<&(String, TensorType)>,
) -> PyResult<HeldOut<'py>> {
    let bad = |what: String| ShapeError::new_err(format!("output: output {k} {what}"));
    let arr = obj
        .cast::<PyUntypedArray>()
        .map_err(|_| bad("must be a numpy array".into()))?;
    let layout_ok = in_place(arr);
    let held = if let Ok(a) = arr.cast::<PyArrayDyn<f32>>() {
        let rw = a.try_readwrite().map_err(|e| {
            bad(format!(
                "cannot be written: {e} (read-only, or also passed as an input)"
            ))
        })?;
        HeldOut::F32(rw)
    } else if let Ok(a) = arr.cast::<PyArrayDyn<i64>>() {
        let rw = a.try_readwrite().map_err(|e| {
            bad(format!(
                "cannot be written: {e} (read-only, or also passed as an input)"
            ))
        })?;
        HeldOut::I64(rw)
    } else {
        return Err(bad(match want {
            Some((name, ty)) => format!("(%{name}) must be {ty}, got {}", describe(arr)),
            None => format!("has unsupported type {}", describe(arr)),
        }));
    };
    if !layout_ok {
        return Err(bad(
            "must be C-contiguous and aligned (it is written in place)".into(),
        ));
    }
    Ok(held)
}

impl HeldOut<'_> {
    /// The array as a view the backend writes; `shape` is the array's
    /// (copied, since the slice borrows the array mutably).
    fn view<'a>(&'a mut self, shape: &'a [usize]) -> TensorMut<'a> {
        // `hold_output` only keeps C-contiguous aligned arrays, whose
        // `as_slice_mut` succeeds.
        let data = match self {
            HeldOut::F32(a) => ElemsMut::F32(a.as_slice_mut().unwrap_or(&mut [])),
            HeldOut::I64(a) => ElemsMut::I64(a.as_slice_mut().unwrap_or(&mut [])),
        };
        TensorMut { shape, data }
    }
}

impl Model {
    /// The compiled model, or the error a closed model gives.
    fn get(&self) -> PyResult<Arc<kiln::Compiled>> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| KilnError::new_err("the model is closed"))
    }
}

/// Random or given inputs as owned tensors (for `profile`).
fn owned_inputs(
    py: Python<'_>,
    c: &kiln::Compiled,
    inputs: Option<Vec<Bound<'_, PyAny>>>,
) -> PyResult<Vec<Tensor>> {
    let want = c.model.inputs();
    match inputs {
        None => Ok(want
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| kiln::random_input(ty, i as u64))
            .collect()),
        Some(objs) => objs
            .iter()
            .enumerate()
            .map(|(k, o)| {
                let held = hold_input(py, o, k, want.get(k))?;
                let v = held.view();
                let t = match v.data {
                    Elems::F32(d) => Tensor::from_f32(v.shape.to_vec(), d.to_vec()),
                    Elems::I64(d) => Tensor::from_i64(v.shape.to_vec(), d.to_vec()),
                };
                t.map_err(|e| ShapeError::new_err(format!("input: {e}")))
            })
            .collect(),
    }
}

#[pymethods]
impl Model {
    /// Runs the model; see the stubs.
    #[pyo3(signature = (inputs, outputs = None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
        outputs: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let c = self.get()?;
        let want_in = c.model.inputs();
        let want_out = c.model.outputs();
        // A dict maps input names to arrays (onnxruntime's style).
        let objs: Vec<Bound<'py, PyAny>> = if let Ok(d) = inputs.cast::<PyDict>() {
            let mut v = Vec::with_capacity(want_in.len());
            for (name, _) in want_in {
                v.push(d.get_item(name)?.ok_or_else(|| {
                    ShapeError::new_err(format!("input: no array given for input %{name}"))
                })?);
            }
            if d.len() != want_in.len() {
                return Err(ShapeError::new_err(format!(
                    "input: the model has {} inputs, {} given",
                    want_in.len(),
                    d.len()
                )));
            }
            v
        } else if inputs.cast::<PyUntypedArray>().is_ok() {
            vec![inputs.clone()]
        } else {
            inputs.try_iter()?.collect::<PyResult<_>>()?
        };
        let held: Vec<Held<'py>> = objs
            .iter()
            .enumerate()
            .map(|(k, o)| hold_input(py, o, k, want_in.get(k)))
            .collect::<PyResult<_>>()?;
        let out_objs: Vec<Bound<'py, PyAny>> = match outputs {
            Some(o) if o.cast::<PyUntypedArray>().is_ok() => vec![o.clone()],
            Some(o) => o.try_iter()?.collect::<PyResult<_>>()?,
            None => want_out
                .iter()
                .map(|(_, ty)| match ty.dtype {
                    DType::F32 => {
                        PyArrayDyn::<f32>::zeros(py, ty.shape.as_slice(), false).into_any()
                    }
                    DType::I64 => {
                        PyArrayDyn::<i64>::zeros(py, ty.shape.as_slice(), false).into_any()
                    }
                })
                .collect(),
        };
        {
            let mut held_out: Vec<HeldOut<'py>> = out_objs
                .iter()
                .enumerate()
                .map(|(k, o)| hold_output(o, k, want_out.get(k)))
                .collect::<PyResult<_>>()?;
            let views: Vec<TensorRef<'_>> = held.iter().map(Held::view).collect();
            LAST_INPUTS.with_borrow_mut(|last| {
                last.clear();
                last.extend(views.iter().map(|v| match v.data {
                    Elems::F32(d) => d.as_ptr() as usize,
                    Elems::I64(d) => d.as_ptr() as usize,
                }));
            });
            let shapes: Vec<Vec<usize>> = out_objs
                .iter()
                .map(|o| o.cast::<PyUntypedArray>().map(|a| a.shape().to_vec()))
                .collect::<Result<_, _>>()?;
            let mut out_views: Vec<TensorMut<'_>> = held_out
                .iter_mut()
                .zip(&shapes)
                .map(|(h, s)| h.view(s))
                .collect();
            let model = &c.model;
            py.detach(|| model.run_views(&views, &mut out_views))
                .map_err(|e| backend_err(e, Phase::Run))?;
        }
        Ok(out_objs)
    }

    /// Positional inputs; one output is returned as an array, several as
    /// a list.
    #[pyo3(signature = (*arrays))]
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        arrays: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut outs = self.run(py, arrays.as_any(), None)?;
        if outs.len() == 1 {
            Ok(outs.remove(0))
        } else {
            Ok(PyList::new(py, outs)?.into_any())
        }
    }

    /// The graph inputs, in order.
    #[getter]
    fn inputs(&self) -> PyResult<Vec<TensorInfo>> {
        Ok(infos(self.get()?.model.inputs()))
    }

    /// The graph outputs, in order.
    #[getter]
    fn outputs(&self) -> PyResult<Vec<TensorInfo>> {
        Ok(infos(self.get()?.model.outputs()))
    }

    /// Threads a run uses.
    #[getter]
    fn threads(&self) -> PyResult<usize> {
        Ok(self.get()?.model.threads())
    }

    /// The compiled (optimised) graph as `.kir` text.
    #[getter]
    fn kir(&self) -> PyResult<String> {
        Ok(text::print(&self.get()?.graph))
    }

    /// The optimiser's report as a dict (`kiln opt --explain --json`), or
    /// `None` when compiled with `optimize=False`.
    fn explain<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let c = self.get()?;
        match &c.report {
            None => Ok(None),
            Some(r) => {
                let json = py.import("json")?;
                Ok(Some(json.call_method1("loads", (r.to_json(),))?))
            }
        }
    }

    /// The `kiln bench --profile` table: one dict per node, slowest first.
    #[pyo3(signature = (iters = 10, inputs = None))]
    fn profile<'py>(
        &self,
        py: Python<'py>,
        iters: usize,
        inputs: Option<Vec<Bound<'py, PyAny>>>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        if iters == 0 {
            return Err(KilnError::new_err("iters must be at least 1"));
        }
        let c = self.get()?;
        let tensors = owned_inputs(py, &c, inputs)?;
        let model = &c.model;
        let runs = py
            .detach(|| {
                (0..iters)
                    .map(|_| model.profile(&tensors))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| backend_err(e, Phase::Run))?;
        kiln::bench::profile_rows(&runs)
            .into_iter()
            .map(|r| {
                let d = PyDict::new(py);
                d.set_item("node", r.node)?;
                d.set_item("kernels", r.kernels)?;
                d.set_item("ms", r.ms)?;
                d.set_item("share", r.share)?;
                d.set_item("gflops", r.gflops)?;
                d.set_item("gbps", r.gbps)?;
                d.set_item("macs", r.macs)?;
                d.set_item("bytes", r.bytes)?;
                d.set_item("parallel", r.parallel)?;
                Ok(d)
            })
            .collect()
    }

    /// Wall time of `iters` calls of the Rust `CompiledModel::run` on the
    /// seeded random inputs, in seconds each (after `warmup` untimed ones):
    /// the baseline `Model.__call__`'s overhead is measured against
    /// (python/bench/overhead.py).
    #[pyo3(signature = (iters, warmup = 10))]
    fn _time_rust_run(&self, py: Python<'_>, iters: usize, warmup: usize) -> PyResult<Vec<f64>> {
        let c = self.get()?;
        let tensors = owned_inputs(py, &c, None)?;
        let model = &c.model;
        py.detach(|| {
            for _ in 0..warmup {
                model.run(&tensors)?;
            }
            (0..iters)
                .map(|_| {
                    let t = Instant::now();
                    let y = model.run(&tensors)?;
                    let dt = t.elapsed().as_secs_f64();
                    drop(y);
                    Ok(dt)
                })
                .collect::<Result<Vec<f64>, BackendError>>()
        })
        .map_err(|e| backend_err(e, Phase::Run))
    }

    /// Frees the compiled code; later calls raise `KilnError`. Calls in
    /// progress on other threads finish first (they hold the code).
    fn close(&self) {
        self.inner.write().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        match self.get() {
            Err(_) => "<kiln.Model (closed)>".to_string(),
            Ok(c) => format!(
                "<kiln.Model {}: {} inputs, {} outputs, {} threads>",
                c.graph.name,
                c.model.inputs().len(),
                c.model.outputs().len(),
                c.model.threads()
            ),
        }
    }
}

/// `model` as the binding receives it: a `.onnx`/`.kir` path or zoo name,
/// or serialised ONNX bytes.
enum Source {
    Spec(String),
    Onnx(Vec<u8>),
}

fn source(obj: &Bound<'_, PyAny>) -> PyResult<Source> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Source::Onnx(b.as_bytes().to_vec()));
    }
    let path: PathBuf = obj.extract().map_err(|_| {
        ModelImportError::new_err(format!(
            "cannot compile a {}: kiln takes a path (.onnx, .kir), a zoo name, ONNX bytes, an onnx.ModelProto or a torch.nn.Module",
            obj.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string())
        ))
    })?;
    Ok(Source::Spec(path.to_string_lossy().into_owned()))
}

/// Loads a model (GIL released by the caller).
fn load(
    src: &Source,
    input_shapes: &[(String, Vec<usize>)],
    weights: Option<&PathBuf>,
) -> Result<kiln::ir::Model, kiln::KilnError> {
    let import = onnx::ImportOptions {
        input_shapes: input_shapes.to_vec(),
    };
    match src {
        Source::Onnx(bytes) => kiln::load_onnx_bytes(
            bytes,
            "the ONNX model",
            &import,
            weights.map(|p| p.as_path()),
            &kiln::ir::Limits::default(),
        ),
        Source::Spec(spec) => match kiln::ModelSpec::parse(spec)? {
            kiln::ModelSpec::Onnx(path) if !input_shapes.is_empty() => {
                let bytes = std::fs::read(&path).map_err(|source| kiln::KilnError::Io {
                    path: path.clone(),
                    source,
                })?;
                let origin = path.display().to_string();
                kiln::load_onnx_bytes(
                    &bytes,
                    &origin,
                    &import,
                    weights.map(|p| p.as_path()),
                    &kiln::ir::Limits::default(),
                )
            }
            _ if !input_shapes.is_empty() => Err(kiln::KilnError::Usage(
                "input_shapes applies to ONNX models only (zoo and .kir models have static shapes)"
                    .into(),
            )),
            _ => kiln::load_model(
                spec,
                &kiln::LoadOptions {
                    weights: weights.cloned(),
                    ..kiln::LoadOptions::default()
                },
            ),
        },
    }
}

fn tile_level(tiles: Option<&str>) -> PyResult<Option<TileLevel>> {
    tiles
        .map(|t| {
            TileLevel::parse(t).ok_or_else(|| {
                KilnError::new_err(format!(
                    "tiles={t:?}: expected \"avx512\", \"avx2\" or \"f32x4\""
                ))
            })
        })
        .transpose()
}

/// Loads and compiles a model; see `kiln.compile` in the stubs.
#[pyfunction]
#[pyo3(signature = (model, *, input_shapes = None, threads = None, tiles = None, optimize = true, weights = None))]
fn compile(
    py: Python<'_>,
    model: &Bound<'_, PyAny>,
    input_shapes: Option<Vec<(String, Vec<usize>)>>,
    threads: Option<usize>,
    tiles: Option<&str>,
    optimize: bool,
    weights: Option<PathBuf>,
) -> PyResult<Model> {
    if threads == Some(0) {
        return Err(KilnError::new_err("threads must be at least 1"));
    }
    let tiles = tile_level(tiles)?;
    let src = source(model)?;
    let shapes = input_shapes.unwrap_or_default();
    let compiled = py.detach(|| {
        let m = load(&src, &shapes, weights.as_ref()).map_err(|e| (e, Phase::Load))?;
        let mut opts = kiln::CompileOptions {
            optimize,
            ..kiln::CompileOptions::default()
        };
        opts.backend.threads = threads;
        if let Some(t) = tiles {
            opts.backend.max_tiles = t;
        }
        kiln::compile(&m, &opts).map_err(|e| (e, Phase::Compile))
    });
    let compiled = compiled.map_err(|(e, phase)| py_err(e, phase))?;
    Ok(Model {
        inner: RwLock::new(Some(Arc::new(compiled))),
    })
}

/// Compiles a model ahead of time; see `kiln.compile_aot` in the stubs.
#[pyfunction]
#[pyo3(signature = (model, *, target = "x86_64-unknown-linux-gnu", cpu = None, out_dir = None, name = None, optimize = true, weights = None, input_shapes = None, threads = None))]
#[allow(clippy::too_many_arguments)]
fn compile_aot<'py>(
    py: Python<'py>,
    model: &Bound<'py, PyAny>,
    target: &str,
    cpu: Option<String>,
    out_dir: Option<PathBuf>,
    name: Option<String>,
    optimize: bool,
    weights: Option<PathBuf>,
    input_shapes: Option<Vec<(String, Vec<usize>)>>,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    if threads == Some(0) {
        return Err(KilnError::new_err("threads must be at least 1"));
    }
    let out_dir = out_dir.unwrap_or_else(|| PathBuf::from("."));
    let src = source(model)?;
    let shapes = input_shapes.unwrap_or_default();
    let req = kiln::compile::AotRequest {
        target: target.to_string(),
        cpu,
        name,
        optimize,
        banded_chains: false,
        threads,
        limits: kiln::ir::Limits::default(),
    };
    let (obj, opts) = py
        .detach(|| {
            let m = load(&src, &shapes, weights.as_ref()).map_err(|e| (e, Phase::Load))?;
            kiln::compile::aot(&m, &req).map_err(|e| (e, Phase::Compile))
        })
        .map_err(|(e, phase)| py_err(e, phase))?;
    let write = |file: PathBuf, data: &[u8]| -> PyResult<PathBuf> {
        std::fs::write(&file, data).map_err(|source| {
            KilnError::new_err(
                kiln::KilnError::Io {
                    path: file.clone(),
                    source,
                }
                .to_string(),
            )
        })?;
        Ok(file)
    };
    let object = write(out_dir.join(format!("{}.o", opts.name)), &obj.object)?;
    let header = write(
        out_dir.join(format!("{}.h", opts.name)),
        obj.header.as_bytes(),
    )?;
    let d = PyDict::new(py);
    d.set_item("object", object)?;
    d.set_item("header", header)?;
    d.set_item("entry", format!("kiln_{}_run", opts.name))?;
    d.set_item("target", opts.target)?;
    d.set_item("cpu", opts.cpu)?;
    d.set_item("scratch_bytes", obj.scratch_bytes)?;
    d.set_item("const_bytes", obj.const_bytes)?;
    d.set_item("undefined", obj.undefined)?;
    d.set_item("threads", obj.threads)?;
    d.set_item("parallel_kernels", obj.parallel_kernels)?;
    d.set_item("kernels", obj.kernels)?;
    Ok(d)
}

/// The zoo, as `kiln list` shows it.
#[pyfunction]
#[pyo3(name = "zoo")]
fn zoo_list(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    kiln::frontends::zoo::list()
        .iter()
        .map(|e| {
            let d = PyDict::new(py);
            d.set_item("name", e.name)?;
            d.set_item("family", e.family)?;
            d.set_item("resolution", e.resolution)?;
            Ok(d)
        })
        .collect()
}

/// A safetensors file as a dict of numpy arrays (f32 or i64).
#[pyfunction]
fn load_weights(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let store = py
        .detach(|| safetensors::load(&path))
        .map_err(|e| py_err(e.into(), Phase::Load))?;
    let d = PyDict::new(py);
    for (name, t) in store.iter() {
        let arr = match (t.as_f32(), t.as_i64()) {
            (Some(v), _) => numpy::PyArray1::from_slice(py, v)
                .reshape(t.shape())?
                .into_any(),
            (_, Some(v)) => numpy::PyArray1::from_slice(py, v)
                .reshape(t.shape())?
                .into_any(),
            _ => continue,
        };
        d.set_item(name, arr)?;
    }
    Ok(d)
}

/// The extension module.
#[pymodule]
fn _kiln(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Model>()?;
    m.add_class::<TensorInfo>()?;
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(compile_aot, m)?)?;
    m.add_function(wrap_pyfunction!(zoo_list, m)?)?;
    m.add_function(wrap_pyfunction!(load_weights, m)?)?;
    m.add_function(wrap_pyfunction!(_last_input_addresses, m)?)?;
    m.add("KilnError", py.get_type::<KilnError>())?;
    m.add("ModelImportError", py.get_type::<ModelImportError>())?;
    m.add("UnsupportedOpError", py.get_type::<UnsupportedOpError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("CompileError", py.get_type::<CompileError>())?;
    Ok(())
}
