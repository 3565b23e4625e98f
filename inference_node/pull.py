"""`inference-node pull REPO_ID [--name NAME]`: download an MLX model from the hub into the store.

Needs network access to the hub; without it, it fails with a message saying so and leaves no
partial folder behind (the download goes to a temp folder that is renamed into place at the end).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from inference_node.models import store_dir

ALLOW = ["*.json", "*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]


def pull(repo_id: str, name: str, store: Path) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    dest = store / name
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; remove it or pick another --name")
    store.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=store))
    try:
        snapshot_download(repo_id, local_dir=tmp, allow_patterns=ALLOW)
        if not (tmp / "config.json").exists():
            raise ValueError(f"{repo_id} has no config.json: it is not an MLX model repository")
        os.replace(tmp, dest)
        return dest
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise ConnectionError(
            f"could not download {repo_id} from the hub ({str(e).splitlines()[0]}). This "
            "needs network access to the hub; on a closed network copy the model folder into "
            f"{store} or import a GGUF with `inference-node import-gguf`"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="inference-node pull")
    p.add_argument("repo_id")
    p.add_argument("--name")
    p.add_argument("--store", type=Path, default=None)
    args = p.parse_args(argv)
    name = args.name or args.repo_id.rstrip("/").split("/")[-1].lower()
    try:
        dest = pull(args.repo_id, name, args.store or store_dir())
    except (ConnectionError, FileExistsError, ValueError) as e:
        print(f"inference-node pull: {e}", file=sys.stderr)
        return 3 if isinstance(e, ConnectionError) else 2
    print(dest)
    return 0
