"""Loading and unloading models on the engine thread, for `Engine` (engine.py).

A load is admitted first (evicting what admission names), then measured: what MLX gained
corrects the footprint's estimate. A coder model with a draft loads its draft next and pairs
them for speculative decoding. The engine keeps the seams distributed/ overrides (`footprint`,
`_load_coder`, `_unload`) and these functions call through them.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import TYPE_CHECKING, Any

import mlx.core as mx

from inference_node import mlx_compat, speculative, vision
from inference_node.errors import InferenceError, LoadFailed, ModelBusy
from inference_node.jobs import LoadedModel
from inference_node.models import CatalogModel

if TYPE_CHECKING:
    from inference_node.engine import Engine

log = logging.getLogger("inference_node.engine")


def load(engine: Engine, entry: CatalogModel) -> tuple[LoadedModel, list[str]]:
    """Admit, evict what admission names, load, then correct the estimate by measurement;
    then the model's draft, if it has one and it fits."""
    if entry.name in engine.loaded:
        return engine.loaded[entry.name], []
    fp = engine.footprint(entry)
    estimated = fp.resident_bytes
    victims = list(engine.admission.admit_load(entry.name, estimated, pinned=entry.pinned))
    for v in victims:
        log.info("evicting %s to make room for %s", v, entry.name)
        engine._unload(v)
    mx.synchronize()
    before = mx.get_active_memory()
    t0 = time.perf_counter()
    try:
        if not entry.is_vision:
            mlx_compat.require()
        lm = load_vision(entry) if entry.is_vision else engine._load_coder(entry)
    except InferenceError:
        engine.admission.load_failed(entry.name)
        raise
    except Exception as e:
        engine.admission.load_failed(entry.name)
        raise LoadFailed(f"could not load {entry.name} from {entry.path}: {e}",
                         model=entry.name) from e
    mx.synchronize()
    # What MLX gained over the load, but never less than the weights the model holds: an
    # array freed meanwhile (a finished request's KV, garbage from an earlier model) would
    # otherwise be subtracted from this one's measurement.
    lm.measured_bytes = max(held_bytes(lm.model), mx.get_active_memory() - before)
    lm.estimated_bytes = estimated
    lm.kv_per_token = fp.kv_per_token
    lm.kv_fixed_bytes = fp.kv_fixed_bytes
    engine.admission.loaded(entry.name, estimated, lm.measured_bytes)
    engine.loaded[entry.name] = lm
    log.info(
        "loaded %s in %.1fs: estimated %.1f MiB (weights + overhead), measured %.1f MiB",
        entry.name, time.perf_counter() - t0, estimated / 2**20, lm.measured_bytes / 2**20,
    )
    victims += attach_draft(engine, lm)
    return lm, victims


def attach_draft(engine: Engine, lm: LoadedModel) -> list[str]:
    """Load `lm`'s draft model (admitted like any load) and pair them; a draft that
    cannot load leaves `lm` decoding without one, and the log says why. With prompt lookup
    there is nothing to load: `lm` is checked for a KV cache it can roll back."""
    if lm.entry.prompt_lookup and not lm.entry.is_vision:
        if speculative.rolls_back(lm):
            lm.lookup = True
            log.info("%s: speculative decoding with prompt lookup, up to %d tokens a step, "
                     "while it runs one request alone", lm.name, engine.cfg.engine.lookup_tokens)
        else:
            # a warning where the config asked for it; by default, one line of information
            log.log(logging.WARNING if lm.entry.lookup_asked else logging.INFO,
                    "%s decodes without prompt lookup: its KV cache cannot be rolled back "
                    "(sliding windows or recurrent state), which speculative decoding needs",
                    lm.name)
    draft_entry = engine.drafts(lm.name) if not lm.entry.is_vision else None
    if draft_entry is None:
        return []
    try:
        draft, victims = load(engine, draft_entry)
        speculative.check_pair(lm, draft)
    except InferenceError as e:
        log.warning("%s decodes without speculative decoding: its draft %s cannot be "
                    "used: %s", lm.name, draft_entry.name, e)
        return []
    if lm.name not in engine.loaded:  # admission made room for the draft with lm itself
        log.warning("%s was evicted to load its draft %s; it loads again without one",
                    lm.name, draft.name)
        return victims
    lm.draft = draft
    log.info("%s: speculative decoding with %s drafting %d tokens a step while it runs "
             "one request alone", lm.name, draft.name, engine.cfg.engine.draft_tokens)
    return victims


def load_vision(entry: CatalogModel) -> LoadedModel:
    model, processor, tokenizer = vision.load(str(entry.path))
    return LoadedModel(entry=entry, model=model, tokenizer=tokenizer, processor=processor)


def unload(engine: Engine, name: str) -> bool:
    """Drop `name` from memory and from admission; False if it is not loaded. ModelBusy while
    requests are in flight on it; models it drafts for decode without it from now."""
    lm = engine.loaded.get(name)
    if lm is None:
        return False
    busy = lm.busy + sum(1 for j in engine._vision_jobs if j.model == name)
    if busy:
        raise ModelBusy(f"{name} has {busy} requests in flight; unload it when they finish",
                        model=name, in_flight=busy)
    for other in engine.loaded.values():  # models it drafts for decode without it from now
        if other.draft is lm:
            if other.spec is not None:
                speculative.hand_to_batch(engine, other)
            other.draft = None
            log.info("%s decodes without speculative decoding: its draft %s is unloaded",
                     other.name, name)
    del engine.loaded[name]
    engine.prompt_cache.drop(name)
    del lm
    gc.collect()
    mx.clear_cache()  # memory freed is memory returned
    engine.admission.unloaded(name)
    log.info("unloaded %s", name)
    return True


def held_bytes(model: Any) -> int:
    """Bytes of the arrays a loaded model holds (its parameters)."""
    from mlx.utils import tree_flatten

    leaves: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    return sum(int(v.nbytes) for _, v in leaves)
