"""Resident memory of every rank of every script, and how many ranks fit on a node.

Each script runs as the learning preset launches it (Breakout-v5, 2 workers x 16 simulators, the official
network; A3C adds its store rank, IMPALA its learner), with `--save-model` so that the checkpoint write counts,
while this process samples every rank's memory (psutil) every `--interval` seconds:
- RSS: pages resident in RAM, shared libraries (torch, envpool) counted in full in every rank;
- PSS: the same with each shared page divided among the processes that share it, so the PSS of the ranks on a
  node add up to what they really use; "ranks per node" divides the node's memory by the largest rank's PSS.
"growth" is the last sample's RSS minus the RSS at half the run (well after warm-up); run with
`--total-timesteps 200000` to look for a leak over a long run. Linux only (PSS).

    python -m studies.memory                      # about 2 minutes here
    python -m studies.memory --total-timesteps 200000 --scripts a2c_allreduce_atari.py
"""

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import tyro

from benchmark.common import SCRIPTS, finished, start

# ranks without simulators before the workers: A3C's store, IMPALA's learner
SERVER_RANKS = {"a3c_gpu_atari.py": 1, "impala_atari.py": 1}
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")
MIB = 2**20


@dataclass
class Config:
    scripts: tuple[str, ...] = tuple(SCRIPTS.values())
    env_id: str = "Breakout-v5"
    workers: int = 2
    """ranks with simulators"""
    num_envs: int = 16
    """simulators per worker"""
    total_timesteps: int = 20_000
    interval: float = 0.5
    """seconds between samples"""
    node_gib: float = 24.0
    """memory of the node that 'ranks per node' is for"""
    out: Path = Path("results/memory.txt")
    """where the table goes (also printed)"""


@dataclass
class Rank:
    rank: int
    rss: list[float] = field(default_factory=list)
    """MiB, one per sample"""
    pss: list[float] = field(default_factory=list)


def rank_of(proc: psutil.Process) -> int | None:
    """The MPI rank of a launched process (MPICH or Open MPI sets it in the environment), None for others."""
    env = proc.environ()
    for name in RANK_VARIABLES:
        if name in env:
            return int(env[name])
    return None


def sample(launcher: psutil.Process, script: str, ranks: dict[int, Rank]) -> None:
    """One sample of RSS and PSS of every rank running SCRIPT under LAUNCHER."""
    for proc in launcher.children(recursive=True):
        try:
            if not any(script in part for part in proc.cmdline()):
                continue
            rank = rank_of(proc)
            mem = proc.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if rank is not None:
            entry = ranks.setdefault(rank, Rank(rank))
            entry.rss.append(mem.rss / MIB)
            entry.pss.append(mem.pss / MIB)


def measure(cfg: Config, script: str) -> tuple[dict[int, Rank], float]:
    """Runs SCRIPT to the end in a temporary directory, sampling its ranks; returns them and the wall time."""
    algorithm = next(a for a, s in SCRIPTS.items() if s == script)
    args = ["--env-id", cfg.env_id, "--total-timesteps", str(cfg.total_timesteps), "--save-model", "--seed", "1"]
    ranks: dict[int, Rank] = {}
    with tempfile.TemporaryDirectory() as where:
        began = time.time()
        proc = start(Path(where), algorithm, cfg.workers * cfg.num_envs, cfg.workers, *args)
        launcher = psutil.Process(proc.pid)
        while proc.poll() is None:
            sample(launcher, script, ranks)
            time.sleep(cfg.interval)
        finished(proc, Path(where))
    return ranks, time.time() - began


def role(script: str, rank: int) -> str:
    if rank < SERVER_RANKS.get(script, 0):
        return {"a3c_gpu_atari.py": "store", "impala_atari.py": "learner"}[script]
    name = {"impala_atari.py": "actor", "gala_a2c_atari.py": "agent"}.get(script, "worker")
    return f"{name} ({rank})"


def table(cfg: Config, results: dict[str, tuple[dict[int, Rank], float]]) -> str:
    lines = [
        f"python -m studies.memory --env-id {cfg.env_id} --workers {cfg.workers} --num-envs {cfg.num_envs} "
        f"--total-timesteps {cfg.total_timesteps}",
        f"# peak RSS and PSS (MiB) per rank, sampled every {cfg.interval} s; growth = RSS at the end - RSS at half "
        "the run",
        "| script | rank | peak RSS | peak PSS | growth | samples | run (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    fits = []
    for script, (ranks, wall) in results.items():
        for rank in sorted(ranks):
            r = ranks[rank]
            growth = r.rss[-1] - r.rss[len(r.rss) // 2]
            lines.append(f"| {script} | {role(script, rank)} | {max(r.rss):.0f} | {max(r.pss):.0f} | "
                         f"{growth:+.0f} | {len(r.rss)} | {wall:.0f} |")
        largest = max(max(r.pss) for r in ranks.values())
        fits.append(f"- {script}: largest rank {largest:.0f} MiB PSS -> {int(cfg.node_gib * 1024 // largest)} "
                    f"ranks per {cfg.node_gib:g} GiB node")
    return "\n".join(lines + [""] + fits) + "\n"


def main(cfg: Config) -> None:
    results = {}
    for script in cfg.scripts:
        results[script] = measure(cfg, script)
        print(f"  {script}: {results[script][1]:.0f} s", flush=True)
    text = table(cfg, results)
    print(text)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(text)


if __name__ == "__main__":
    main(tyro.cli(Config))
