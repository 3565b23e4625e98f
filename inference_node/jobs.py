"""What the engine thread works on: loaded models and the requests in flight.

A `Job` is one Chat or Describe request after validation and admission; the engine thread owns
it from `Engine.submit` until its last event. A `LoadedModel` is a model in memory with its
batch, the jobs in it, those waiting to join it, and (for a model with a draft) the one job
decoding speculatively.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from inference_node.chat import TextRouter
from inference_node.mlx_compat import Batch, LogitsProcessor, Sampler
from inference_node.models import CatalogModel

if TYPE_CHECKING:
    from inference_node.speculative import Speculation

DONE = object()  # sentinel closing a job's event queue


class Held(Protocol):
    """A reservation as the engine sees it (Reservation, or a distributed group's)."""

    model: str
    bytes: int
    released: bool


class Ledger(Protocol):
    """What the engine asks of admission (Admission, or a distributed group's RankedAdmission)."""

    def admit_load(self, name: str, footprint_bytes: int, *, pinned: bool) -> list[str]: ...
    def loaded(self, name: str, estimated_bytes: int, measured_bytes: int) -> None: ...
    def load_failed(self, name: str) -> None: ...
    def unloaded(self, name: str) -> None: ...
    def touch(self, name: str) -> None: ...
    def try_grow(self, reservation: Any, extra_bytes: int) -> bool: ...


@dataclass
class LoadedModel:
    entry: CatalogModel
    model: Any  # an mlx-lm (coder) or mlx-vlm (vision) nn.Module
    tokenizer: Any  # mlx-lm TokenizerWrapper (coder) or the processor's tokenizer (vision)
    processor: Any = None  # vision models: the mlx-vlm processor
    batch: Batch | None = None  # coder models
    estimated_bytes: int = 0
    measured_bytes: int = 0
    kv_per_token: int = 0
    kv_fixed_bytes: int = 0  # per request: sliding windows, linear-attention state
    active: dict[int, Job] = field(default_factory=dict)  # batch uid -> job
    # Jobs whose padding into the running batch does not fit yet, in arrival order.
    waiting: deque[Job] = field(default_factory=deque)
    # Speculative decoding: the model that drafts for this one (loaded, same tokenizer), or
    # proposals from each request's own tokens (prompt lookup), and the job decoding so while
    # this model runs no other.
    draft: LoadedModel | None = None
    lookup: bool = False
    spec: Speculation | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def busy(self) -> int:
        return len(self.active) + len(self.waiting) + (1 if self.spec is not None else 0)

    @property
    def decoding(self) -> list[Job]:
        """The jobs it is running: those of its batch, and the one decoding speculatively."""
        return [*self.active.values(), *([self.spec.job] if self.spec is not None else [])]


@dataclass
class Job:
    """One request in flight: what to generate, and where its events go."""

    request_id: str
    model: str
    prompt: list[int]
    max_tokens: int
    router: TextRouter
    sampler: Sampler | None = None
    logits_processors: list[LogitsProcessor] = field(default_factory=list)
    stop_sequences: Any = None  # mlx_compat.stop_sequences(...)
    vision_inputs: dict[str, Any] | None = None  # vision jobs: prompt text, image, processor
    # The prompt's system part (system messages, tool schemas): its KV is pinned in the prompt
    # cache once computed, for every later request that starts the same way. 0: none.
    system_prefix: int = 0
    # The prompt carries an earlier reply on (it holds an assistant message). Only then can a
    # cache miss be an earlier part of its conversation rendered differently; a first turn that
    # parts from a cached sequence is another conversation.
    continues: bool = True
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    queue_seconds: float = 0.0
    t_start: float = 0.0
    t_first: float = 0.0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose KV came from the prompt cache
    # Prompt tokens seen before that were computed again, and why (prompt_cache.Miss)
    recomputed_tokens: int = 0
    recompute_cause: str = ""
    detokenizer: Any = None  # mlx-lm's streaming detokenizer
    stream: Any = None  # vision jobs: the mlx-vlm generator
    reservation: Held | None = None  # held by this job (grown for padding, drafts)
    padding_bytes: int = 0  # what joining the running batch adds beyond the reservations
    seed: int | None = None  # seeds MLX's random state when the job joins the batch
    generated: list[int] = field(default_factory=list)  # tokens emitted so far
    pin_at: int = 0  # a prefix length whose KV is pinned when prefill reaches it (0: none)
    # It started an idle batch and nothing joined before its first token: its time to it
    # measures the prefill rate (Engine.hold_for).
    alone: bool = False
    # Fresh logits processors resuming after `generated` (a grammar's matcher has state), for
    # when the batch is rebuilt after another request's step failed; None: reuse them.
    rebuild_processors: Callable[[], list[LogitsProcessor]] | None = None
    # Speculative decoding: tokens the draft proposed, and how many of them the model kept.
    drafted: int = 0
    accepted: int = 0
    # The batch's KV of it was not its tokens when it was left alone: it stays in the batch
    # (speculative.from_batch).
    batch_only: bool = False

    @property
    def computed_tokens(self) -> int:
        """Prompt tokens this request prefills itself: its prompt less what the cache served."""
        return len(self.prompt) - self.cached_tokens
