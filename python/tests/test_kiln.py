"""The kiln Python package: every entry point, outputs against onnxruntime,
zero-copy inputs, bad input, threads."""

import json
import threading
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import kiln
from conftest import FIXTURES, ROOT

# The smallest zoo model of each family.
SMALLEST = ["mobile_former_26m", "mobilevitv2_050", "xformer"]


def close_enough(got, want):
    """kiln's criterion against a reference (tests/zoo_all.rs): max |diff|
    at most 1e-4 of max |ref|."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    assert np.isfinite(got).all()
    diff = float(np.max(np.abs(got - want)))
    scale = float(np.max(np.abs(want)))
    assert diff <= 1e-4 * scale, f"max |diff| {diff:e} > 1e-4 * {scale:e}"


def ort_run(path_or_bytes, inputs):
    sess = ort.InferenceSession(
        path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes),
        providers=["CPUExecutionProvider"],
    )
    feed = {i.name: x for i, x in zip(sess.get_inputs(), inputs)}
    return sess.run(None, feed)


def make_model(graph):
    # IR version 9: what the pinned onnxruntime reads (onnx's default is newer)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def random_inputs(model, seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.uniform(-1, 1, size=i.shape).astype(i.dtype) for i in model.inputs
    ]


@pytest.fixture(scope="module")
def mf26():
    return kiln.compile("mobile_former_26m")


# --- outputs against onnxruntime ------------------------------------------


@pytest.mark.parametrize("name", SMALLEST)
def test_zoo_model_matches_onnxruntime(name, exported):
    m = kiln.compile(name)
    (x,) = random_inputs(m)
    (want,) = ort_run(exported(name), [x])
    close_enough(m(x), want)


def test_exported_onnx_file_path_bytes_and_proto(exported):
    path = exported("mobilevitv2_050")
    by_path = kiln.compile(path)
    by_str = kiln.compile(str(path))
    by_bytes = kiln.compile(path.read_bytes())
    by_proto = kiln.compile(onnx.load(str(path)))
    (x,) = random_inputs(by_path, 3)
    (want,) = ort_run(path, [x])
    y = by_path(x)
    close_enough(y, want)
    # One model, four ways in: the same compiled code, the same bits.
    for other in (by_str, by_bytes, by_proto):
        np.testing.assert_array_equal(other(x), y)


def test_pytorch_exported_fixture_two_inputs_two_outputs():
    path = FIXTURES / "mobileformer_block.dynamo.onnx"
    m = kiln.compile(path)
    assert len(m.inputs) == 2 and len(m.outputs) == 2
    xs = random_inputs(m, 1)
    want = ort_run(path, xs)
    got = m(*xs)
    assert isinstance(got, list) and len(got) == 2
    for g, w in zip(got, want):
        close_enough(g, w)
    # by name, onnxruntime's style
    by_name = m.run({i.name: x for i, x in zip(m.inputs, xs)})
    for a, b in zip(by_name, got):
        np.testing.assert_array_equal(a, b)


def test_input_shapes_resolve_symbolic_dims():
    # (a symbolic batch axis defaults to 1; other axes must be given)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, "C"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, "C"])
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"], name="sig")], "g", [x], [y]
    )
    proto = make_model(graph)
    with pytest.raises(kiln.ModelImportError, match="symbolic dimension 'C'"):
        kiln.compile(proto)
    m = kiln.compile(proto, input_shapes={"x": (3, 4)})
    assert m.inputs[0].shape == [3, 4]
    a = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    (want,) = ort_run(proto.SerializeToString(), [a])
    close_enough(m(a), want)


# --- zero-copy and output buffers -----------------------------------------


def test_contiguous_float32_input_is_read_in_place(mf26):
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 224, 224)).astype(np.float32)
    y = mf26(x)
    assert kiln._kiln._last_input_addresses() == [x.ctypes.data]
    # A strided view is copied: read from elsewhere, same result.
    big = np.zeros((1, 3, 224, 448), np.float32)
    big[..., ::2] = x
    view = big[..., ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(mf26(view), y)
    assert kiln._kiln._last_input_addresses() != [view.ctypes.data]
    # Fortran order and a misaligned buffer are copied too.
    np.testing.assert_array_equal(mf26(np.asfortranarray(x)), y)
    raw = bytearray(x.nbytes + 1)
    odd = np.frombuffer(raw, dtype=np.float32, count=x.size, offset=1).reshape(x.shape)
    odd[...] = x
    assert not odd.flags.aligned
    np.testing.assert_array_equal(mf26(odd), y)
    # A read-only array is read in place.
    ro = x.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(mf26(ro), y)
    assert kiln._kiln._last_input_addresses() == [ro.ctypes.data]


def test_caller_provided_outputs(mf26):
    (x,) = random_inputs(mf26, 5)
    out = np.full((1, 1000), np.nan, np.float32)
    res = mf26.run([x], outputs=[out])
    assert res[0] is out
    np.testing.assert_array_equal(out, mf26(x))
    with pytest.raises(kiln.ShapeError, match=r"output 0 \(%.*\) must be f32\[1,1000\], got f32\[1,999\]"):
        mf26.run([x], outputs=[np.zeros((1, 999), np.float32)])
    with pytest.raises(kiln.ShapeError, match="C-contiguous"):
        mf26.run([x], outputs=[np.zeros((1, 2000), np.float32)[:, ::2]])
    with pytest.raises(kiln.ShapeError, match="must be f32"):
        mf26.run([x], outputs=[np.zeros((1, 1000), np.float64)])
    ro = np.zeros((1, 1000), np.float32)
    ro.flags.writeable = False
    with pytest.raises(kiln.ShapeError, match="cannot be written"):
        mf26.run([x], outputs=[ro])
    with pytest.raises(kiln.ShapeError, match="model has 1 outputs, 2 given"):
        mf26.run([x], outputs=[out, out.copy()])


def test_output_may_not_alias_an_input():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    m = kiln.compile(make_model(graph))
    a = np.linspace(-1, 1, 8, dtype=np.float32)
    with pytest.raises(kiln.ShapeError, match="also passed as an input"):
        m.run([a], outputs=[a])
    np.testing.assert_array_equal(m(a), np.maximum(a, 0))


# --- bad input ------------------------------------------------------------


def test_bad_inputs_raise_shape_error(mf26):
    good = np.zeros((1, 3, 224, 224), np.float32)
    with pytest.raises(kiln.ShapeError, match=r"input 0 \(%.*\) must be f32\[1,3,224,224\], got f32\[1,3,224,225\]"):
        mf26(np.zeros((1, 3, 224, 225), np.float32))
    with pytest.raises(kiln.ShapeError, match=r"must be f32\[1,3,224,224\], got float64\[1,3,224,224\]"):
        mf26(good.astype(np.float64))
    with pytest.raises(kiln.ShapeError, match="must be f32.*got i64"):
        mf26(good.astype(np.int64))
    with pytest.raises(kiln.ShapeError, match="the model has 1 inputs, 2 given"):
        mf26(good, good)
    with pytest.raises(kiln.ShapeError, match="the model has 1 inputs, 0 given"):
        mf26()
    with pytest.raises(kiln.ShapeError, match="no array given for input"):
        mf26.run({"nope": good})
    # all are KilnErrors; the model still works afterwards
    assert issubclass(kiln.ShapeError, kiln.KilnError)
    assert mf26(good).shape == (1, 1000)


def test_non_array_inputs_are_converted():
    m = kiln.compile(FIXTURES / "mobilevitv2_block.torchscript.onnx")
    (x,) = random_inputs(m, 2)
    np.testing.assert_array_equal(m(x.tolist()), m(x))


def test_closed_model_raises():
    m = kiln.compile(FIXTURES / "mobilevitv2_block.torchscript.onnx")
    (x,) = random_inputs(m)
    with m as same:
        assert same is m
        m(x)
    assert m.closed
    for call in (lambda: m(x), lambda: m.inputs, lambda: m.kir, lambda: m.profile(1)):
        with pytest.raises(kiln.KilnError, match="the model is closed"):
            call()
    m.close()  # idempotent
    assert "closed" in repr(m)


def test_not_onnx_and_missing_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf \xff\xff\xff")
    with pytest.raises(kiln.ModelImportError, match="^onnx: "):
        kiln.compile(junk)
    with pytest.raises(kiln.ModelImportError, match="^onnx: "):
        kiln.compile(b"\x08\x07garbage")
    with pytest.raises(kiln.ModelImportError, match="no/such.onnx"):
        kiln.compile("no/such.onnx")
    with pytest.raises(kiln.ModelImportError, match=r"kiln reads \.kir and \.onnx files"):
        kiln.compile(tmp_path / "model.pt")
    with pytest.raises(kiln.ModelImportError, match="unknown model `resnet50`"):
        kiln.compile("resnet50")
    with pytest.raises(kiln.ModelImportError, match="cannot compile a int"):
        kiln.compile(42)
    with pytest.raises(kiln.KilnError, match="input_shapes applies to ONNX"):
        kiln.compile("mobile_former_26m", input_shapes={"x": [1, 3, 224, 224]})


def test_unsupported_op_names_op_and_node(kiln_cli, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["y"], name="the_det")], "g", [x], [y]
    )
    proto = make_model(graph)
    path = tmp_path / "det.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(kiln.UnsupportedOpError) as e:
        kiln.compile(path)
    assert "Det" in str(e.value) and "the_det" in str(e.value)
    # the CLI's message, word for word
    with pytest.raises(RuntimeError) as cli:
        kiln_cli("info", path)
    assert f"error: {e.value}" in str(cli.value)


def test_bad_options():
    with pytest.raises(kiln.KilnError, match="threads must be at least 1"):
        kiln.compile("mobile_former_26m", threads=0)
    with pytest.raises(kiln.KilnError, match="tiles="):
        kiln.compile("mobile_former_26m", tiles="sse")


# --- the other entry points -----------------------------------------------


def test_inputs_outputs_and_options(mf26):
    (i,) = mf26.inputs
    (o,) = mf26.outputs
    assert (i.shape, i.dtype) == ([1, 3, 224, 224], "float32")
    assert (o.shape, o.dtype) == ([1, 1000], "float32")
    assert f"%{i.name} : f32[1,3,224,224]" in mf26.kir
    assert "TensorInfo(name=" in repr(i)
    (x,) = random_inputs(mf26, 9)
    y = mf26(x)
    # one thread, the portable tiles, no optimiser: other code, same maths
    for opts in ({"threads": 1}, {"tiles": "f32x4"}, {"optimize": False}):
        other = kiln.compile("mobile_former_26m", **opts)
        close_enough(other(x), y)
    assert kiln.compile("mobile_former_26m", threads=1).threads == 1


def test_kir_is_the_compiled_graph_as_text(mf26, kiln_cli, tmp_path):
    path = tmp_path / "opt.kir"
    path.write_text(mf26.kir)
    # kiln parses and verifies it: the model's inputs, outputs, node count
    info = json.loads(kiln_cli("info", path, "--json"))
    io = lambda infos: [(i.name, i.shape) for i in infos]
    assert [(i["name"], i["shape"]) for i in info["inputs"]] == io(mf26.inputs)
    assert [(i["name"], i["shape"]) for i in info["outputs"]] == io(mf26.outputs)
    assert len(info["layers"]) == mf26.explain()["nodes_after"]


def test_explain_is_kiln_opt_report(mf26, kiln_cli):
    report = mf26.explain()
    assert report == json.loads(kiln_cli("opt", "mobile_former_26m", "--explain", "--json"))
    # the report's op counts are those of the compiled graph
    kir = mf26.kir
    for op, n in report["ops"].items():
        assert kir.count(f" = {op}(") == n, op
    assert kiln.compile("mobile_former_26m", optimize=False).explain() is None


def test_profile_is_kiln_bench_profile(mf26, kiln_cli):
    rows = mf26.profile(iters=3)
    assert rows and {
        "node", "kernels", "ms", "share", "gflops", "gbps", "macs", "bytes", "parallel"
    } <= set(rows[0])
    assert abs(sum(r["share"] for r in rows) - 1.0) < 1e-6
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    # the CLI's table has the same nodes (times differ)
    cli = json.loads(
        kiln_cli("bench", "mobile_former_26m", "--profile", "--json", "--iters", "1", "--warmup", "0")
    )["profile"]
    assert sorted(r["node"] for r in rows) == sorted(r["node"] for r in cli)
    (x,) = random_inputs(mf26, 4)
    given = mf26.profile(iters=1, inputs=[x])
    assert sorted(r["node"] for r in given) == sorted(r["node"] for r in rows)
    with pytest.raises(kiln.KilnError, match="iters"):
        mf26.profile(iters=0)
    with pytest.raises(kiln.ShapeError, match="must be f32"):
        mf26.profile(iters=1, inputs=[x.astype(np.float64)])


def test_zoo_is_kiln_list(kiln_cli):
    listed = [line.split()[0] for line in kiln_cli("list").splitlines()[1:]]
    assert [e["name"] for e in kiln.zoo()] == listed
    assert set(SMALLEST) <= set(listed)
    e = kiln.zoo()[0]
    assert isinstance(e["family"], str) and e["resolution"] in (224, 256)


def test_load_weights_and_compile_with_them():
    ex = ROOT / "examples"
    w = kiln.load_weights(ex / "conv_norm_attention.safetensors")
    assert w["conv.weight"].shape == (16, 3, 3, 3) and w["conv.weight"].dtype == np.float32
    m = kiln.compile(ex / "conv_norm_attention.kir", weights=ex / "conv_norm_attention.safetensors")
    x = np.load(ex / "conv_norm_attention_input.npy")
    close_enough(m(x), np.load(ex / "conv_norm_attention_expected.npy"))
    with pytest.raises(kiln.ModelImportError, match="no/such.safetensors"):
        kiln.load_weights("no/such.safetensors")


def test_compile_aot_writes_object_and_header(tmp_path):
    res = kiln.compile_aot(
        FIXTURES / "mobilevitv2_block.torchscript.onnx", out_dir=tmp_path, name="blk"
    )
    obj, hdr = tmp_path / "blk.o", tmp_path / "blk.h"
    assert res["object"] == obj and res["header"] == hdr
    assert obj.read_bytes()[:4] == b"\x7fELF"
    assert res["entry"] == "kiln_blk_run" and "kiln_blk_run" in hdr.read_text()
    assert res["cpu"]  # the target's default level, resolved
    import shutil, subprocess

    if shutil.which("gcc"):  # the header is valid C, with its pthread pool too
        subprocess.run(["gcc", "-fsyntax-only", "-x", "c", str(hdr)], check=True)
        subprocess.run(
            ["gcc", "-fsyntax-only", "-std=c11", "-DKILN_PTHREAD_POOL", "-x", "c", str(hdr)],
            check=True,
        )
    assert res["threads"] == 4 and 0 < res["parallel_kernels"] <= res["kernels"]
    two = kiln.compile_aot(
        FIXTURES / "mobilevitv2_block.torchscript.onnx", out_dir=tmp_path, name="blk2", threads=2
    )
    assert two["threads"] == 2
    with pytest.raises(kiln.KilnError, match="threads"):
        kiln.compile_aot("mobile_former_26m", out_dir=tmp_path, threads=0)
    with pytest.raises(kiln.CompileError, match="target"):
        kiln.compile_aot("mobile_former_26m", target="sparc-sun-solaris", out_dir=tmp_path)


# --- threads --------------------------------------------------------------


def test_four_threads_share_one_model(mf26):
    xs = [random_inputs(mf26, s)[0] for s in range(8)]
    want = [mf26(x) for x in xs]
    errors = []

    def worker(t):
        try:
            for rep in range(3):
                for k in range(t, len(xs), 4):
                    out = np.empty((1, 1000), np.float32)
                    mf26.run([xs[k]], outputs=[out])
                    # bitwise: kernels compute each element the same way
                    # whatever thread runs them (backends/src/compiled.rs)
                    np.testing.assert_array_equal(out, want[k])
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_gil_is_released_while_kernels_run():
    # a slow call (tens of ms), so that scheduling noise is small next to it
    m = kiln.compile("xformer", threads=1)
    (x,) = random_inputs(m)
    m(x)
    t0 = time.perf_counter()
    m(x)
    one = time.perf_counter() - t0
    started, start = threading.Event(), []

    def worker():
        started.set()
        start.append(time.perf_counter())
        m(x)

    t = threading.Thread(target=worker)
    t.start()
    started.wait()
    time.sleep(one / 10)
    # Were the GIL held during the call, this thread could not run again
    # before the call returned, a whole call after it started.
    resumed = time.perf_counter()
    t.join()
    assert resumed - start[0] < one / 2, (
        f"main thread resumed {(resumed - start[0]) * 1e3:.1f} ms into a {one * 1e3:.1f} ms call"
    )


def test_close_while_other_threads_run():
    m = kiln.compile("mobile_former_26m", threads=1)
    (x,) = random_inputs(m)
    want = m(x)
    results, started = [], threading.Barrier(3)

    def worker():
        started.wait()
        for _ in range(20):
            try:
                results.append(np.array_equal(m(x), want))
            except kiln.KilnError as e:
                assert "closed" in str(e)
                return

    ts = [threading.Thread(target=worker) for _ in range(2)]
    for t in ts:
        t.start()
    started.wait()
    m.close()
    for t in ts:
        t.join()
    assert all(results)
