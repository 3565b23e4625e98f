"""Distributed serving without starting ranks: hostfiles, how a model is split, the per-host
plan and the per-host ledger. (tests/test_distributed.py runs the real ranks.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import write_random_chat_model

from inference_node.admission import GB
from inference_node.config import DistributedConfig, MemoryConfig, load_config
from inference_node.distributed import cluster
from inference_node.distributed.ranked import HostBudget, RankedAdmission
from inference_node.distributed.sharding import plan_model
from inference_node.errors import LoadFailed, WouldNotFit
from studio_common.tomlconf import ConfigError

MB = 1 << 20
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- hosts


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_an_mlx_hostfile_is_read_with_each_rank_named_by_its_ssh_host(tmp_path: Path) -> None:
    f = write(tmp_path / "hosts.json", {"backend": "ring", "hosts": [
        {"ssh": "studio-1.local", "ips": ["10.0.5.1"]},
        {"ssh": "studio-2.local", "ips": ["10.0.5.2"]}]})
    c = cluster.read_hostfile(f)
    assert (c.size, c.backend) == (2, "ring")
    assert c.label(1) == "rank 1 on studio-2.local"
    assert cluster.from_json(c.to_json(), "x").hosts == c.hosts


@pytest.mark.parametrize(("hosts", "backend", "says"), [
    ([{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b"}], "ring",
     'rank 1 on b has no "ips"; the ring backend connects to IP addresses'),
    ([{"ssh": "a", "ips": ["10.0.0.1"], "rdma": [None, None]},
      {"ssh": "b", "ips": ["10.0.0.2"], "rdma": ["rdma_en3", None]}], "jaccl",
     "rank 0 on a has no RDMA device to b; cable them, run `rdma_ctl enable` from Recovery"),
    ([{"ssh": "a", "ips": ["10.0.0.1"], "rdma": [None]},
      {"ssh": "b", "rdma": ["rdma_en3", None]}], "jaccl",
     "rank 0 on a lists 1 RDMA devices for 2 hosts"),
    ([{"ssh": "a", "ips": ["10.0.0.1"]}], "ring",
     "1 host(s); distributed serving needs at least 2"),
])
def test_a_hostfile_mlx_launch_would_refuse_is_refused_naming_the_host(
        tmp_path: Path, hosts: list, backend: str, says: str) -> None:
    f = write(tmp_path / "hosts.json", {"backend": backend, "hosts": hosts})
    with pytest.raises(ConfigError) as e:
        cluster.read_hostfile(f)
    assert says in str(e.value)


def test_a_missing_hostfile_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mlx.distributed_config --hosts"):
        cluster.read_hostfile(tmp_path / "nope.json")


def test_distributed_table_is_checked_and_a_relative_hostfile_follows_the_config(
        tmp_path: Path) -> None:
    good = tmp_path / "node.toml"
    good.write_text('[distributed]\nhostfile = "hosts.json"\nsharding = "pipeline"\n')
    assert load_config(good).distributed.hostfile == str(tmp_path / "hosts.json")
    bad = tmp_path / "bad.toml"
    bad.write_text('[distributed]\nranks = 2\nhostfile = "hosts.json"\n')
    with pytest.raises(ConfigError, match="ranks and distributed.hostfile both set"):
        load_config(bad)
    bad.write_text('[distributed]\nsharding = "expert"\n')
    with pytest.raises(ConfigError, match="sharding must be one of"):
        load_config(bad)
    with pytest.raises(ConfigError, match="needs at least 2 ranks"):
        cluster.local_ranks(1)
    assert cluster.from_config(DistributedConfig()) is None


# ---------------------------------------------------------------- how a model is split


def test_a_tensor_split_gives_each_rank_half_the_layers_and_all_the_embeddings(
        tmp_path: Path) -> None:
    m = write_random_chat_model(tmp_path / "m", "llama")
    plan = plan_model("m", m, 2, overhead=MB)
    cfg = json.loads((m / "config.json").read_text())
    embed = cfg["vocab_size"] * cfg["hidden_size"] * 4  # embeddings and head, float32
    total = (m / "model.safetensors").stat().st_size
    assert plan.mode == "tensor"
    assert plan.weights[0] == plan.weights[1]
    assert abs(plan.weights[0] - (embed * 2 + (total - embed * 2) / 2)) < 0.01 * total
    # KV: 4 layers x 2 KV heads x 64 dims x 2 (K and V) x 4 bytes, each rank one KV head
    assert plan.kv_per_token == (2048, 2048)
    assert plan.resident(0) == plan.weights[0] + MB


def test_a_pipeline_split_gives_rank_0_the_last_layers_and_their_cache(tmp_path: Path) -> None:
    m = write_random_chat_model(tmp_path / "q", "qwen2", rope_theta=10000.0,
                                num_hidden_layers=5)
    plan = plan_model("q", m, 2, "pipeline")
    assert plan.layers == ((2, 5), (0, 2))  # mlx-lm: the low ranks get the extra layer...
    # ... counted from the end: rank 0 runs the last layers
    per_layer = 2 * 2 * 64 * 4
    assert plan.kv_per_token == (3 * per_layer, 2 * per_layer)
    assert plan.weights[0] > plan.weights[1]


def test_an_architecture_mlx_lm_cannot_split_is_refused_naming_it_and_what_would_work(
        tmp_path: Path) -> None:
    m = write_random_chat_model(tmp_path / "g", "gemma", head_dim=64)
    with pytest.raises(LoadFailed) as e:
        plan_model("g", m, 2)
    assert "model_type 'gemma'" in str(e.value)
    assert "Serve it from one host" in str(e.value) and "tensor llama, qwen2" in str(e.value)


def test_heads_that_do_not_divide_are_refused_with_a_rank_count_that_would(
        tmp_path: Path) -> None:
    # SmolLM2-135M's shape: 9 heads, 3 KV heads; mlx-lm splits llama by heads only
    m = write_random_chat_model(tmp_path / "s", "llama", hidden_size=9 * 32,
                                num_attention_heads=9, num_key_value_heads=3)
    with pytest.raises(LoadFailed) as e:
        plan_model("s", m, 2)
    assert "9 attention heads do not divide among 2 ranks" in str(e.value)
    assert "3 ranks would divide them" in str(e.value)
    assert plan_model("s", m, 3).mode == "tensor"


def test_auto_takes_a_pipeline_split_when_heads_do_not_divide(tmp_path: Path) -> None:
    m = write_random_chat_model(tmp_path / "q", "qwen2", rope_theta=10000.0,
                                hidden_size=3 * 64, num_attention_heads=3,
                                num_key_value_heads=3)
    assert plan_model("q", m, 2).mode == "pipeline"
    with pytest.raises(LoadFailed, match='sharding = "pipeline" would work'):
        plan_model("q", m, 2, "tensor")


# ---------------------------------------------------------------- the per-host plan command


def run_plan(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "inference-node"), "plan", *args], capture_output=True,
                          text=True, timeout=120, cwd=tmp)


def test_plan_shows_a_row_per_host_and_fits_across_two_what_one_cannot_hold(
        tmp_path: Path) -> None:
    big = write_random_chat_model(tmp_path / "big", "llama", hidden_size=512,
                                  intermediate_size=2048, num_hidden_layers=6)
    config = tmp_path / "node.toml"
    config.write_text('[memory]\nbudget_gb = 0.06\noverhead_mb = 1.0\n[engine]\n'
                      f'prompt_cache_mb = 0.0\n[[models]]\nname = "big"\npath = "{big}"\n'
                      'context = 256\n')
    one = run_plan(tmp_path, "--config", str(config), "--json")
    assert one.returncode == 1, one.stderr
    two = run_plan(tmp_path, "--config", str(config), "--ranks", "2", "--json")
    assert two.returncode == 0, two.stderr
    doc = json.loads(two.stdout)
    assert [h["host"] for h in doc["hosts"]] == ["rank 0 on 127.0.0.1", "rank 1 on 127.0.0.1"]
    assert all(h["fits"] and h["total_bytes"] < h["budget_bytes"] for h in doc["hosts"])
    (model,) = doc["models"]
    assert model["split"] == "tensor" and len(model["per_rank"]) == 2
    assert sum(r["weights_bytes"] for r in model["per_rank"]) > json.loads(one.stdout)[
        "budget_bytes"]
    text = run_plan(tmp_path, "--config", str(config), "--ranks", "2")
    assert text.returncode == 0
    assert "rank 1 on 127.0.0.1: " in text.stdout and "— fits" in text.stdout
    assert "assumed equal to this machine's" in text.stdout


def test_plan_refuses_a_model_too_big_for_every_host_with_each_hosts_numbers(
        tmp_path: Path) -> None:
    big = write_random_chat_model(tmp_path / "big", "llama", hidden_size=512,
                                  intermediate_size=2048, num_hidden_layers=6)
    config = tmp_path / "node.toml"
    config.write_text('[engine]\nprompt_cache_mb = 0.0\n[distributed]\nranks = 2\n'
                      'budgets_gb = [0.02, 0.03]\n'
                      f'[[models]]\nname = "big"\npath = "{big}"\n')
    r = run_plan(tmp_path, "--config", str(config))
    assert r.returncode == 1
    assert "rank 0 on 127.0.0.1: " in r.stdout and "does NOT fit: over by" in r.stdout
    assert "distributed.budgets_gb[1]" in r.stdout


# ---------------------------------------------------------------- the per-host ledger


def ledger(budgets_mb: list[int]) -> RankedAdmission:
    memory = MemoryConfig(floor_gb=0.0, overhead_mb=0.0)
    hosts = [HostBudget(f"rank {r} on h{r}", b * MB, "test") for r, b in enumerate(budgets_mb)]
    return RankedAdmission(memory, "test", hosts, local_available=lambda: 64 * GB)


def test_each_host_admits_its_part_and_a_request_reserves_on_every_host(
        tmp_path: Path) -> None:
    m = write_random_chat_model(tmp_path / "m", "llama")
    plan = plan_model("m", m, 2)
    adm = ledger([10, 10])
    adm.set_plan(plan)
    assert adm.admit_load("m", sum(plan.weights), pinned=False) == []
    adm.loaded("m", sum(plan.weights), 0)
    r = adm.reserve("m", 100, 156, sum(plan.kv_per_token))
    assert [(rank, p.bytes) for rank, p in r.parts] == [(0, 256 * 2048), (1, 256 * 2048)]
    assert r.bytes == 256 * 4096
    assert adm.try_grow(r, 4096) and r.bytes == 256 * 4096 + 4096
    snap = adm.snapshot()
    assert [h["reserved_bytes"] for h in snap["hosts"]] == [256 * 2048 + 2048] * 2
    adm.release(r)
    assert [h["committed_bytes"] for h in adm.snapshot()["hosts"]] == [plan.weights[0]] * 2


def test_a_refusal_on_one_host_undoes_the_others_and_names_every_host(tmp_path: Path) -> None:
    m = write_random_chat_model(tmp_path / "m", "llama")
    plan = plan_model("m", m, 2)
    adm = ledger([10, 5])  # the model needs ~6.5 MiB per host
    adm.set_plan(plan)
    with pytest.raises(WouldNotFit) as e:
        adm.admit_load("m", sum(plan.weights), pinned=False)
    assert "does not fit on rank 1 on h1" in str(e.value)
    assert f"rank 0 on h0 needs {plan.weights[0] / MB:.1f} MiB" in str(e.value)
    assert [h["committed_bytes"] for h in adm.snapshot()["hosts"]] == [0, 0]


@pytest.mark.parametrize(("args", "says"), [
    (["--ranks", "1"], "needs at least 2 ranks"),
    (["--hostfile", "nope.json"], "no such hostfile; write one with `mlx.distributed_config"),
])
def test_serve_with_a_wrong_distribution_exits_2_saying_why(
        tmp_path: Path, args: list[str], says: str) -> None:
    r = subprocess.run([str(BIN / "inference-node"), "serve", "--port", "1", *args],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert says in r.stderr
