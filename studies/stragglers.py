"""One slow rank: how much does it cost the others? Measured in one invocation for all four scripts.

Each algorithm runs twice on Pong, 2 workers x 8 simulators (A3C adds its store rank, IMPALA its
learner; 1 torch and 1 envpool thread per rank): once as is, once with one worker a device
`--factor` times slower (the scripts' `--debug-slow-rank R --debug-slow-factor F`: it sleeps (F - 1) x
each update's time, each unroll's for an IMPALA actor). Reported for each, from the runs' summary.json:
the steps per second of the worker that is *not* slowed (GALA's agent and A3C's worker: its updates over
its seconds; A2C's ranks all run at the job's pace, IMPALA's actors at the learner's), and the job's SPS.
By design, A2C waits for the slow rank; GALA and A3C should not; IMPALA's learner should go on learning
from the other actor. What a slow worker costs in time to a score: `python -m benchmark run --preset
stragglers` (README, Results).

    python -m studies.stragglers --steps 16000 --factor 3
"""

from dataclasses import dataclass
from pathlib import Path

import tyro

from benchmark.common import launch, summary
from benchmark.run import steps_per_update


@dataclass
class Config:
    env_id: str = "Pong-v5"
    """the game"""
    envs: int = 8
    """simulators per worker (2 workers)"""
    steps: int = 16_000
    """global steps of each run"""
    factor: float = 3.0
    """the slowed worker runs as a device this many times slower"""
    out: Path = Path("bench_runs/stragglers")
    """where runs and the table go"""


CASES = [("a2c_allreduce", 1, None), ("gala_a2c", 1, 0), ("a3c_gpu", 2, 1), ("impala", 2, None)]
"""(algorithm, the slowed worker's rank, the rank of the worker that is not slowed (None: the job's pace))"""


def main(cfg: Config) -> None:
    rows = []
    for algorithm, slow, fast in CASES:
        result = {}
        slowed = ["--debug-slow-rank", str(slow), "--debug-slow-factor", str(cfg.factor)]
        for label, extra in (("as_is", []), ("slowed", slowed)):
            args = ["--env-id", cfg.env_id, "--total-timesteps", str(cfg.steps), "--torch-threads", "1",
                    "--env-threads", "1", "--print-every", "30", *extra]
            # IMPALA: one update = one unroll of each actor's simulators
            run = summary(launch(cfg.out / algorithm / label, algorithm, 2 * cfg.envs, 2, *args,
                                 impala_batch_size=2 * cfg.envs))
            worker = run["sps"] / 2
            if fast is not None:  # its own updates of the script's --num-steps on its simulators
                rank = run["ranks"][fast]
                worker = rank["updates"] * steps_per_update(algorithm, cfg.envs, 0) / rank["seconds"]
            received = run["ranks"][0].get("received", "")
            result[label] = (worker, run["sps"], received)
        (w0, j0, _), (w1, j1, n1) = result["as_is"], result["slowed"]
        rows.append((algorithm, slow, w0, w1, j0, j1, n1))
        print(rows[-1], flush=True)
    table = [f"{cfg.env_id}, 2 workers x {cfg.envs} simulators, {cfg.steps} global steps; one worker a device "
             f"{cfg.factor:g} times slower in the slowed run",
             "algorithm       slow rank   other worker SPS (as is -> slowed)   job SPS (as is -> slowed)   "
             "unrolls per actor (slowed)"]
    table += [f"{a:15s} {r:9d}   {w0:8.0f} -> {w1:5.0f} ({w1 / w0:4.0%})            "
              f"{j0:6.0f} -> {j1:5.0f} ({j1 / j0:4.0%})    {n}"
              for a, r, w0, w1, j0, j1, n in rows]
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "table.txt").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main(tyro.cli(Config))
