"""Memory admission per host, for a model split across ranks.

Each host has its own budget (its own unified memory) and its own ledger: one
`admission.Admission` per rank. A load is admitted on every host that holds a part of the
model, each for its part (the `ShardPlan`: weights and KV per rank, worked out from the
headers before loading); a request reserves its KV on every host, each its share. A model too
big for one host but whose parts fit on theirs is admitted; one that does not fit is refused
with every host's numbers.

The engine and the server see the interface of `Admission` with totals (a reservation's
`bytes` is the sum over hosts); this class splits them by the plan. Requests reserve host by
host in rank order, so two requests never wait on each other's hosts.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inference_node.admission import Admission, Reservation
from inference_node.config import MemoryConfig
from inference_node.distributed.sharding import ShardPlan
from inference_node.errors import InferenceError, WouldNotFit
from inference_node.machine import gib


@dataclass
class HostBudget:
    label: str  # "rank 1 on studio-2.local"
    budget_bytes: int
    budget_source: str


@dataclass
class RankedReservation:
    model: str
    bytes: int
    queue_seconds: float
    tokens: int
    parts: list[tuple[int, Reservation]] = field(default_factory=list)
    released: bool = False


class HostLedger(Admission):
    """One host's ledger, with the two undo steps a split model needs across ledgers."""

    def shrink(self, reservation: Reservation, bytes_: int) -> None:
        """Give back `bytes_` of a reservation in flight (undoing a try_grow)."""
        with self._cond:
            if reservation.released or bytes_ <= 0:
                return
            bytes_ = min(bytes_, reservation.bytes)
            reservation.bytes -= bytes_
            self._reserved -= bytes_
            row = self._models.get(reservation.model)
            if row is not None:
                row.kv_reserved_bytes -= bytes_
            self._cond.notify_all()

    def cancel_eviction(self, names: list[str]) -> None:
        """Count `names` again: the load that named them as victims was refused by another
        host's ledger after all."""
        with self._cond:
            for name in names:
                row = self._models.get(name)
                if row is not None:
                    row.evicting = False
            self._cond.notify_all()


def _on(label: str, error: InferenceError) -> InferenceError:
    """The same error, saying which host it is about."""
    again = type(error)(f"on {label}: {error}")
    again.__cause__ = error
    return again


class RankedAdmission:
    def __init__(self, memory: MemoryConfig, source: str, hosts: list[HostBudget], *,
                 local_available: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.memory = memory
        self.labels = [h.label for h in hosts]
        self._readings: list[list[int] | None] = [None] * len(hosts)
        self._lock = threading.Lock()
        self.hosts: list[HostLedger] = []
        for rank, h in enumerate(hosts):
            reader = local_available if rank == 0 else self._reader(rank)
            ledger = HostLedger(memory, source, budget_bytes=h.budget_bytes, clock=clock,
                                available_bytes=reader)
            ledger.budget_source = h.budget_source
            self.hosts.append(ledger)
        self.plans: dict[str, ShardPlan] = {}
        self.measured: dict[str, list[int]] = {}

    # ------------------------------------------------------------ this host, for MLX limits

    @property
    def budget_bytes(self) -> int:
        """Rank 0's own budget: what this process's MLX limits are set from."""
        return self.hosts[0].budget_bytes

    @property
    def budget_source(self) -> str:
        return (f"{self.hosts[0].budget_source}; {len(self.hosts)} hosts, each with its own "
                "budget (GetMemory lists them)")

    # ------------------------------------------------------------ readings from the ranks

    def _reader(self, rank: int) -> Callable[[], int]:
        def read() -> int:
            with self._lock:
                r = self._readings[rank]
            # Unknown until the first heartbeat: do not refuse for want of a reading.
            return r[3] if r is not None and r[3] >= 0 else 1 << 62

        return read

    def update_readings(self, readings: list[list[int]]) -> None:
        """Each rank's [MLX active, peak, cache, system available], from a heartbeat."""
        with self._lock:
            self._readings = [list(r) for r in readings]

    # ------------------------------------------------------------ plans

    def set_plan(self, plan: ShardPlan) -> None:
        if plan.ranks != len(self.hosts):
            raise ValueError(f"a plan for {plan.ranks} ranks, with {len(self.hosts)} hosts")
        self.plans[plan.name] = plan

    def _plan(self, name: str, total_bytes: int = 0) -> ShardPlan:
        plan = self.plans.get(name)
        if plan is not None:
            return plan
        zeros = (0,) * (len(self.hosts) - 1)
        return ShardPlan(name, "", "rank0", (total_bytes, *zeros), (0,) * len(self.hosts),
                         (0,) * len(self.hosts), 0, ((0, 0),) * len(self.hosts))

    def _holders(self, plan: ShardPlan) -> list[int]:
        return [r for r in range(plan.ranks) if plan.weights[r] or plan.kv_per_token[r]
                or plan.kv_fixed[r]]

    # ------------------------------------------------------------ loads

    def admit_load(self, name: str, footprint_bytes: int, *, pinned: bool) -> list[str]:
        plan = self._plan(name, footprint_bytes)
        admitted: list[tuple[int, list[str]]] = []
        for r in self._holders(plan):
            try:
                named = self.hosts[r].admit_load(name, plan.resident(r), pinned=pinned)
            except WouldNotFit as e:
                self._undo(name, admitted)
                raise WouldNotFit(self._refusal(name, plan, r, e)) from None
            except InferenceError as e:
                self._undo(name, admitted)
                raise _on(self.labels[r], e) from None
            admitted.append((r, named))
        victims: list[str] = []  # a victim on one host is unloaded from all of them
        for _, vs in admitted:
            victims += [v for v in vs if v not in victims]
        return victims

    def _undo(self, name: str, admitted: list[tuple[int, list[str]]]) -> None:
        for r, victims in admitted:
            self.hosts[r].load_failed(name)
            self.hosts[r].cancel_eviction(victims)

    def _refusal(self, name: str, plan: ShardPlan, failed: int, error: Exception) -> str:
        rows = []
        for r in self._holders(plan):
            snap = self.hosts[r].snapshot()
            rows.append(f"{self.labels[r]} needs {gib(plan.resident(r))}, "
                        f"{gib(snap['committed_bytes'])} of {gib(snap['budget_bytes'])} committed")
        return (f"{name} ({plan.mode} split over {plan.ranks} ranks) does not fit on "
                f"{self.labels[failed]}: {error}. Per host: {'; '.join(rows)}")

    def loaded(self, name: str, estimated_bytes: int, measured_bytes: int) -> None:
        plan = self._plan(name, estimated_bytes)
        measured = self.measured.get(name) or [measured_bytes] + [0] * (len(self.hosts) - 1)
        for r in self._holders(plan):
            self.hosts[r].loaded(name, plan.resident(r), measured[r])

    def load_failed(self, name: str) -> None:
        for h in self.hosts:
            h.load_failed(name)

    def unloaded(self, name: str) -> None:
        self.measured.pop(name, None)
        for h in self.hosts:
            h.unloaded(name)

    def touch(self, name: str) -> None:
        for h in self.hosts:
            h.touch(name)

    # ------------------------------------------------------------ requests

    def reserve(self, model: str, prompt_tokens: int, max_tokens: int, kv_per_token: int, *,
                fixed_bytes: int = 0, timeout_s: float | None = None,
                cancelled: Callable[[], bool] | None = None) -> RankedReservation:
        plan = self.plans.get(model)
        if plan is None:  # not split: rank 0 holds it all
            plan = ShardPlan(model, "", "rank0", (0,) * len(self.hosts),
                             (kv_per_token, *(0,) * (len(self.hosts) - 1)),
                             (fixed_bytes, *(0,) * (len(self.hosts) - 1)), 0,
                             ((0, 0),) * len(self.hosts))
        timeout = self.memory.queue_timeout_s if timeout_s is None else timeout_s
        start = time.monotonic()
        out = RankedReservation(model, 0, 0.0, 0)
        try:
            for r in range(plan.ranks):
                if not (plan.kv_per_token[r] or plan.kv_fixed[r]):
                    continue
                left = max(0.0, timeout - (time.monotonic() - start))
                try:
                    part = self.hosts[r].reserve(
                        model, prompt_tokens, max_tokens, plan.kv_per_token[r],
                        fixed_bytes=plan.kv_fixed[r], timeout_s=left, cancelled=cancelled)
                except InferenceError as e:
                    raise _on(self.labels[r], e) from None
                out.parts.append((r, part))
                out.bytes += part.bytes
                out.tokens = part.tokens
        except BaseException:
            self.release(out)
            raise
        out.queue_seconds = time.monotonic() - start
        return out

    def try_grow(self, reservation: RankedReservation, extra_bytes: int) -> bool:
        if reservation.released or extra_bytes <= 0:
            return extra_bytes <= 0
        plan = self.plans.get(reservation.model)
        grown: list[tuple[Reservation, int]] = []
        for r, part in reservation.parts:
            share = plan.kv_share(r) if plan is not None else 1.0
            extra = math.ceil(extra_bytes * share)
            if not self.hosts[r].try_grow(part, extra):
                for g, n in grown:
                    self.hosts[self._rank_of(reservation, g)].shrink(g, n)
                return False
            grown.append((part, extra))
        reservation.bytes = sum(p.bytes for _, p in reservation.parts)
        return True

    @staticmethod
    def _rank_of(reservation: RankedReservation, part: Reservation) -> int:
        return next(r for r, p in reservation.parts if p is part)

    def release(self, reservation: RankedReservation) -> None:
        if reservation.released:
            return
        reservation.released = True
        for r, part in reservation.parts:
            self.hosts[r].release(part)

    # ------------------------------------------------------------ watchdogs and reports

    def start(self) -> None:
        for h in self.hosts:
            h.start()

    def stop(self) -> None:
        for h in self.hosts:
            h.stop()

    def snapshot(self) -> dict[str, Any]:
        snaps = [h.snapshot() for h in self.hosts]
        with self._lock:
            readings = list(self._readings)
        hosts = []
        for r, snap in enumerate(snaps):
            row = {"rank": r, "host": self.labels[r], "budget_bytes": snap["budget_bytes"],
                   "budget_source": snap["budget_source"],
                   "committed_bytes": snap["committed_bytes"],
                   "weights_bytes": snap["weights_bytes"], "reserved_bytes": snap["reserved_bytes"],
                   "floor_bytes": snap["floor_bytes"], "queue_depth": snap["queue_depth"]}
            reading = readings[r]
            if r == 0:
                for k in ("mlx_active_bytes", "mlx_peak_bytes", "mlx_cache_bytes",
                          "system_available_bytes"):
                    row[k] = snap.get(k, 0)
            elif reading is not None:
                row.update(mlx_active_bytes=reading[0], mlx_peak_bytes=reading[1],
                           mlx_cache_bytes=reading[2], system_available_bytes=max(0, reading[3]))
            hosts.append(row)
        models: dict[str, dict[str, Any]] = {}
        for snap in snaps:
            for m in snap["models"]:
                row = models.setdefault(m["name"], {**m, "weights_bytes": 0,
                                                    "kv_reserved_bytes": 0,
                                                    "estimated_bytes": 0, "measured_bytes": 0})
                for k in ("weights_bytes", "kv_reserved_bytes", "estimated_bytes",
                          "measured_bytes"):
                    row[k] += m[k]
                row["in_flight"] = max(row["in_flight"], m["in_flight"])
                row["last_used_unix"] = max(row["last_used_unix"], m["last_used_unix"])
        top = dict(snaps[0])
        for k in ("budget_bytes", "committed_bytes", "weights_bytes", "reserved_bytes"):
            top[k] = sum(s[k] for s in snaps)
        top["budget_source"] = (f"{len(self.hosts)} hosts, each its own budget: " + "; ".join(
            f"{self.labels[r]} {gib(s['budget_bytes'])}" for r, s in enumerate(snaps)))
        top["queue_depth"] = sum(s["queue_depth"] for s in snaps)
        top["models"] = list(models.values())
        top["hosts"] = hosts
        return top
