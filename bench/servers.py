"""The engine benchmark's model and servers, shared by the other benchmarks that serve a model.

The model: SmolLM2-135M-Instruct imported from the embedded GGUF (`prepare_model`), loaded in
process the way our engine loads it (`load_model`: dequantized to float32 without Metal), and
a float32 copy for `mlx_lm.server`, which cannot dequantize (`mlx_server_folder`). The servers:
`inference-node serve` (`grpc_server`) and `mlx_lm.server` (`mlx_server`), each a subprocess on a
free loopback port, stopped when its block ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.stats import smoke
from studio_common.net import free_port

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".home" / "test-models"
PY = sys.executable


def log(msg: str) -> None:
    print(f"bench.servers: {msg}", file=sys.stderr, flush=True)

# ------------------------------------------------------------------ the model


def prepare_model(tmp: Path, tiny: bool | None = None) -> tuple[Path, dict[str, Any]]:
    """The folder to serve and a note on what runs (name, dtype, why); `tiny`: a scripted one.

    The folder is the import as is: our engine dequantizes it at load where `dequantizes()`;
    load it in process with `load_model` and give `mlx_lm.server` `mlx_server_folder(path)`.
    """
    if smoke() if tiny is None else tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_models import build_chain_model

        path = build_chain_model(tmp / "loop", ["a", "b", "c", "d", "e", "f", "a"], context=4096)
        return path, {"name": "tiny-chain (smoke)", "dtype": "float32", "note": "smoke run"}
    from inference_node.gguf import ensure_default_model

    CACHE.mkdir(parents=True, exist_ok=True)
    src = ensure_default_model(CACHE)
    cfg = json.loads((src / "config.json").read_text())
    dtype = cfg.get("torch_dtype", "?")
    quantized = "quantization" in cfg
    info: dict[str, Any] = {"name": src.name, "imported_dtype": dtype,
                            "imported_quantized": quantized}
    if not (quantized and dequantizes()):
        return src, {**info, "dtype": dtype, "note": "the imported folder as is"}
    return src, {**info, "dtype": "float32", "note": (
        f"the imported folder is {dtype} with Q4-quantized weights; without Metal the engine "
        "dequantizes them to float32 at load (engine.dequantize_on_cpu: MLX's CPU quantized "
        "matmul is far slower than float32 BLAS), the in-process side does the same with "
        "mlx_lm.utils.dequantize_model, and mlx_lm.server is given a dequantized float32 copy, "
        "so all paths run the same float32 weights (BENCH_NATIVE_DTYPE=1: the quantized ones)")}


def dequantizes() -> bool:
    """Whether our engine dequantizes quantized models at load here (no Metal, the default
    `engine.dequantize_on_cpu`), unless BENCH_NATIVE_DTYPE=1 asks for the weights as stored."""
    import mlx.core as mx

    return not os.environ.get("BENCH_NATIVE_DTYPE") and not mx.metal.is_available()


def _quantized(path: Path) -> bool:
    return "quantization" in json.loads((path / "config.json").read_text())


def load_model(path: Path) -> tuple[Any, Any]:
    """mlx-lm's `load`, then dequantized as our engine does it at load: the same weights."""
    from mlx_lm import load
    from mlx_lm.utils import dequantize_model

    model, tokenizer = load(str(path))[:2]
    if dequantizes() and _quantized(path):
        model = dequantize_model(model)
    return model, tokenizer


def mlx_server_folder(path: Path) -> Path:
    """The folder for `mlx_lm.server`, which cannot dequantize: where our engine dequantizes,
    a float32 copy of a quantized `path` (written once, cached next to it), else `path`."""
    if not (dequantizes() and _quantized(path)):
        return path
    dst = path.with_name(f"{path.name}-f32")
    if not (dst / "config.json").is_file():
        log(f"writing a dequantized float32 copy of {path.name} to {dst} for mlx_lm.server")
        _write_float32_copy(path, dst)
    return dst


def engine_toml(prompt_cache: bool = True, fuse: bool = True) -> str:
    """The [engine] section of a node config: dequantize at load exactly when `dequantizes()`;
    without `prompt_cache`, no prefix reuse (a repeated prompt would skip the prefill); without
    `fuse`, each projection its own matmul (engine.fuse_projections)."""
    lines = [] if dequantizes() else ["dequantize_on_cpu = false"]
    lines += [] if prompt_cache else ["prompt_cache_mb = 0"]
    lines += [] if fuse else ["fuse_projections = false"]
    return "[engine]\n" + "".join(f"{line}\n" for line in lines) + "\n" if lines else ""


def _write_float32_copy(src: Path, dst: Path) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.utils import dequantize_model

    model = load(str(src))[0]
    model = dequantize_model(model)
    model.set_dtype(mx.float32)
    part = dst.with_name(dst.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    shutil.copytree(src, part, ignore=shutil.ignore_patterns("*.safetensors*", "config.json"))
    mx.save_safetensors(str(part / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata={"format": "mlx"})
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("quantization", None)
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = "float32"
    (part / "config.json").write_text(json.dumps(cfg, indent=2))
    try:
        part.rename(dst)
    except OSError:  # another run finished the same copy first
        shutil.rmtree(part, ignore_errors=True)


# ------------------------------------------------------------------ the servers


def server_env() -> dict[str, str]:
    from inference_node import blas

    env = blas.with_preload()  # both servers run MLX; neither starts a browser
    env.setdefault("STUDIO_CODER_HOME", str(REPO / ".home" / "test-home"))
    return env


@contextmanager
def grpc_server(model: Path, name: str, tmp: Path, *, prompt_cache: bool = False,
                budget_gb: float = 8.0, fuse: bool = True,
                prompt_lookup: bool = False) -> Iterator[str]:
    """`inference-node serve` in a subprocess; yields its target. The prompt cache is off
    unless asked for: the engine benchmark repeats prompts and times their prefill. So is
    prompt lookup ([[models]] prompt_lookup, on by default in a node): the benchmarks that
    time decoding compare the serving path like for like; bench/lookup.py measures it."""
    port = free_port()
    conf = tmp / "inference-node.toml"
    conf.write_text(f'{engine_toml(prompt_cache=prompt_cache, fuse=fuse)}'
                    f'[memory]\nbudget_gb = {budget_gb}\nfloor_gb = 0.0\n\n'
                    f'[[models]]\nname = "{name}"\npath = "{model}"\n'
                    f'prompt_lookup = {str(prompt_lookup).lower()}\n')
    cmd = [PY, "-m", "inference_node.cli", "serve", "--config", str(conf), "--port", str(port)]
    with process(cmd, tmp / "grpc-server.log") as proc:
        target = f"127.0.0.1:{port}"
        wait_grpc(target, proc, tmp / "grpc-server.log")
        yield target


@contextmanager
def in_process(models: list[Any], **engine: Any) -> Iterator[tuple[Any, Any]]:
    """Our gRPC server in this process on a free loopback port, serving `models` (ModelEntry)
    with a 16 GB budget, the prompt cache off and `engine`'s settings: (server, stub)."""
    import grpc

    from inference_node.api import rpc
    from inference_node.config import EngineConfig, InferenceConfig, MemoryConfig
    from inference_node.server import create_server

    cfg = InferenceConfig(models=models)  # their prompt_lookup as given: on unless set
    cfg.memory = MemoryConfig(budget_gb=16.0, floor_gb=0.0)
    cfg.engine = EngineConfig(prompt_cache_mb=0.0, dequantize_on_cpu=dequantizes(), **engine)
    server, port = create_server("127.0.0.1:0", cfg)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield server, rpc.InferenceStub(ch)
    finally:
        server.stop(0)


@contextmanager
def mlx_server(model: Path, tmp: Path) -> Iterator[str]:
    """`mlx_lm.server` in a subprocess (batching on, prompt cache off); yields its base URL."""
    port = free_port()
    cmd = [PY, "-m", "mlx_lm.server", "--model", str(model), "--port", str(port),
           "--prompt-cache-size", "0", "--log-level", "WARNING"]
    with process(cmd, tmp / "mlx-server.log") as proc:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlx_lm.server did not start: {_tail(tmp)}") from None
                time.sleep(0.2)
        yield url


@contextmanager
def process(cmd: list[str], logfile: Path) -> Iterator[subprocess.Popen]:
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=server_env(),
                                cwd=REPO, start_new_session=True)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(tmp: Path) -> str:
    return " | ".join(p.read_text(errors="replace")[-600:] for p in tmp.glob("*.log"))


def wait_grpc(target: str, proc: subprocess.Popen, logfile: Path) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + 120
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                return
            except grpc.RpcError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"inference-node did not start: "
                                       f"{logfile.read_text(errors='replace')[-800:]}") from None
                time.sleep(0.2)
