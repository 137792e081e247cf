"""One slow rank: how much does it cost the others? Measured in one invocation for all four scripts.

Each algorithm runs twice on Pong, 2 workers x 8 simulators (A3C adds its store rank, IMPALA its
learner; 1 torch and 1 envpool thread per rank): once as is, once with one worker sleeping
`--slow-seconds` per update (per unroll for an IMPALA actor) through the scripts' `--debug-slow-rank`.
Reported for each: the steps per second of the worker that is *not* slowed (GALA and A3C print
each rank's updates and time; A2C's ranks all run at the job's pace), and the job's SPS as logged.
By design, A2C waits for the slow rank; GALA and A3C should not; IMPALA's learner should go on
learning from the other actor.

    python -m benchmark.stragglers --steps 16000 --slow-seconds 0.2
"""

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import tyro

from benchmark.common import command, scalars, script_module


@dataclass
class Config:
    env_id: str = "Pong-v5"
    """the game"""
    envs: int = 8
    """simulators per worker (2 workers)"""
    steps: int = 16_000
    """global steps of each run"""
    slow_seconds: float = 0.2
    """sleep of the slow worker per update (about 2-3 updates' worth of compute here)"""
    out: Path = Path("bench_runs/stragglers")
    """where runs and the table go"""


# script, ranks, the slow worker's rank, the worker that is not slowed (None: the job's pace)
CASES = [
    ("a2c_allreduce_atari.py", 2, 1, None),
    ("gala_a2c_atari.py", 2, 1, 0),
    ("a3c_gpu_atari.py", 3, 2, 1),
    ("impala_atari.py", 3, 2, None),
]


def fast_worker_sps(stdout: str, rank: int, steps_per_update: int) -> float:
    """From the line `[agent r] N updates in X s` (GALA) or `[worker r] N updates in X s` (A3C)."""
    n, seconds = re.search(rf"\[(?:agent|worker) {rank}\] (\d+) updates in ([\d.]+) s", stdout).groups()
    return int(n) * steps_per_update / float(seconds)


def main(cfg: Config) -> None:
    rows = []
    for script, ranks, slow, fast in CASES:
        result = {}
        slowed = ["--debug-slow-rank", str(slow), "--debug-slow-seconds", str(cfg.slow_seconds)]
        for label, extra in (("as is", []), ("slowed", slowed)):
            where = cfg.out / script[:-3] / label.replace(" ", "_")
            where.mkdir(parents=True, exist_ok=True)
            args = ["--env-id", cfg.env_id, "--num-envs", str(cfg.envs), "--total-timesteps", str(cfg.steps),
                    "--torch-threads", "1", "--env-threads", "1", "--print-every", "30", *extra]
            if script == "impala_atari.py":
                args += ["--batch-size", str(2 * cfg.envs)]  # one update = one unroll of each actor's simulators
            proc = subprocess.run(command(script, *args, np=ranks), cwd=where, capture_output=True, text=True,
                                  check=True)
            run_dir = max((where / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
            job_sps = scalars(run_dir)["charts/SPS"][-1][1]
            if fast is None:
                worker = job_sps / 2
            else:  # GALA's agent, A3C's worker: updates of the script's --num-steps on its simulators
                worker = fast_worker_sps(proc.stdout, fast, script_module(script).Args().num_steps * cfg.envs)
            note = re.search(r"unrolls received per actor (.*?);", proc.stdout)
            result[label] = (worker, job_sps, note.group(1) if note else "")
        (w0, j0, _), (w1, j1, n1) = result["as is"], result["slowed"]
        rows.append((script[:-3], slow, w0, w1, j0, j1, n1))
        print(rows[-1], flush=True)
    table = [f"{cfg.env_id}, 2 workers x {cfg.envs} simulators, {cfg.steps} global steps; one worker sleeps "
             f"{cfg.slow_seconds} s per update in the slowed run",
             "script                slow rank   other worker SPS (as is -> slowed)   job SPS (as is -> slowed)   "
             "unrolls per actor (slowed)"]
    table += [f"{s:22s} {r:9d}   {w0:8.0f} -> {w1:5.0f} ({w1 / w0:4.0%})            "
              f"{j0:6.0f} -> {j1:5.0f} ({j1 / j0:4.0%})    {n}"
              for s, r, w0, w1, j0, j1, n in rows]
    (cfg.out / "table.txt").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main(tyro.cli(Config))
