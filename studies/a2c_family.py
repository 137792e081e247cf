"""A2C with Allreduce, GALA-A2C and A3C at matched workers x simulators, measured in one invocation.

For each simulator count per worker, runs a2c_allreduce_atari.py and gala_a2c_atari.py under
`mpirun -np RANKS` and a3c_gpu_atari.py under `mpirun -np RANKS+1` (its store rank holds no
simulators), one after the other, with 1 torch and 1 envpool thread per rank, and reads each run's
SPS from its summary.json (and A3C's mean staleness from its TensorBoard log); then one longer GALA run whose
`gossip/disagreement` (RMS distance of the agents' parameters to their average) is plotted against
global steps.

    python -m studies.a2c_family --ranks 2 --num-envs 8 16 --steps 40000 --disagreement-steps 200000
"""

from dataclasses import dataclass
from pathlib import Path

import tyro

from benchmark.common import launch, scalars, summary


@dataclass
class Config:
    env_id: str = "Pong-v5"
    """the game"""
    ranks: int = 2
    """MPI ranks (agents / workers) of every run"""
    num_envs: tuple[int, ...] = (8, 16)
    """simulators per rank, one comparison each"""
    steps: int = 40_000
    """global steps of each SPS run"""
    disagreement_steps: int = 200_000
    """global steps of the GALA run whose disagreement is plotted (0: skip)"""
    out: Path = Path("bench_runs/a2c_family")
    """where runs, the plot and the table go"""


def launch_at(cfg: Config, algorithm: str, num_envs: int, steps: int, *extra: str) -> Path:
    args = ["--env-id", cfg.env_id, "--total-timesteps", str(steps), "--torch-threads", "1", "--env-threads", "1",
            "--print-every", "30", *extra]
    where = cfg.out / f"{algorithm}_{cfg.ranks}x{num_envs}_{steps}"
    return launch(where, algorithm, cfg.ranks * num_envs, cfg.ranks, *args)


def main(cfg: Config) -> None:
    cfg.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for num_envs in cfg.num_envs:
        runs = {a: launch_at(cfg, a, num_envs, cfg.steps) for a in ("a2c_allreduce", "gala_a2c", "a3c_gpu")}
        sps = {a: summary(run_dir)["sps"] for a, run_dir in runs.items()}
        staleness = [v for _, v in scalars(runs["a3c_gpu"])["async/staleness"]]
        rows.append((num_envs, sps["a2c_allreduce"], sps["gala_a2c"], sps["a3c_gpu"], sum(staleness) / len(staleness)))
    table = [f"{cfg.env_id}, {cfg.ranks} workers (A3C: + 1 store rank), {cfg.steps} global steps per run, "
             "final global SPS",
             "workers x envs   A2C-allreduce   GALA-A2C   A3C   GALA/A2C   A3C/A2C   A3C mean staleness"]
    table += [f"{cfg.ranks:7d} x {n:<5d}  {a:13.0f}  {g:9.0f}  {c:4.0f}  {g / a:9.2f}  {c / a:8.2f}  {st:18.2f}"
              for n, a, g, c, st in rows]
    if cfg.disagreement_steps:
        run_dir = launch_at(cfg, "gala_a2c", max(cfg.num_envs), cfg.disagreement_steps,
                            "--disagreement-every", "20")
        tags = scalars(run_dir)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        steps, values = zip(*tags["gossip/disagreement"])
        ax.plot(steps, values, lw=1)
        ax.set_xlabel("global step")
        ax.set_ylabel("RMS |theta_i - mean theta|")
        ax.set_title(f"GALA-A2C {cfg.env_id}, {cfg.ranks} agents x {max(cfg.num_envs)} envs, ring")
        fig.tight_layout()
        fig.savefig(cfg.out / "gala_disagreement.png", dpi=120)
        for tag in ("gossip/disagreement", "gossip/disagreement_relative"):
            v = [x for _, x in tags[tag]]
            half = v[len(v) // 2 :]
            table.append(f"{tag} over {len(v)} measurements: first {v[0]:.3g}, min {min(v):.3g}, max {max(v):.3g}, "
                         f"mean of the first half {sum(v[: len(v) // 2]) / max(len(v) // 2, 1):.3g}, "
                         f"of the second half {sum(half) / len(half):.3g}, last {v[-1]:.3g}")
        returns = [v for _, v in tags.get("charts/episodic_return", [])]
        if returns:
            table.append(f"episodic return: first 10 games {sum(returns[:10]) / len(returns[:10]):.1f}, "
                         f"last 10 {sum(returns[-10:]) / len(returns[-10:]):.1f}")
        table.append(f"plot: {cfg.out / 'gala_disagreement.png'}")
    (cfg.out / "table.txt").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main(tyro.cli(Config))
