"""The sizes a cluster user starts: 16-32 ranks of every script, one simulator per rank, oversubscribed
on whatever machine runs them (minutes each on 2 cores). Marked `scale`: the default suite skips them;
`python -m pytest -m scale` runs them. Each asserts the script's own protocol invariants and that the
checkpoint it wrote is accepted by --resume at the same world size."""

import importlib

import pytest
from conftest import config_error, ranks_of, run_ok

pytestmark = [pytest.mark.scale, pytest.mark.timeout(1200)]
ONE_SIM = ["--env-id", "Pong-v5", "--num-envs", "1", "--torch-threads", "1", "--env-threads", "1",
           "--save-model", "--print-every", "30"]


def resumable(script: str, path, world_size: int, *more: str) -> None:
    module = importlib.import_module(script[: -len(".py")])
    assert config_error(module, ["--resume", str(path), *ONE_SIM, *more], world_size) == ""


@pytest.mark.parametrize("graph, num_peers", [("ring", 1), ("ring", 2), ("exponential", 1), ("exponential", 2)])
def test_gala_at_32_agents(workdir, graph, num_peers):
    updates = 40
    proc, run_dir, _ = run_ok("gala_a2c_atari.py", *ONE_SIM, "--total-timesteps", str(updates * 32 * 5),
                              "--gossip-graph", graph, "--num-peers", str(num_peers), cwd=workdir, np=32,
                              timeout=900)
    agents = ranks_of(run_dir)
    assert sorted(agents) == list(range(32)) and all(a["updates"] == updates for a in agents.values())
    assert sum(a["sent"] for a in agents.values()) == sum(a["received"] for a in agents.values()) > 0
    assert sum(a["mixes"] for a in agents.values()) > 0
    resumable("gala_a2c_atari.py", run_dir / "checkpoint", 32, "--gossip-graph", graph, "--num-peers", str(num_peers))


def test_a2c_at_32_ranks(workdir):
    proc, run_dir, _ = run_ok("a2c_allreduce_atari.py", *ONE_SIM, "--total-timesteps", str(40 * 32 * 5),
                              cwd=workdir, np=32, timeout=900)
    assert f"global_step {40 * 32 * 5}/{40 * 32 * 5}" in proc.stdout
    resumable("a2c_allreduce_atari.py", run_dir / "checkpoint.pt", 32)


def test_a3c_store_and_15_workers(workdir):
    proc, run_dir, _ = run_ok("a3c_gpu_atari.py", *ONE_SIM, "--total-timesteps", str(600 * 5), cwd=workdir, np=16,
                              timeout=900)
    ranks = ranks_of(run_dir)
    workers = [ranks[r]["updates"] for r in range(1, 16)]
    assert ranks[0]["central_updates"] == sum(workers)  # no update lost
    resumable("a3c_gpu_atari.py", run_dir / "checkpoint.pt", 16)


def test_impala_learner_and_15_actors(workdir):
    impala = ["--batch-size", "4", "--unroll-length", "10"]
    proc, run_dir, _ = run_ok("impala_atari.py", *ONE_SIM, *impala, "--total-timesteps", str(60 * 4 * 10),
                              cwd=workdir, np=16, timeout=900)
    counts = {int(a): n for a, n in ranks_of(run_dir)[0]["received"].items()}
    assert sorted(counts) == list(range(1, 16)) and all(n > 0 for n in counts.values())
    resumable("impala_atari.py", run_dir / "checkpoint.pt", 16, *impala)
