"""IMPALA with 1 vs 2 actors at matched total simulators, measured in one invocation.

Runs impala_atari.py as 1 learner + 1 actor x S and as 1 learner + 2 actors x S/2 (1 torch and 1
envpool thread per rank) and reports each run's final global SPS, the learner's idle fraction
(time spent waiting for unrolls) and the mean policy lag.

    python -m studies.impala_actors --total-envs 16 --steps 40000
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from benchmark.common import launch, scalars, summary


@dataclass
class Config:
    env_id: str = "Pong-v5"
    """the game"""
    total_envs: int = 16
    """simulators over all actors (split evenly)"""
    steps: int = 40_000
    """global steps (learnt from) of each run"""
    out: Path = Path("bench_runs/impala_actors")
    """where runs and the table go"""


def main(cfg: Config) -> None:
    rows = []
    for actors in (1, 2):
        envs = cfg.total_envs // actors
        args = ["--env-id", cfg.env_id, "--total-timesteps", str(cfg.steps), "--torch-threads", "1",
                "--env-threads", "1", "--print-every", "30"]
        run_dir = launch(cfg.out / f"actors{actors}", "impala", cfg.total_envs, actors, *args,
                         impala_batch_size=2 * cfg.total_envs)
        lag = np.mean([v for _, v in scalars(run_dir)["impala/policy_lag"]])
        result = summary(run_dir)
        rows.append((actors, envs, result["sps"], result["idle_frac"], lag))
    table = [f"{cfg.env_id}, {cfg.total_envs} simulators in all, batch {2 * cfg.total_envs} x 20, "
             f"{cfg.steps} global steps",
             "actors x envs   SPS   learner idle   mean policy lag (updates)"]
    table += [f"{a:6d} x {e:<4d}  {sps:5.0f}  {idle:12.0%}  {lag:10.2f}" for a, e, sps, idle, lag in rows]
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "table.txt").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main(tyro.cli(Config))
