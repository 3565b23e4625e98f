"""`python -m bench [--quick] [--only NAME ...]`: run every benchmark, record, regenerate the doc.

Every module `bench/<name>.py` that defines `run(quick: bool) -> dict` is a benchmark. Each runs
in its own subprocess with a time limit; one that fails or times out is recorded as an error
and the rest go on. Results, with the machine they ran on, go to
`bench/results/<YYYY-MM-DD>-<host>.json` (a run with --only updates that day's file in place);
then `docs/BENCHMARKS.md` is regenerated from the newest results file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from inference_node import blas

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
DOC = REPO / "docs" / "BENCHMARKS.md"
NOT_BENCHMARKS = {"__init__", "__main__", "stats", "report"}
TIME_LIMIT_S = {True: 900, False: 3600}  # per benchmark, quick / full
# The full agent-task bench runs 22 tasks through the loop (SmolLM2 took ~140 s a task here).
FULL_LIMIT_S = {"agent_tasks": 3 * 3600}
# The child maps OpenBLAS (MLX's speed) then drops it from its environment: browsers it starts
# hang with it preloaded (see inference_node/blas.py). Once its result is written it leaves
# without running native destructors: with OpenBLAS preloaded, the describe benchmark's process
# aborted at exit ("terminate called without an active exception") in about 1 run of 3, after
# every number was out.
RUN_ONE = ("import json, os, sys; from importlib import import_module; "
           "from inference_node import blas; blas.drop_from_environ(); "
           "r = import_module('bench.' + sys.argv[1]).run(sys.argv[2] == '1'); "
           "f = open(sys.argv[3], 'w'); json.dump(r, f, indent=1, default=str); f.close(); "
           "sys.stdout.flush(); sys.stderr.flush(); os._exit(0)")


def discover() -> list[str]:
    """Benchmark module names, without importing them (they pull in MLX, browsers, sshd)."""
    names = []
    for path in sorted(BENCH.glob("*.py")):
        if path.stem in NOT_BENCHMARKS:
            continue
        if re.search(r"^def run\(", path.read_text(errors="replace"), re.M):
            names.append(path.stem)
    return names


def run_one(name: str, quick: bool, limit_s: float) -> dict[str, Any]:
    """One benchmark in a subprocess: {"ok", "seconds", "result"} or {"ok": False, "error"}."""
    print(f"bench: {name} ({'quick' if quick else 'full'}) ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "result.json"
        t0 = time.monotonic()
        try:
            done = subprocess.run([sys.executable, "-c", RUN_ONE, name, "1" if quick else "0",
                                   str(out)], cwd=REPO, timeout=limit_s, capture_output=True,
                                  text=True, start_new_session=True, env=blas.with_preload())
        except subprocess.TimeoutExpired as e:
            err = (e.stderr or b"")
            tail = err.decode(errors="replace") if isinstance(err, bytes) else err
            return {"ok": False, "seconds": round(time.monotonic() - t0, 1),
                    "error": f"timed out after {limit_s:.0f} s", "stderr_tail": tail[-2000:]}
        seconds = round(time.monotonic() - t0, 1)
        if done.returncode != 0 or not out.is_file():
            return {"ok": False, "seconds": seconds,
                    "error": f"exit {done.returncode}: {_last_line(done.stderr)}",
                    "stderr_tail": done.stderr[-2000:]}
        print(f"bench: {name} done in {seconds} s", file=sys.stderr, flush=True)
        return {"ok": True, "seconds": seconds, "result": json.loads(out.read_text())}


def _last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1] if lines else "(no output)"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gb": _memory_gb(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "openblas_preloaded": blas.openblas() or "no (reference BLAS)",
        "gemv_forwarder": blas.forwarder() or f"no: {blas.forwarder_problem()}",
    }
    try:
        import mlx.core as mx

        info["mlx"] = mx.__version__
        info["mlx_device"] = str(mx.default_device())
    except Exception as e:  # noqa: BLE001 - the record says what went wrong
        info["mlx"] = f"unavailable: {e}"
    try:
        from importlib.metadata import version

        info["mlx_lm"] = version("mlx-lm")
    except Exception:  # noqa: BLE001
        info["mlx_lm"] = "unavailable"
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                        capture_output=True, text=True).stdout.strip()
    except OSError:
        info["commit"] = ""
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                             capture_output=True, text=True).stdout.strip()
        if out:
            return out
    return platform.processor() or platform.machine()


def _memory_gb() -> float:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 1e9, 1)
    except ImportError:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return round(pages / 1e9, 1)


def results_path(when: dt.date | None = None, host: str | None = None,
                 root: Path = RESULTS) -> Path:
    when = when or dt.date.today()
    host = re.sub(r"[^A-Za-z0-9._-]", "_", host or socket.gethostname())
    return root / f"{when.isoformat()}-{host}.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a short run (minutes, not a quarter hour)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--doc", type=Path, default=DOC, help="the Markdown file to regenerate")
    p.add_argument("--time-limit", type=float, help="seconds per benchmark before it is stopped")
    args = p.parse_args(argv)
    blas.drop_from_environ()  # each benchmark's subprocess gets it back (run_one)

    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            print(f"bench: no benchmark named {', '.join(unknown)}; the benchmarks are: "
                  f"{', '.join(names)}", file=sys.stderr)
            return 2
        names = [n for n in names if n in args.only]
    out = results_path(root=args.results_dir)
    record: dict[str, Any] = {"benchmarks": {}}
    if args.only and out.is_file():
        record = json.loads(out.read_text())
    now = dt.datetime.now().isoformat(timespec="seconds")
    record.setdefault("started", now)  # a run with --only updates the day's file: keep its start
    record.update({"date": dt.date.today().isoformat(), "updated": now, "quick": args.quick,
                   "smoke": bool(os.environ.get("BENCH_SMOKE")), "machine": machine()})
    for name in names:
        limit_s = args.time_limit or (TIME_LIMIT_S[True] if args.quick
                                      else FULL_LIMIT_S.get(name, TIME_LIMIT_S[False]))
        record["benchmarks"][name] = {"quick": args.quick, **run_one(name, args.quick, limit_s)}
        if not record["benchmarks"][name]["ok"]:
            failure = record["benchmarks"][name]
            print(f"bench: {name} failed after {failure['seconds']} s: {failure['error']}\n"
                  f"{failure['stderr_tail'][-1200:]}", file=sys.stderr, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1, default=str) + "\n")  # saved as it goes
    print(f"bench: results in {out}", file=sys.stderr)

    from bench.report import newest_results, render, write_doc

    newest = newest_results(args.results_dir) or out
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    write_doc(args.doc, render(json.loads(newest.read_text()), newest.name, args.results_dir))
    print(f"bench: wrote {args.doc} from {newest.name}", file=sys.stderr)
    failed = [n for n in names if not record["benchmarks"][n]["ok"]]
    if failed:
        print("bench: failed: " + "; ".join(f"{n} ({record['benchmarks'][n]['error']})"
                                            for n in failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
