"""The model garden: kiln on public timm models it has never seen, against
ONNX Runtime and OpenVINO (fp32).

Run through bench/garden/run (venv, kiln build). Steps:

1. export (export.py, cached): each model in two spellings, TorchScript
   (opset 17) and dynamo, with a seeded input and PyTorch's logits;
2. check, per model and spelling: `kiln info` (the import), then `kiln run`
   with the interpreter and with the JIT, each compared with PyTorch's
   logits (max |diff| / max |ref| <= 1e-4);
3. time (unless --no-time): per round, per model, spelling and thread
   count, a fresh process per runtime (`kiln bench FILE --json`, or
   bench/peers/peer.py), runtimes in an order that rotates from slot to
   slot; then one `kiln bench FILE --profile` per model and spelling;
4. print one table (medians over rounds of each process's median) and the
   geometric mean of kiln's ratio to the best peer, and write
   target/garden/results/results.json and results/profiles/*.txt.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "bench", "peers"))

import export  # noqa: E402 - bench/garden is sys.path[0]
from runners import KILN, Failed, kiln_bench, peer, rel_diff, rotation, run  # noqa: E402

RESULTS = os.path.join(ROOT, "target", "garden", "results")
TOL = 1e-4
SHORT = {"torchscript": "ts", "dynamo": "dyn"}
PEERS = ["ort", "openvino"]


def load_meta(model):
    p = os.path.join(export.MODELS_DIR, model, "meta.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def files(model, spelling):
    d = os.path.join(export.MODELS_DIR, model)
    return (os.path.join(d, f"{spelling}.onnx"), os.path.join(d, "input.npy"),
            os.path.join(d, "ref.npy"))


def check(model, spelling, meta, timeout):
    """Import, interpreter and JIT against PyTorch's logits: one result row."""
    res = {"model": model, "spelling": spelling, "family": meta.get("family", "?") if meta else "?"}
    sp = (meta or {}).get("spellings", {}).get(spelling)
    if not sp or not sp.get("ok"):
        res["status"] = "export"
        res["error"] = (sp or {}).get("error", "not exported")
        return res
    res["opset"] = sp.get("opset")
    # PyTorch's own float32 error against the float64 reference: a model
    # where it nears the tolerance is ill-conditioned, not kiln's fault.
    res["torch_f32_rel"] = meta.get("torch_f32_rel")
    onnx, x, ref_path = files(model, spelling)
    ref = np.load(ref_path)
    try:
        info = json.loads(run([KILN, "info", onnx, "--json"], timeout=timeout))
    except Failed as e:
        res["status"] = "import"
        res["error"] = e.message
        return res
    res["macs"] = info["macs"]
    res["kiln_nodes"] = info["nodes"]
    res["onnx_nodes"] = sp.get("nodes")
    errors = []
    for backend in ("interp", "jit"):
        out = os.path.join(RESULTS, "outputs", f"{model}.{spelling}.{backend}.npy")
        t0 = time.time()
        try:
            run([KILN, "run", onnx, "--input", x, "--output", out, "--backend", backend],
                timeout=timeout)
            rel = rel_diff(np.load(out), ref)
            res[backend] = {"rel": rel, "s": round(time.time() - t0, 2)}
        except Failed as e:
            res[backend] = {"error": e.message}
            errors.append(f"{backend}: {e.message}")
        except subprocess.TimeoutExpired:
            res[backend] = {"error": f"timed out after {timeout} s"}
            errors.append(f"{backend}: timed out after {timeout} s")
    if errors:
        res["status"] = "run"
        res["error"] = "; ".join(errors)
    else:
        bad = [f"{b} {res[b]['rel']:.1e}" for b in ("interp", "jit") if not res[b]["rel"] <= TOL]
        res["status"] = "mismatch" if bad else "ok"
        if bad:
            res["error"] = "max|diff|/max|ref| " + ", ".join(bad) + f" > {TOL:g}"
    return res


def time_rows(rows, threads, rounds, iters, warmup, timeout):
    """Interleaved rounds of fresh processes; fills row['times'][threads][runtime]."""
    runtimes = ["kiln"] + PEERS
    for r in range(rounds):
        slot = 0
        for row in rows:
            onnx, x, ref_path = files(row["model"], row["spelling"])
            for t in threads:
                cell = row.setdefault("times", {}).setdefault(str(t), {})
                for rt in rotation(runtimes, r, slot):
                    c = cell.setdefault(rt, {"ms": []})
                    if "error" in c:
                        continue
                    try:
                        if rt == "kiln":
                            j = kiln_bench(onnx, t, iters, warmup, timeout=timeout)
                            c["compile_ms"] = j["compile_ms"]
                            c["gflops"] = j["gflops"]
                        else:
                            y = os.path.join(RESULTS, "outputs",
                                             f"{row['model']}.{row['spelling']}.{rt}.npy")
                            j = peer(rt, onnx, x, y, t, iters, warmup, timeout=timeout)
                            c["precision"] = j["precision"]
                            c["rel"] = rel_diff(np.load(y), np.load(ref_path))
                        c["ms"].append(j["median_ms"])
                        msg = f"{j['median_ms']:.3f} ms"
                    except Failed as e:
                        c["error"] = e.message
                        msg = f"error: {e.message}"
                    except subprocess.TimeoutExpired:
                        c["error"] = f"timed out after {timeout} s"
                        msg = c["error"]
                    print(f"round {r + 1}/{rounds} {row['model']} {SHORT[row['spelling']]} "
                          f"threads={t} {rt}: {msg}", file=sys.stderr, flush=True)
                slot += 1


def profile_rows(rows, iters, timeout):
    """One `kiln bench --profile` per model and spelling, at 1 thread, kept as text."""
    d = os.path.join(RESULTS, "profiles")
    os.makedirs(d, exist_ok=True)
    for row in rows:
        onnx, _, _ = files(row["model"], row["spelling"])
        path = os.path.join(d, f"{row['model']}.{row['spelling']}.txt")
        try:
            out = run([KILN, "bench", onnx, "--threads", "1", "--iters", str(iters),
                       "--profile"], timeout=timeout)
        except (Failed, subprocess.TimeoutExpired) as e:
            out = f"profile failed: {getattr(e, 'message', e)}\n"
        with open(path, "w") as f:
            f.write(out)
        row["profile"] = os.path.relpath(path, ROOT)
        row["hotspots"] = hotspots(out)
        print(f"profile {row['model']} {SHORT[row['spelling']]}", file=sys.stderr, flush=True)


def hotspots(text, n=3):
    """The n slowest nodes of a profile (the first rows of its per-node
    table), each as "ms share rate (op): kernel", the kernel cut short."""
    lines = text.splitlines()
    for i, ln in enumerate(lines):
        if ln.split()[:3] == ["ms", "share", "cum"]:
            out = []
            for r in lines[i + 1:i + 1 + n]:
                f = r.split()
                if len(f) < 7:
                    continue
                # ms share cum rate unit value (op) kernels...
                op = next((w for w in f[6:9] if w.startswith("(") and w.endswith(")")), "")
                kern = " ".join(f[f.index(op) + 1:]) if op else ""
                # "im2col ... (0.02 ms) + fused im2col conv ...: the main kernel last
                kern = kern.split(" + ")[-1]
                out.append(f"{f[0]} ms {f[1]} {f[3]} {f[4]} {op}: {kern[:90]}")
            return out
    return []


def median(c):
    return statistics.median(c["ms"]) if c and c.get("ms") else None


def summarise(row, t):
    """(kiln ms, {peer: ms}, best peer, ratio) of one row at t threads."""
    cell = row.get("times", {}).get(str(t), {})
    k = median(cell.get("kiln"))
    peers = {p: median(cell.get(p)) for p in PEERS}
    have = {p: v for p, v in peers.items() if v is not None}
    best = min(have, key=have.get) if have else None
    ratio = k / have[best] if k is not None and best else None
    return k, peers, best, ratio


def fmt(v, spec=".2f", width=8):
    return f"{v:>{width}{spec}}" if v is not None else f"{'-':>{width}}"


def status_text(row):
    s = row["status"]
    if s == "ok":
        return f"ok ({max(row['interp']['rel'], row['jit']['rel']):.0e})"
    if s == "mismatch" and (row.get("torch_f32_rel") or 0) > TOL / 10:
        return f"{s}: {row.get('error', '')} (torch's own f32: {row['torch_f32_rel']:.1e})"
    return f"{s}: {row.get('error', '')}"


def print_table(rows, threads, rounds, iters, timed):
    head = (f"{'model':<26} {'sp':>3} {'thr':>3} {'kiln':>8} {'ort':>8} {'openvino':>8} "
            f"{'best':>8} {'kiln/best':>9} {'compile':>8}  status")
    print(f"\nkiln garden: median ms over {rounds} round(s) x {iters} runs, batch 1, fp32; "
          f"sp = spelling (ts: TorchScript opset 17, dyn: dynamo); ratio < 1: kiln faster")
    print(head)
    print("-" * len(head))
    for row in rows:
        model, sp = row["model"][:26], SHORT[row["spelling"]]
        st = status_text(row)
        if not timed or row["status"] not in ("ok", "mismatch"):
            print(f"{model:<26} {sp:>3} {'-':>3} " + " ".join([fmt(None)] * 4)
                  + f" {fmt(None, width=9)} {fmt(None)}  {st[:110]}")
            continue
        for t in threads:
            k, peers, best, ratio = summarise(row, t)
            comp = row["times"][str(t)].get("kiln", {}).get("compile_ms")
            # a runtime that failed to time this row says why
            errs = [f"{rt}: {c['error']}" for rt, c in row["times"][str(t)].items() if "error" in c]
            st = "; ".join([status_text(row)] + errs)
            print(f"{model:<26} {sp:>3} {t:>3} {fmt(k, '.3f')} {fmt(peers['ort'], '.3f')} "
                  f"{fmt(peers['openvino'], '.3f')} {(best or '-'):>8} {fmt(ratio, '.2f', 9)} "
                  f"{fmt(comp, '.0f', 6)}ms  {st[:110]}")
    if timed:
        print()
        for t in threads:
            for sp in ("torchscript", "dynamo", None):
                rs = [summarise(r, t)[3] for r in rows if r["status"] == "ok"
                      and (sp is None or r["spelling"] == sp)]
                rs = [x for x in rs if x]
                if rs:
                    g = math.exp(sum(math.log(x) for x in rs) / len(rs))
                    name = SHORT[sp] if sp else "all"
                    print(f"geomean kiln/best, {t} thread(s), {name:>3}: {g:.2f} over {len(rs)} "
                          f"rows (status ok; max {max(rs):.2f}, {sum(x <= 1 for x in rs)} at or "
                          "below 1.0)")
    peer_off = [f"{r['model']} {SHORT[r['spelling']]} {rt} {c['rel']:.1e}" for r in rows
                for cell in r.get("times", {}).values() for rt, c in cell.items()
                if c.get("rel") is not None and c["rel"] > TOL]
    if peer_off:
        print("\npeers off PyTorch's logits by more than the tolerance: "
              + ", ".join(sorted(set(peer_off))))
    fails = [r for r in rows if r["status"] != "ok"]
    if fails:
        print("\nnot ok (full error text):")
        for r in fails:
            print(f"  {r['model']} {SHORT[r['spelling']]}: {r['status']}: {r.get('error', '')}")


def markdown(rows, threads, title):
    """The table as Markdown: one row per model and spelling, the ratio and
    both times per thread count (docs/perf pages)."""
    out = [title, ""]
    head = "| model | family | sp |"
    rule = "|---|---|---|"
    for t in threads:
        head += f" kiln {t}T | best peer {t}T | ratio {t}T |"
        rule += "---:|---|---:|"
    out += [head + " status |", rule + "---|"]
    for row in rows:
        line = f"| {row['model']} | {row['family']} | {SHORT[row['spelling']]} |"
        for t in threads:
            k, peers, best, ratio = summarise(row, t)
            if k is None:
                line += " | | |"
            else:
                line += (f" {k:.2f} | {peers[best]:.2f} ({best}) | "
                         f"{'**' if ratio > 1 else ''}{ratio:.2f}{'**' if ratio > 1 else ''} |")
        out.append(line + f" {status_text(row).replace('|', '/')} |")
    out.append("")
    for t in threads:
        rs = [summarise(r, t)[3] for r in rows if r["status"] == "ok"]
        rs = [x for x in rs if x]
        if rs:
            g = math.exp(sum(math.log(x) for x in rs) / len(rs))
            out.append(f"- geometric mean of kiln / best peer at {t} thread(s): **{g:.2f}** "
                       f"over {len(rs)} model-spellings that import and match "
                       f"({sum(x <= 1 for x in rs)} at or below 1.0, max {max(rs):.2f})")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="comma-separated timm names (default: export.py's list)")
    ap.add_argument("--spellings", default="torchscript,dynamo")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20, help="timed runs per process")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--skip-export", action="store_true", help="use what is already exported")
    ap.add_argument("--force", action="store_true", help="re-export (export.py --force)")
    ap.add_argument("--no-time", action="store_true", help="import and correctness only")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per process")
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    ap.add_argument("--from-results", metavar="JSON",
                    help="run nothing: print the table of a results.json written before")
    a = ap.parse_args()
    if a.from_results:
        with open(a.from_results) as f:
            saved = json.load(f)
        sa = saved["args"]
        rows = saved["rows"]
        threads = [int(t) for t in sa["threads"].split(",")]
        timed = not sa["no_time"]
        print_table(rows, threads, sa["rounds"], sa["iters"], timed)
        if a.markdown:
            with open(a.markdown, "w") as f:
                f.write(markdown(rows, threads if timed else [], "kiln garden"))
        return
    models = a.models.split(",") if a.models else [m for m, _ in export.MODELS]
    spellings = a.spellings.split(",")
    threads = [int(t) for t in a.threads.split(",")]
    os.makedirs(os.path.join(RESULTS, "outputs"), exist_ok=True)
    load_start = os.getloadavg()

    if not a.skip_export:
        cmd = [sys.executable, os.path.join(HERE, "export.py"), "--models", ",".join(models)]
        subprocess.run(cmd + (["--force"] if a.force else []), check=True)

    rows = []
    for m in models:
        meta = load_meta(m)
        for sp in spellings:
            row = check(m, sp, meta, a.timeout)
            print(f"check {m} {SHORT[sp]}: {status_text(row)}", file=sys.stderr, flush=True)
            rows.append(row)

    timed = not a.no_time
    runnable = [r for r in rows if r["status"] in ("ok", "mismatch")]
    if timed:
        time_rows(runnable, threads, a.rounds, a.iters, a.warmup, a.timeout)
        profile_rows(runnable, a.iters, a.timeout)

    print_table(rows, threads, a.rounds, a.iters, timed)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(markdown(rows, threads if timed else [], "kiln garden"))
    versions = next(((load_meta(m) or {}).get("versions") for m in models if load_meta(m)), None)
    out = os.path.join(RESULTS, "results.json")
    with open(out, "w") as f:
        json.dump({"args": vars(a), "versions": versions, "tolerance": TOL,
                   "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                   "rows": rows}, f, indent=1)
    print(f"\nwrote {os.path.relpath(out, ROOT)}" + (
        f" and {os.path.relpath(os.path.join(RESULTS, 'profiles'), ROOT)}/" if timed else ""))


if __name__ == "__main__":
    main()
