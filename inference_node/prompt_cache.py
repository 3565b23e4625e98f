"""The prompt cache: KV of earlier requests, reused by the next request that shares a prefix.

An agent's next turn repeats its whole conversation, and every fresh coder starts with the same
system prompt and tool schemas. Two stores serve them:

- the LRU (mlx-lm's LRUPromptCache): each finished request's KV, evicted least recently used
  first when `max_bytes` is reached;
- pinned prefixes: the system part of a prompt (system messages and tool schemas, up to where
  the first user message starts), computed once and kept while the model is loaded, out of the
  LRU's reach; and the part a prompt shares with another request's prompt that went on
  differently (`shared_prefix`): instructions a client sends at the start of every call of a
  kind in a user message (as our orchestrator's review and classify did before they became
  system parts), or a task's brief that a later round sends again with more after it. They are
  bounded too (`pinned_bytes`), so a client that varies its prompts on every call cannot fill
  memory with them: a shared part goes first, the least recently used of them, and a system part
  only for another system part. (Every task's brief pinned as a shared part, a 22-task run
  pushed out the classify call's system part, used by every task, before its last task.)

`fetch` answers with the longer of the two, and says why tokens it has seen before were not
served (`Miss`): an earlier sequence that is gone (evicted), or one this prompt parts from
(the same text tokenized differently, reasoning dropped from a reply, or an earlier message
rendered differently). `history` remembers the token ids of recent sequences for that; it
holds no KV.
"""

from __future__ import annotations

import copy
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference_node import mlx_compat
from inference_node.mlx_compat import Cache

HISTORY = 48  # sequences remembered per model to explain misses (token ids only)
WINDOW = 24  # tokens of text shown on each side of a miss


@dataclass
class Miss:
    """Why `tokens` prompt tokens seen before were computed again."""

    cause: str  # evicted | retokenized | reasoning_dropped | rerendered | cold | off
    tokens: int  # tokens a sequence seen before shared with this prompt beyond what was served
    at: int = 0  # where this prompt parts from that sequence (or where serving stopped)
    seen: str = ""  # that sequence's text from `at` on (a window)
    now: str = ""  # this prompt's text from `at` on (a window)

    def describe(self) -> str:
        what = {
            "evicted": "a sequence holding them was evicted from the prompt cache",
            "retokenized": "the same text as before, tokenized differently",
            "reasoning_dropped": "the reasoning of an earlier reply was left out",
            "rerendered": "an earlier part of the conversation was rendered differently",
            "cold": "nothing cached shares it",
            "off": "the prompt cache is off",
        }[self.cause]
        out = f"{self.tokens} tokens recomputed at {self.at}: {what}"
        if self.seen or self.now:
            out += f" (cached {self.seen!r}, now {self.now!r})"
        return out


@dataclass
class Lookup:
    cache: Cache | None  # a copy: the caller may extend it
    rest: list[int]  # the prompt tokens still to run
    cached: int  # prompt tokens served
    pinned: int = 0  # of which from a pinned prefix
    miss: Miss | None = None


@dataclass
class _Seen:
    tokens: np.ndarray
    prompt: int  # how many of them were the prompt (the rest, the reply)


@dataclass
class _Pin:
    tokens: np.ndarray
    cache: Cache
    nbytes: int
    system: bool  # a prompt's system part, not a part shared with another prompt


@dataclass
class Stats:
    lookups: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    pinned_tokens: int = 0
    misses: dict[str, int] = field(default_factory=dict)  # cause -> tokens recomputed


class PromptCache:
    """`lru` is mlx-lm's LRUPromptCache (or the distributed mirror of one); `decode` turns
    token ids into text for the misses' windows, per model."""

    def __init__(self, lru: Any, max_bytes: int, pinned_bytes: int,
                 decode: Callable[[str, list[int]], str] | None = None,
                 think_tokens: Callable[[str], tuple[int, int] | None] | None = None) -> None:
        self.lru = lru
        self.max_bytes = max_bytes
        self.pinned_bytes = pinned_bytes if max_bytes > 0 else 0
        self.decode = decode
        self.think_tokens = think_tokens
        self._pins: dict[str, OrderedDict[bytes, _Pin]] = {}
        self._history: dict[str, deque[_Seen]] = {}
        self.stats: dict[str, Stats] = {}

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    # ------------------------------------------------------------ lookups

    def fetch(self, model: str, tokens: list[int], *, account: bool = True,
              continues: bool = True) -> Lookup:
        """The longest cached prefix of `tokens` (a copy) and what is left to run.

        The whole prompt is never served: its last token is always run, so the model
        produces the logits of the first new token. `continues`: the prompt carries an earlier
        reply on; a first turn (False) that parts from a cached sequence is not a miss.
        """
        if not self.enabled:
            return self._counted(model, tokens, Lookup(None, tokens, 0, miss=Miss(
                "off", 0)), account)
        cache, rest = self.lru.fetch_nearest_cache(model, tokens)
        served = len(tokens) - len(rest) if cache is not None else 0
        pinned = 0
        pin = self._best_pin(model, tokens)
        if pin is not None and pin[1] > served:
            cache, pinned = copy.deepcopy(pin[0].cache), pin[1]
            if pinned < mlx_compat.cache_tokens(cache):
                mlx_compat.trim(cache, mlx_compat.cache_tokens(cache) - pinned)
            served, rest = pinned, tokens[pinned:]
        if cache is not None and not rest:  # all of it cached: run the last token again
            if not mlx_compat.can_trim(cache):
                cache, served, rest = None, 0, tokens
            else:
                mlx_compat.trim(cache, 1)
                served, rest = len(tokens) - 1, tokens[-1:]
        if cache is None:
            served, pinned = 0, 0
        found = Lookup(cache, rest, served, min(pinned, served))
        found.miss = self._explain(model, tokens, served, continues)
        return self._counted(model, tokens, found, account)

    def _counted(self, model: str, tokens: list[int], found: Lookup, account: bool) -> Lookup:
        if account:
            s = self.stats.setdefault(model, Stats())
            s.lookups += 1
            s.prompt_tokens += len(tokens)
            s.cached_tokens += found.cached
            s.pinned_tokens += found.pinned
            if found.miss is not None and found.miss.tokens:
                s.misses[found.miss.cause] = s.misses.get(found.miss.cause, 0) + found.miss.tokens
        return found

    def _best_pin(self, model: str, tokens: list[int]) -> tuple[_Pin, int] | None:
        pins = self._pins.get(model)
        if not pins:
            return None
        arr = np.asarray(tokens, dtype=np.int64)
        best: tuple[_Pin, int] | None = None
        for key, pin in pins.items():
            n = _common_prefix(pin.tokens, arr)
            if n < len(pin.tokens) and not mlx_compat.can_trim(pin.cache):
                continue
            if n and (best is None or n > best[1]):
                best = (pin, n)
                best_key = key
        if best is not None:
            pins.move_to_end(best_key)
        return best

    # ------------------------------------------------------------ storing

    def insert(self, model: str, tokens: list[int], cache: Cache, prompt_tokens: int) -> None:
        """A finished sequence's KV: `tokens` are what it holds, the first `prompt_tokens` of
        them the prompt."""
        self.remember(model, tokens, prompt_tokens)
        if self.enabled:
            self.lru.insert_cache(model, tokens, cache)

    def remember(self, model: str, tokens: list[int], prompt_tokens: int) -> None:
        seen = self._history.setdefault(model, deque(maxlen=HISTORY))
        seen.append(_Seen(np.asarray(tokens, dtype=np.int64), prompt_tokens))

    def pin(self, model: str, tokens: list[int], cache: Cache, system: bool = True) -> bool:
        """Keep `cache` (the KV of `tokens`, a prompt's system part, or with `system` False a
        part it shares with another prompt) while the model is loaded. To make room the
        model's least recently used shared parts go first, then, for a system part only, its
        least recently used system parts. False when pins are off, it alone is larger than
        their share, or a shared part finds no room without a system part going."""
        nbytes = mlx_compat.cache_nbytes(cache)
        if not self.pinned_bytes or nbytes > self.pinned_bytes or not tokens:
            return False
        pins = self._pins.setdefault(model, OrderedDict())
        key = np.asarray(tokens, dtype=np.int64).tobytes()
        if key in pins:
            pins[key].system |= system
            pins.move_to_end(key)
            return True
        while pins and self.pinned_nbytes() + nbytes > self.pinned_bytes:
            victim = next((k for k, p in pins.items() if not p.system), None)
            if victim is None:
                if not system:
                    return False
                victim = next(iter(pins))
            del pins[victim]
        pins[key] = _Pin(np.asarray(tokens, dtype=np.int64), cache, nbytes, system)
        return True

    def shared_prefix(self, model: str, tokens: list[int]) -> int:
        """How many tokens `tokens` shares with the prompt of another request seen recently
        that went on differently inside its prompt: the same opening, then another task or
        more. 0 when none did (a new text, or a conversation carrying its own reply on)."""
        seen = self._history.get(model)
        if not seen:
            return 0
        arr = np.asarray(tokens, dtype=np.int64)
        best = 0
        for s in seen:
            n = _common_prefix(s.tokens, arr)
            if best < n < min(s.prompt, len(arr) - 1):
                best = n
        return best

    def pinned_len(self, model: str, tokens: list[int]) -> int:
        """How much of `tokens` the pins hold (their order untouched)."""
        arr = np.asarray(tokens, dtype=np.int64)
        return max((min(_common_prefix(p.tokens, arr), len(p.tokens))
                    for p in self._pins.get(model, {}).values()), default=0)

    def has_pin(self, model: str, tokens: list[int]) -> bool:
        pins = self._pins.get(model)
        return bool(pins) and np.asarray(tokens, dtype=np.int64).tobytes() in pins  # type: ignore[operator]

    def pinned_nbytes(self) -> int:
        return sum(p.nbytes for pins in self._pins.values() for p in pins.values())

    def pins(self, model: str) -> list[int]:
        """The lengths of `model`'s pinned prefixes, most recently used last."""
        return [len(p.tokens) for p in self._pins.get(model, {}).values()]

    def drop(self, model: str) -> None:
        """Forget `model`'s pins and history and empty the LRU (its entries are per model)."""
        self._pins.pop(model, None)
        self._history.pop(model, None)
        self.lru.trim_to(n_sequences=0)

    # ------------------------------------------------------------ explaining misses

    def _explain(self, model: str, tokens: list[int], served: int, continues: bool
                 ) -> Miss | None:
        """Why the tokens of `tokens` after `served` that an earlier sequence shared were not
        served; None when none was seen before (new text), or when a first turn (not
        `continues`) parts from one: it has no earlier part to render differently."""
        seen = self._history.get(model)
        if not seen:
            return None
        arr = np.asarray(tokens, dtype=np.int64)
        best: _Seen | None = None
        best_n = 0
        for s in seen:
            n = _common_prefix(s.tokens, arr)
            if n > best_n:
                best, best_n = s, n
        if best is None:
            return None
        if best_n > served + 1:  # it held more than was served: it is gone
            return Miss("evicted", best_n - served, served, *self._windows(model, best, arr,
                                                                            served))
        if best_n >= len(best.tokens) or best_n >= len(arr) - 1 or not continues:
            return None  # the prompt carries on from all of it, or is a first turn
        if best_n < best.prompt and (len(arr) <= len(best.tokens) or best_n < best.prompt // 2):
            return None  # parts early in that prompt and is no longer: another conversation
        # The prompt parts from what was seen at best_n: say how.
        lost = len(best.tokens) - best_n
        seen_text, now_text = self._windows(model, best, arr, best_n)
        cause = "rerendered"
        if best_n >= best.prompt:  # inside the reply the model generated
            cause = "retokenized" if self._same_text(model, best, arr, best_n) else "rerendered"
            if cause == "rerendered" and self._in_reasoning(model, best, best_n):
                cause = "reasoning_dropped"
        return Miss(cause, lost, best_n, seen_text, now_text)

    def _windows(self, model: str, seen: _Seen, now: np.ndarray, at: int) -> tuple[str, str]:
        if self.decode is None:
            return "", ""
        return (self.decode(model, seen.tokens[at:at + WINDOW].tolist()),
                self.decode(model, now[at:at + WINDOW].tolist()))

    def _same_text(self, model: str, seen: _Seen, now: np.ndarray, at: int) -> bool:
        """Whether the rest of the earlier reply reads the same in the new prompt."""
        if self.decode is None:
            return False
        before = self.decode(model, seen.tokens[at:].tolist())
        after = self.decode(model, now[at:at + len(seen.tokens) - at + WINDOW].tolist())
        return bool(before) and after.startswith(before)

    def _in_reasoning(self, model: str, seen: _Seen, at: int) -> bool:
        marks = self.think_tokens(model) if self.think_tokens is not None else None
        if marks is None:
            return False
        start, end = marks
        reply = seen.tokens[seen.prompt:at + 1].tolist()
        return start in reply or (end in seen.tokens[seen.prompt:].tolist()
                                  and end not in reply)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n
