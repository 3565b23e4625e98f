"""Which hosts the ranks run on: mlx's hostfile format, or N local ranks on loopback.

The hostfile is mlx's own (what `mlx.distributed_config` writes and `mlx.launch --hostfile`
reads), so one file serves both this node and mlx's tools:

    {"backend": "jaccl",
     "envs": ["MLX_METAL_FAST_SYNCH=1"],
     "hosts": [{"ssh": "studio-1.local", "ips": ["10.0.5.1"], "rdma": [null, "rdma_en3"]},
               {"ssh": "studio-2.local", "ips": ["10.0.5.2"], "rdma": ["rdma_en3", null]}]}

Rank r runs on hosts[r]; rank 0 serves gRPC. The ring backend connects to `ips` (TCP); JACCL
needs the RDMA device matrix (Thunderbolt 5, macOS 26.2 or later, `rdma_ctl enable` run once
from Recovery on every Mac).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from inference_node.config import DistributedConfig
from studio_common.tomlconf import ConfigError

LOOPBACK = "127.0.0.1"
MAKE_ONE = ("write one with `mlx.distributed_config --hosts HOST1,HOST2 --backend ring "
            "--output hosts.json` (or --backend jaccl over Thunderbolt)")


@dataclass(frozen=True)
class Host:
    rank: int
    ssh: str
    ips: list[str] = field(default_factory=list)
    rdma: list[str | list[str] | None] = field(default_factory=list)

    @property
    def label(self) -> str:
        """How a person is told about this rank: `rank 1 on studio-2.local`."""
        return f"rank {self.rank} on {self.ssh}"


@dataclass(frozen=True)
class Cluster:
    hosts: list[Host]
    backend: str  # ring | jaccl | jaccl-ring
    envs: list[str] = field(default_factory=list)
    source: str = ""  # the hostfile, or "--ranks N"

    @property
    def size(self) -> int:
        return len(self.hosts)

    @property
    def local(self) -> bool:
        return all(h.ssh == LOOPBACK for h in self.hosts)

    def label(self, rank: int) -> str:
        return self.hosts[rank].label

    def to_json(self) -> dict:
        """The hostfile mlx.launch reads."""
        return {"backend": self.backend, "envs": self.envs,
                "hosts": [{"ssh": h.ssh, "ips": h.ips, "rdma": h.rdma} for h in self.hosts]}


def from_json(data: dict, source: str) -> Cluster:
    """The cluster a rank is handed on its command line (Cluster.to_json)."""
    hosts = [Host(i, h["ssh"], list(h.get("ips") or []), list(h.get("rdma") or []))
             for i, h in enumerate(data["hosts"])]
    return Cluster(hosts, data.get("backend") or "ring", list(data.get("envs") or []), source)


def local_ranks(n: int) -> Cluster:
    """`n` ranks on this machine, on the ring backend over loopback."""
    if n < 2:
        raise ConfigError(f"--ranks {n}: distributed serving needs at least 2 ranks; "
                          "drop --ranks to serve from one process")
    return Cluster([Host(r, LOOPBACK, [LOOPBACK]) for r in range(n)], "ring", [], f"--ranks {n}")


def read_hostfile(path: Path, backend: str = "") -> Cluster:
    """Parse and check an mlx hostfile; `backend` overrides the file's own."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such hostfile; {MAKE_ONE}") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a JSON hostfile ({e}); {MAKE_ONE}") from None
    envs: list[str] = []
    if isinstance(data, dict):
        if not isinstance(data.get("hosts"), list):
            raise ConfigError(f"{path}: a hostfile object needs a \"hosts\" list; {MAKE_ONE}")
        backend = backend or str(data.get("backend") or "")
        envs = list(data.get("envs") or [])
        raw = data["hosts"]
    elif isinstance(data, list):
        raw = data
    else:
        raise ConfigError(f"{path}: a hostfile is a JSON object or list; {MAKE_ONE}")
    backend = backend or "ring"
    hosts = []
    for i, h in enumerate(raw):
        if not isinstance(h, dict) or not isinstance(h.get("ssh"), str) or not h["ssh"]:
            raise ConfigError(f"{path}: hosts[{i}] needs an \"ssh\" host name")
        hosts.append(Host(i, h["ssh"], list(h.get("ips") or []), list(h.get("rdma") or [])))
    if len(hosts) < 2:
        raise ConfigError(f"{path}: {len(hosts)} host(s); distributed serving needs at least 2")
    cluster = Cluster(hosts, backend, envs, str(path))
    check_backend(cluster)
    return cluster


def check_backend(cluster: Cluster) -> None:
    """What mlx.launch would refuse, refused here first with the host named."""
    where = cluster.source
    if cluster.backend == "ring":
        for h in cluster.hosts:
            if not h.ips:
                raise ConfigError(f"{where}: {h.label} has no \"ips\"; the ring backend connects "
                                  "to IP addresses, not host names")
        return
    if cluster.backend not in ("jaccl", "jaccl-ring"):
        raise ConfigError(f"{where}: backend {cluster.backend!r} is not served here; use ring "
                          "(TCP) or jaccl (Thunderbolt RDMA)")
    if not cluster.hosts[0].ips:
        raise ConfigError(f"{where}: {cluster.hosts[0].label} needs \"ips\": JACCL's coordinator "
                          "runs on rank 0 and the other ranks reach it there")
    n = cluster.size
    for h in cluster.hosts:
        if len(h.rdma) != n:
            raise ConfigError(f"{where}: {h.label} lists {len(h.rdma)} RDMA devices for {n} hosts;"
                              f" JACCL needs one per host (null for itself). {MAKE_ONE}")
        if h.rdma[h.rank] is not None:
            raise ConfigError(f"{where}: {h.label}'s own RDMA entry must be null")
        missing = [cluster.hosts[j].ssh for j in range(n) if j != h.rank and h.rdma[j] is None]
        if missing and cluster.backend == "jaccl":
            raise ConfigError(
                f"{where}: {h.label} has no RDMA device to {', '.join(missing)}; cable them, run "
                "`rdma_ctl enable` from Recovery on each Mac, and regenerate the hostfile")


def from_config(dist: DistributedConfig) -> Cluster | None:
    """The cluster `[distributed]` describes, or None for a single process."""
    if dist.hostfile:
        return read_hostfile(Path(dist.hostfile), dist.backend)
    if dist.ranks > 1:
        if dist.backend not in ("", "ring"):
            raise ConfigError(f"distributed.ranks starts local ranks on the ring backend; "
                              f"backend {dist.backend!r} needs a hostfile")
        return local_ranks(dist.ranks)
    return None
