"""The agent node's configuration: `agent-node.toml`.

Every key has a default; an unknown key is an error naming the key and the file. Example:

    [inference]
    target = "127.0.0.1:50051"        # direct mode: no tunnel (the one-box setup)
    coder = ["deepseek-v4-flash", "qwen3.6-27b"]   # fallback chain, first that serves wins
    vision = ["qwen3-vl-4b"]

    [tunnel]
    enabled = true
    host = "studio.local"
    user = "studio-coder"
    identity_file = "~/.ssh/studio_coder_ed25519"
    known_hosts = "~/.config/studio-coder/known_hosts"
    remote_port = 50051

Each section belongs to one module: [inference] client.py, [tunnel] tunnel.py, [qa] qa/,
[loop] loop/, [sandbox] sandbox/, [bridge] bridge.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from studio_common.paths import studio_home
from studio_common.tomlconf import ConfigError, load_file

__all__ = ["DEFAULT_CONFIG", "AgentConfig", "ConfigError", "load_config", "load_default_config",
           "record_key_path", "studio_home"]


def record_key_path() -> Path:
    """The key that signs run records: only agent-node reads it, never the coder's sandbox."""
    return Path(os.environ.get("STUDIO_CODER_KEY", "~/.config/studio-coder/record.key")
                ).expanduser()


@dataclass
class InferenceSection:
    target: str = "127.0.0.1:50051"  # where gRPC is reached (the tunnel's local end when enabled)
    coder: list[str] = field(default_factory=list)  # fallback chain; empty: the server's default
    vision: list[str] = field(default_factory=list)  # empty: describe is skipped, said plainly
    timeout_s: float = 600.0  # deadline for a whole Chat or Describe stream
    call_timeout_s: float = 30.0  # deadline for ListModels, GetMemory, LoadModel, UnloadModel
    connect_timeout_s: float = 10.0  # deadline for health checks (`agent-node status`)


@dataclass
class TunnelSection:
    enabled: bool = False
    host: str = ""
    port: int = 22
    user: str = ""
    identity_file: str = ""
    known_hosts: str = ""
    trust_on_first_use: bool = False  # true: an unknown host key is added to known_hosts once
    allow_agent: bool = False  # true: also offer the ssh-agent's keys
    look_for_keys: bool = False  # true: also offer ~/.ssh/id_* keys
    remote_host: str = "127.0.0.1"
    remote_port: int = 50051
    local_port: int = 0  # 0: a free port, chosen once and kept across rebuilds
    connect_timeout_s: float = 5.0  # TCP connect + SSH handshake + auth, per attempt
    keepalive_s: float = 5.0  # SSH-level keepalive on the transport
    probe_interval_s: float = 2.0  # a gRPC health Check through the tunnel this often
    probe_timeout_s: float = 1.0
    probe_failures: int = 2  # this many failed probes in a row: force-stop and rebuild
    backoff_start_s: float = 1.0
    backoff_factor: float = 1.6
    backoff_jitter: float = 0.2
    backoff_max_s: float = 30.0
    # Run once per SSH connection so sshd turns Nagle off on its end: OpenSSH before 10.0 does
    # that only when a session runs a command, and a forward-only connection otherwise holds
    # the first token of every stream for the client's delayed ACK (~40 ms). "" skips it.
    nodelay_command: str = "true"


@dataclass
class QASection:
    browser: str = ""  # executable; empty: $STUDIO_CODER_BROWSER, system Chromium, Playwright's
    desktop: list[int] = field(default_factory=lambda: [1280, 800])
    phone: list[int] = field(default_factory=lambda: [390, 844])
    phone_scale: float = 3.0  # device_scale_factor of the phone viewport
    screenshot_scale: str = "css"  # css: one image pixel per CSS pixel; device: x phone_scale
    settle_ms: int = 300  # quiet time after load before measuring
    settle_max_ms: int = 3000  # cap on waiting for requests and short timers to finish
    timer_window_ms: int = 2000  # setTimeout calls up to this delay are waited for
    idle_ms: int = 250  # no request in flight for this long counts as network idle
    min_font_px: float = 12.0  # text rendered smaller than this on the phone is a fact
    timeout_s: float = 30.0  # navigation and load
    server_timeout_s: float = 20.0  # how long a started page server gets to answer
    judge_attempts: int = 3  # malformed judge replies are retried this many times in all
    # max_tokens of one judge reply (reasoning and answer); 0: the server's default, which for a
    # model that does not reason is what the verdict's schema allows (inference_node/service.py).
    # The answer itself is bounded by its schema (agent_node/schemas.py), so it always ends.
    judge_max_tokens: int = 0


@dataclass
class LoopSection:
    max_rounds: int = 3
    # Stop before a fix round whose coder would get the last round's brief again: the last
    # round left the checkout as the round before it did and failed for the same reasons.
    # Decoding greedily (the coder does unless retry_temperature is set), it would give the
    # same replies and the same result.
    stop_when_stalled: bool = True
    coder_max_turns: int = 30
    coder_max_tokens: int = 200_000  # tokens the coder generates per round (with reasoning)
    coder_wall_s: float = 900.0
    # max_tokens of one coder reply; 0: the server's default (32k). Its tool call is bounded
    # by the tool's schema (agent_node.schemas.bounded_tool), reasoning only by this.
    coder_reply_tokens: int = 0
    tool_timeout_s: float = 120.0
    test_cmd: str = ""  # empty: detected from the repo (pytest, npm test, make test)
    test_timeout_s: float = 600.0  # the gate's test command; its process group is killed after
    output_limit: int = 12_000  # characters a tool result keeps (head + tail)
    # max_tokens of a classification/spec/review reply (reasoning and answer); 0: the server's
    # default: 32k, or for a model that does not reason what the schema allows. The answer
    # itself is bounded by its schema (agent_node/schemas.py).
    json_max_tokens: int = 0
    json_retries: int = 2  # re-asks when a classification or verdict is not valid JSON
    # What the coder is shown and told as it works (agent_node/loop/context.py, coder.py).
    # Off by default until the task bench shows they raise the pass rate: on Qwen2.5-Coder 0.5B
    # (8 tasks) they solved none either way and took 3.5x the time (README, Benchmarks).
    brief_chars: int = 0  # files shown whole in the brief up to this many chars; 0: a list
    tests_first: bool = False  # run the test command before round 1; its output in the brief
    test_after_edit: bool = False  # after each edit/write, run it and append the result
    finish_needs_change: bool = False  # refuse finish while nothing changed (a change task)
    # A call identical to the one before it is not run again; with coder = "files", a reply
    # that gives back the files the reply before it gave ends the round.
    refuse_repeats: bool = False
    edit_first: bool = False  # with brief_chars > 0, the first call may only be edit or write
    ui_page: str = ""  # page the gate serves and checks for UI work; empty: the classifier's
    # How the coder changes files: "tools" (read, edit, write, bash..., then finish; coder.py)
    # or "files" (each reply rewrites whole files, and the loop runs the tests and asks again
    # while they fail; files_coder.py). "files" shows the files in the brief, up to brief_chars
    # or FILES_BRIEF_CHARS when that is 0.
    coder: Literal["tools", "files"] = "tools"
    # With coder = "files": the temperature of a coder's second and later replies in a round
    # (top_p 0.8, a seed per turn, so a run repeats); 0: greedy, which gives a small model's
    # rejected reply back word for word. A round's first reply is greedy (but see
    # retry_from_start).
    retry_temperature: float = 0.0
    # With coder = "files": a name a reply's lines read that no file of the repository defines,
    # or an attribute a method reads that its class never sets, is asked for alone, and the
    # loop puts the definition the model writes into the file or the class
    # (agent_node/loop/define.py).
    define_missing: bool = False
    # With coder = "files": what a reply's Python file left out that the file had (a class,
    # function, method, assignment or the docstring) and the task does not name is put back
    # before the file is written (agent_node/loop/keep.py). To have one deleted, name it.
    keep_definitions: bool = False
    # With coder = "files": when a reply changes nothing, the functions the task names in
    # backticks are asked for afresh, once a round, shown with their bodies left out, and what
    # the model writes replaces them (agent_node/loop/rewrite.py).
    rewrite_named: bool = False
    # The calls and commands the task writes out with their result ("`mean([2, 4])` should be
    # 3.0", "`python greet.py Ada --shout` prints `HELLO, ADA!`") are run on every change, in
    # the sandbox: the gate fails a change that gets one wrong, and the files coder is shown
    # it with the tests' output. With rewrite_named too, a reply that gets one wrong has the
    # task's functions asked for afresh (agent_node/loop/examples.py).
    task_examples: bool = False
    # A round whose change fails the tests or the task's examples is undone before the next:
    # that round's coder starts again from the start, told what was wrong with the attempt,
    # instead of fixing it in place. With coder = "files" and retry_temperature, its first
    # reply is sampled too: a fresh draw, not round 1's greedy reply again.
    retry_from_start: bool = False
    # A round whose change fails the visual checks: the page's stylesheet is asked for on its
    # own before the next round, told what the checks found, and the rules the model writes
    # are merged into it, for the next coder to start from (agent_node/loop/restyle.py).
    restyle: bool = False
    # What the code review's verdict does once the gate passed. "binding": a fail fails the
    # round and its fixes go to the next coder. "advisory": the review still runs and its
    # verdict and reasons go to the record and to you at approval, but a change the gate passed
    # passes the round; only a test change the review calls unasked still fails it. For a
    # small orchestrator: the 1.5B's own review refused right fixes (README, Benchmarks).
    review: Literal["binding", "advisory"] = "binding"

    def stops_when_stalled(self) -> bool:
        """`stop_when_stalled`, where it applies: a fresh coder given the same brief on the
        same checkout does the same, its replies greedy (the files coder samples a round's
        later replies at retry_temperature, seeded by round, so its rounds can differ)."""
        return self.stop_when_stalled and not (self.coder == "files"
                                               and self.retry_temperature > 0)


@dataclass
class SandboxSection:
    """Where the coder's commands (its bash tool and the gate's test command) run.

    enabled = false runs them with no sandbox at all: they can then reach your repository,
    every file you can, the network and the run records, and every run says so.
    """

    enabled: bool = True  # no sandbox available: commands are refused unless this is false
    network: bool = False  # true: commands reach the network (and Unix sockets)
    memory_mb: int = 4096  # per command (cgroup where possible, else per process); 0: none
    # Made invisible too, beside $STUDIO_CODER_HOME, the config folder and the record key.
    hide: list[str] = field(default_factory=lambda: [
        "~/.ssh", "~/.gnupg", "~/.aws", "~/.azure", "~/.config/gcloud", "~/.kube", "~/.docker",
        "~/.netrc", "~/.git-credentials", "~/.pypirc", "~/.npmrc"])


@dataclass
class BridgeSection:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""  # empty: the one in token_file, generated (0600) on first use
    token_file: str = ""  # empty: ~/.config/studio-coder/bridge-token
    allowed_hosts: list[str] = field(default_factory=list)  # Host names beyond the loopback
    #   ones, "name" (with the bound port) or "name:port", e.g. for an SSH forward on another port
    max_body_mb: float = 32.0  # a larger request body gets 413


@dataclass
class AgentConfig:
    inference: InferenceSection = field(default_factory=InferenceSection)
    tunnel: TunnelSection = field(default_factory=TunnelSection)
    qa: QASection = field(default_factory=QASection)
    loop: LoopSection = field(default_factory=LoopSection)
    sandbox: SandboxSection = field(default_factory=SandboxSection)
    bridge: BridgeSection = field(default_factory=BridgeSection)
    source: str = "built-in defaults"


DEFAULT_CONFIG = Path("~/.config/studio-coder/agent-node.toml")  # where Ansible renders it


def load_default_config(path: str | Path | None) -> AgentConfig:
    """The file given with --config, else DEFAULT_CONFIG when it exists, else the defaults.

    Every agent-node command reads its configuration through this one function.
    """
    if path:
        return load_config(Path(path).expanduser())
    default = DEFAULT_CONFIG.expanduser()
    return load_config(default if default.exists() else None)


def load_config(path: Path | None) -> AgentConfig:
    """Read `path` (or the built-in defaults when None)."""
    if path is None:
        return AgentConfig()
    return load_file(AgentConfig, path, "agent-node")
