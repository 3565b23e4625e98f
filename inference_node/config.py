"""The inference node's configuration: `inference-node.toml`.

Every key has a default; an unknown key is an error naming the key and the file. Example:

    [server]
    host = "127.0.0.1"
    port = 50051

    [memory]
    budget_gb = 90.0          # GiB; unset: the recommended working set minus reserve_gb
    policy = "evict"          # or "refuse"

    [[models]]
    name = "qwen3-coder"
    path = "/opt/studio-coder/models/qwen3-coder"   # or hub = "mlx-community/..."
    role = "coder"
    pinned = true
    context = 65536

Paths: `$STUDIO_CODER_HOME` (default `~/.local/share/studio-coder`) holds `models/` and `runs/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from studio_common.channel import MAX_MESSAGE_BYTES
from studio_common.tomlconf import ConfigError, load_file

DEFAULT_PORT = 50051
DEFAULT_MAX_TOKENS = 32768

DESCRIBE_PROMPT = (
    "You describe screenshots of web pages for someone who cannot see them. Describe only what "
    "is visible: the layout (columns, rows, header, navigation, footer), every piece of visible "
    "text, the colours, and any element that is cut off, overlapping, overflowing the right edge "
    "or hidden. Mention anything that looks broken: missing images, unstyled text, empty areas. "
    "Do not judge the page. Do not say whether it passes, fails, is correct or meets any "
    "requirement; another reviewer decides that from your description."
)


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allow_remote: bool = False
    max_message_mb: int = MAX_MESSAGE_BYTES // (1024 * 1024)
    # Chat and Describe streams open at once; more are refused at once (RESOURCE_EXHAUSTED,
    # reason TOO_MANY_STREAMS). Past the engine's batch they wait for memory and a batch slot.
    max_streams: int = 32
    # Threads kept for everything else (health, GetMemory, ListModels, Load/Unload, refusals),
    # so no number of open streams can starve them.
    control_workers: int = 8
    grace_seconds: float = 30.0


@dataclass
class MemoryConfig:
    """Every *_gb key counts GiB (2**30 bytes) and every *_mb key MiB, as MLX and macOS do."""

    budget_gb: float | None = None  # None: recommended working set (macOS) or RAM × fraction
    reserve_gb: float = 4.0  # kept back from the recommended working set on macOS
    linux_fraction: float = 0.6  # share of total RAM used as the budget on Linux
    policy: str = "evict"  # evict | refuse
    floor_gb: float = 1.0  # below this much available system memory nothing new is admitted
    overhead_mb: float = 64.0  # fixed per-model overhead added to weights + KV
    queue_limit: int = 16
    queue_timeout_s: float = 120.0
    cache_limit_gb: float | None = None  # MLX buffer cache cap; None: 1/8 of the budget
    wired_limit_mb: int = 0  # 0: leave the OS default alone (see docs in README)
    watchdog_interval_s: float = 1.0


@dataclass
class EngineConfig:
    # max_tokens of a request that sets none. A reply under a bounded schema from a model that
    # does not reason gets what the schema allows instead (service.default_max_tokens).
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    # Requests decoded together in one batch; more wait for a slot. 8: at 8 streams on SmolLM2
    # 4 reached 0.65-0.75x mlx_lm.server's throughput (p95 first token 6.6-11 s), 8 reached 0.96x.
    # Admission counts each batch's padding, so a larger batch cannot overcommit memory.
    max_concurrent: int = 8
    # Prompt tokens per prefill step. On the dev CPU a 4k-token prompt reached its first token in
    # 0.74x the time of mlx-lm's stream_generate and mlx_lm.server (step 2048); the step size
    # is the likely reason, not yet isolated.
    prefill_step_size: int = 512
    # Requests sent together are prefilled together: when a request joins while others are still
    # being read and tokenized, the engine waits for them, up to this long, before its next
    # step. One that starts an idle batch waits a fortieth of its expected prefill (at most
    # this) for requests not read yet (engine.HOLD_SHARE). 0: never wait (2 streams sent
    # together then lost one prefill step in three runs of bench/engine.py --concurrency).
    gather_ms: float = 50.0
    # MLX's CPU backend runs quantized matmuls ~12x slower than float32 BLAS at prefill; with no
    # Metal device, quantized coder models are expanded to float32 at load (admission counts it).
    dequantize_on_cpu: bool = True
    # With no Metal device, prefill attention runs through numpy (inference_node/cpu_attention.py):
    # MLX's CPU softmax made up three quarters of a 2k-token prefill on the dev CPU.
    numpy_attention_on_cpu: bool = True
    # One product for each layer's q, k and v projections and one for its gate and up, where the
    # weights are float (inference_node/fused.py): fewer, larger matmuls a decode step.
    fuse_projections: bool = True
    prompt_cache_mb: float = 512.0  # KV kept for prefix reuse; set aside from the budget; 0: off
    # Of prompt_cache_mb, what pinned prefixes may hold: the KV of prompts' system parts (system
    # messages and tool schemas), kept while the model is loaded; 0: none pinned.
    pinned_prefix_mb: float = 128.0
    # Speculative decoding (a model with `draft` in [[models]]): tokens the draft proposes per
    # step of the served model.
    draft_tokens: int = 3
    # ... with prompt lookup instead: at most this many tokens taken from the request's own text
    # per step (fewer after a wrong guess: speculative.next_span). They cost nothing to
    # propose, only to check, so more are proposed than a draft model would. 7: a pass then
    # checks 8 tokens, the most the CPU's small-rows kernel takes in one read of the weights
    # (gemv_forward.c); 8 proposals make 9 rows, which go to OpenBLAS's packing sgemm
    # (`python -m bench.lookup --spans 5,7,8`, bench/results/lookup_spans.json).
    lookup_tokens: int = 7


@dataclass
class DescribeConfig:
    prompt: str = DESCRIBE_PROMPT
    max_pixels: int = 1280 * 1024  # larger images are downscaled to this many pixels
    # Larger images are refused before decoding: read from the header, never decoded. Decoding
    # one holds 5 to 14 bytes a pixel while it runs (PIL's sizes), reserved from the budget.
    max_decode_pixels: int = 50_000_000  # an 8K screen is 33 million
    max_image_mb: float = 20.0  # MiB of PNG or JPEG
    max_tokens: int = 512


@dataclass
class ModelEntry:
    name: str = ""
    path: str = ""  # a local MLX model folder, absolute or relative to $STUDIO_CODER_HOME/models
    hub: str = ""  # a hub id, pulled into the store by `inference-node pull`
    role: str = "coder"  # coder | vision
    pinned: bool = False
    context: int = 0  # 0: the model's own max_position_embeddings
    sharding: str = ""  # across ranks: auto | tensor | pipeline; "": [distributed] sharding
    # Another coder model of [[models]], with the same tokenizer, that drafts tokens for this
    # one (speculative decoding) while it serves one request alone; "": none.
    draft: str = ""
    # Speculative decoding with no draft model: the tokens that followed the last few tokens
    # where they appeared earlier in the request (prompt lookup: a rewritten file, a quoted
    # test), checked by the model at once while it serves one request alone. Unset: on for a
    # coder model with no draft served on one host (greedy output is the same either way);
    # true: the same, and an error where it cannot apply; false: off.
    prompt_lookup: bool | None = None

    def looks_up(self, distributed: bool) -> bool:
        """Whether this model decodes a lone stream with prompt lookup."""
        if self.prompt_lookup is None:
            return self.role == "coder" and not self.draft and not distributed
        return self.prompt_lookup


@dataclass
class DistributedConfig:
    """One model across several hosts through mlx.distributed (see inference_node/distributed).

    Either `ranks` (N local ranks on the ring backend over loopback: one machine, tests) or
    `hostfile` (mlx's hostfile format, ring or JACCL; see `mlx.distributed_config`).
    """

    ranks: int = 0  # > 1: that many local ranks; 0 or 1: a single process (no distribution)
    hostfile: str = ""  # an mlx hostfile; relative paths are relative to this config file
    backend: str = ""  # "": the hostfile's own, else ring; or ring | jaccl | jaccl-ring
    sharding: str = "auto"  # auto (tensor where mlx-lm has it, else pipeline) | tensor | pipeline
    starting_port: int = 32323  # ring: the first of one TCP port per rank and IP
    # A rank that does not finish a step (or a heartbeat) within this long is taken for hung.
    # Above the longest prefill step: prefill_step_size tokens on the slowest host.
    step_timeout_s: float = 10.0
    load_timeout_s: float = 900.0  # the same for a load, where a host reads its shard from disk
    heartbeat_s: float = 1.0  # an idle group checks every rank this often
    budgets_gb: list[float] = field(default_factory=list)  # per rank; []: each host's own
    # After the group fails, the supervisor relaunches it after this delay (doubled on every
    # failed try, up to relaunch_max_s); 0: stay down, answering NOT_SERVING, until restarted.
    relaunch_s: float = 5.0
    relaunch_max_s: float = 120.0
    python: str = ""  # the interpreter on every host; "": this one (same path on each host)

    @property
    def enabled(self) -> bool:
        return self.ranks > 1 or bool(self.hostfile)

    def sharding_of(self, models: list[ModelEntry], name: str) -> str:
        """How `name` is split: its own `sharding`, else this table's."""
        own = next((m.sharding for m in models if m.name == name), "")
        return own or self.sharding


@dataclass
class InferenceConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    describe: DescribeConfig = field(default_factory=DescribeConfig)
    models: list[ModelEntry] = field(default_factory=list)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    source: str = "built-in defaults"


ROLES = ("coder", "vision")
POLICIES = ("evict", "refuse")
SHARDINGS = ("auto", "tensor", "pipeline")
BACKENDS = ("", "ring", "jaccl", "jaccl-ring")


def load_config(path: Path | None) -> InferenceConfig:
    """Read `path` (or the built-in defaults when None) and check it."""
    if path is None:
        return InferenceConfig()
    cfg = load_file(InferenceConfig, path, "inference-node")
    hostfile = Path(cfg.distributed.hostfile).expanduser()
    if cfg.distributed.hostfile and not hostfile.is_absolute():
        cfg.distributed.hostfile = str(path.parent / hostfile)
    validate(cfg)
    return cfg


def validate(cfg: InferenceConfig) -> None:
    where = cfg.source
    if cfg.memory.policy not in POLICIES:
        raise ConfigError(
            f"{where}: memory.policy must be one of {POLICIES}, not {cfg.memory.policy!r}"
        )
    for key in ("max_streams", "control_workers"):
        if getattr(cfg.server, key) < 1:
            raise ConfigError(f"{where}: server.{key} must be at least 1, not "
                              f"{getattr(cfg.server, key)}")
    if cfg.memory.budget_gb is not None and cfg.memory.budget_gb <= 0:
        raise ConfigError(f"{where}: memory.budget_gb must be positive, not {cfg.memory.budget_gb}")
    seen: set[str] = set()
    for i, m in enumerate(cfg.models):
        if not m.name:
            raise ConfigError(f"{where}: models[{i}] has no name")
        if m.name in seen:
            raise ConfigError(f"{where}: model name {m.name!r} appears twice")
        seen.add(m.name)
        if m.role not in ROLES:
            raise ConfigError(
                f"{where}: models.{m.name}.role must be one of {ROLES}, not {m.role!r}"
            )
        if not m.path and not m.hub:
            raise ConfigError(f"{where}: model {m.name!r} needs a path or a hub id")
        if m.sharding and m.sharding not in SHARDINGS:
            raise ConfigError(f"{where}: models.{m.name}.sharding must be one of {SHARDINGS}, "
                              f"not {m.sharding!r}")
    _check_drafts(cfg)
    d = cfg.distributed
    if d.sharding not in SHARDINGS:
        raise ConfigError(f"{where}: distributed.sharding must be one of {SHARDINGS}, "
                          f"not {d.sharding!r}")
    if d.backend not in BACKENDS:
        raise ConfigError(f"{where}: distributed.backend must be one of {BACKENDS[1:]} (or "
                          f"unset for the hostfile's own), not {d.backend!r}")
    if d.ranks < 0:
        raise ConfigError(f"{where}: distributed.ranks must be 0 (off) or more, not {d.ranks}")
    if d.ranks > 1 and d.hostfile:
        raise ConfigError(f"{where}: distributed.ranks and distributed.hostfile both set; "
                          "ranks starts local ranks, hostfile spans hosts: keep one")
    if any(b <= 0 for b in d.budgets_gb):
        raise ConfigError(f"{where}: distributed.budgets_gb must all be positive, "
                          f"not {d.budgets_gb}")
    for key in ("step_timeout_s", "load_timeout_s", "heartbeat_s"):
        if getattr(d, key) <= 0:
            raise ConfigError(f"{where}: distributed.{key} must be positive")


def _check_drafts(cfg: InferenceConfig) -> None:
    where = cfg.source
    e = cfg.engine
    if e.draft_tokens < 1 or e.draft_tokens > 16:
        raise ConfigError(f"{where}: engine.draft_tokens must be 1 to 16, not {e.draft_tokens}")
    if e.lookup_tokens < 1 or e.lookup_tokens > 16:
        raise ConfigError(f"{where}: engine.lookup_tokens must be 1 to 16, not "
                          f"{e.lookup_tokens}")
    if e.pinned_prefix_mb < 0:
        raise ConfigError(f"{where}: engine.pinned_prefix_mb must be 0 (off) or more, not "
                          f"{e.pinned_prefix_mb}")
    by_name = {m.name: m for m in cfg.models}
    for m in cfg.models:
        if m.prompt_lookup:
            _check_lookup(cfg, m)
        if not m.draft:
            continue
        draft = by_name.get(m.draft)
        if draft is None:
            raise ConfigError(f"{where}: models.{m.name}.draft names {m.draft!r}, which is not "
                              f"in [[models]]; add it there (role = \"coder\") or remove draft")
        if m.draft == m.name:
            raise ConfigError(f"{where}: models.{m.name}.draft names the model itself; a draft "
                              "is a smaller model with the same tokenizer")
        if m.role != "coder" or draft.role != "coder":
            raise ConfigError(f"{where}: models.{m.name}.draft: speculative decoding is for "
                              "coder models, and the draft must be one too")
        if cfg.distributed.enabled:
            raise ConfigError(
                f"{where}: models.{m.name}.draft: speculative decoding is not available for a "
                "model split across ranks ([distributed]): every rank would have to run the "
                "draft's steps in lockstep, which the group does not do; remove draft, or "
                "serve the model on one host")


def _check_lookup(cfg: InferenceConfig, m: ModelEntry) -> None:
    where = cfg.source
    if m.draft:
        raise ConfigError(f"{where}: models.{m.name} sets both draft and prompt_lookup; a "
                          "request is checked against one source of proposals: keep one")
    if m.role != "coder":
        raise ConfigError(f"{where}: models.{m.name}.prompt_lookup: speculative decoding is "
                          "for coder models")
    if cfg.distributed.enabled:
        raise ConfigError(
            f"{where}: models.{m.name}.prompt_lookup: speculative decoding is not available "
            "for a model split across ranks ([distributed]); remove prompt_lookup, or serve "
            "the model on one host")
