"""What the benchmarks and the tests share: launching a script, reading a run's TensorBoard scalars, the manifest.

What `python -m benchmark run` (benchmark/run.py) writes and `python -m benchmark report`
(benchmark/report.py) reads.

The four scripts at the repository's root:
`gala_a2c_atari.py` (ALGO "gala_a2c"), `a2c_allreduce_atari.py` ("a2c_allreduce"),
`a3c_gpu_atari.py` ("a3c_gpu"), `impala_atari.py` ("impala"). All take tyro flags:
`--env-id Pong-v5 --seed 1 --total-timesteps N --num-envs S (simulators per rank) --track
--wandb-project-name P --wandb-entity E --wandb-group G --wandb-tags a b c --eval-episodes K
--save-model --torch-threads T --env-threads T --log-every U`. Launch shapes:
- gala_a2c / a2c_allreduce: `mpirun -np R python X.py --num-envs S`, R x S = total simulators.
- a3c_gpu: rank 0 is a store rank with NO simulators that only serves; ranks 1..R are workers:
  `mpirun -np R+1 python a3c_gpu_atari.py --num-envs S`, R x S = total (world of one = plain A2C).
- impala: rank 0 learner (no simulators), ranks 1..A actors: `mpirun -np A+1 python impala_atari.py
  --num-envs S --batch-size B` with A x S = total simulators; --batch-size (trajectories) must be a
  multiple of --num-envs and >= --num-envs (default 32, unroll 20). A world of one is refused
  (`--single-process` exists for debugging only).
- The `mpirun` to use is `benchmark.common.mpirun()`; `benchmark.common.command(script, *args, np=)`
  builds the argv; `benchmark.common.scalars(run_dir)` reads TensorBoard scalars (tag -> [(step, value)]);
  `benchmark.common.script_module(script)` imports a script (its Args and their defaults, its functions).

Each script run, launched with cwd = WORKDIR, writes `WORKDIR/runs/<run_name>/` containing:
- `config.json`: {"algorithm": ALGO, **all args} (args include env_id, seed, num_envs, total_envs
  (total simulators), world_size, total_timesteps, ...);
- TensorBoard event files with tags: `charts/episodic_return`, `charts/episodic_length` (one point
  per finished game, step = global env steps), `charts/SPS`, `charts/learning_rate`, `losses/*`;
  GALA also `gossip/disagreement`, `gossip/disagreement_relative`, `gossip/grad_cosine`,
  `gossip/mix_rate`; A3C `async/staleness`; IMPALA `impala/policy_lag`; with --eval-episodes also
  `eval/argmax_return_mean`, `eval/sampled_return_mean`. The event wall_time gives wall-clock.
- `eval.json` when --eval-episodes K > 0: {"env_id", "argmax": {"mean","median","returns":[...]},
  "sampled": {...}} (argmax = Table 1 style evaluation).
- `summary.json`, written by rank 0 at the end of every run: {"algorithm": ALGO, "global_step": int,
  "stopped": bool (ended early by a signal, with a checkpoint), "sps": float or null}. A run that exits 0
  without it did not end as the scripts do: the runner counts it as failed.
- with --track and WANDB_MODE=offline: `WORKDIR/wandb/offline-run-*/` (W&B run, synced later with
  `wandb sync`); online, the W&B run has config = the same args, group, tags, and (sync_tensorboard)
  the same scalar keys in its history.

Runner layout: `bench_runs/<experiment>/` (experiment name defaults to the preset name; `--name`
overrides). Each run's WORKDIR is `bench_runs/<experiment>/<label>/<env_id>/sims<S>/seed<k>/`, the label
being ALGO, or a variant's own (`--variant LABEL=ALGO:FLAGS`: ALGO's runs with FLAGS, and --exp-name LABEL),
with the run's `stdout.txt` and `stderr.txt` beside its `runs/`. The runner keeps
`bench_runs/<experiment>/manifest.json`, a JSON list of `ManifestEntry` (below; its fields are the schema),
one per run, rewritten atomically after every run finishes; running the experiment again skips the runs it
has ok, re-runs the others and keeps every entry it does not replace.
W&B tagging by the runner: project (default "gala-rl-benchmark"), group = experiment name, tags
passed with --wandb-tags: the preset name and "commit-<short sha>"; the scripts add ALGO and
"sims<S>" themselves.
"""

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


def script_module(script: str) -> ModuleType:
    """The module of a script at the root (`a2c_allreduce_atari.py` -> `a2c_allreduce_atari`), imported from ROOT
    whatever the working directory; importing a script has no side effects."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(Path(script).stem)


def mpirun() -> str:
    """The mpirun installed beside this Python (the project's MPI wheel), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpirun"
    return str(beside) if beside.exists() else "mpirun"


def command(script: str, *args: str, np: int | None = None) -> list[str]:
    """`python SCRIPT ARGS`, or the same under `mpirun -np NP`."""
    cmd = [sys.executable, str(ROOT / script), *args]
    return cmd if np is None else [mpirun(), "-np", str(np), *cmd]


def scalar_events(run_dir: Path) -> tuple[float, dict[str, list]]:
    """Every TensorBoard scalar event of a run (tag -> events with .step, .wall_time, .value), and
    the wall time of the run's first event."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc.FirstEventTimestamp(), {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars of a run: tag -> [(step, value)]."""
    return {tag: [(e.step, e.value) for e in events] for tag, events in scalar_events(run_dir)[1].items()}


def rate(fn, units_per_call: int, seconds: float) -> float:
    """Units per second of `fn`, after two warm-up calls."""
    fn(), fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * units_per_call / (time.perf_counter() - start)


def script_sps(
    tree: Path, script: str, np_: int | None, env_id: str, steps: int, *extra: str, wait: bool = True,
    tensorboard: bool = False,
):
    """Runs SCRIPT from TREE (a checkout) with 16 simulators per worker (unless EXTRA says otherwise), under `mpirun
    -np NP_` unless NP_ is None, in a temporary directory, as a user runs it (the environment of this process, W&B
    offline); returns its summary's SPS, after the warm-up (or, if not WAIT, a function that waits and returns it).
    With TENSORBOARD, the last `charts/SPS` it logged instead (since its start, warm-up included): what scripts
    older than summary.json (before c64ba08) also give."""
    cmd = [sys.executable, str(tree / script), "--env-id", env_id, "--num-envs", "16", "--total-timesteps",
           str(steps), *extra]
    if np_ is not None:
        cmd = [mpirun(), "-np", str(np_), *cmd]
    where = tempfile.mkdtemp()
    proc = subprocess.Popen(cmd, cwd=where, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "WANDB_MODE": "offline"})

    def result() -> float:
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-2000:]}")
        (run,) = (Path(where) / "runs").iterdir()
        if tensorboard:
            measured = scalars(run)["charts/SPS"][-1][1]
        else:
            measured = json.loads((run / "summary.json").read_text())["sps"]
        shutil.rmtree(where)
        return measured

    return result() if wait else result


def launch(where: Path, script: str, np: int, *args: str) -> Path:
    """Runs `mpirun -np NP python SCRIPT ARGS` to completion in `where` (created); returns the run
    directory it wrote under runs/."""
    where.mkdir(parents=True, exist_ok=True)
    began = time.time()
    subprocess.run(command(script, *args, np=np), cwd=where, check=True)
    print(f"  {script} -np {np} {' '.join(args)}: {time.time() - began:.0f} s wall", flush=True)
    return max((where / "runs").iterdir(), key=lambda p: p.stat().st_mtime)


@dataclass
class ManifestEntry:
    """One run of an experiment, the schema of an element of manifest.json (`asdict(entry)`): its launch, planned
    by `python -m benchmark run`, then its outcome, set once it ended."""

    experiment: str
    preset: str
    algorithm: str
    """ALGO"""
    label: str
    """ALGO, or the label of a variant of it (--variant): what the report groups by"""
    script: str
    """e.g. gala_a2c_atari.py"""
    env_id: str
    seed: int
    simulators: int
    """total simulators"""
    ranks: int
    """mpirun -np"""
    envs_per_rank: int
    workers: int
    """ranks that hold simulators"""
    total_timesteps: int
    command: list[str]
    """the launch's argv"""
    workdir: str
    """WORKDIR, relative to the experiment directory"""
    git_commit: str
    wandb_project: str
    wandb_group: str
    run_dir: Optional[str] = None
    """runs/<run_name> of the run, relative to the experiment directory; None if it wrote none"""
    status: str = "planned"
    """"ok"; "stopped" (exit 0 and summary.json says stopped: cut short by a signal, with a checkpoint);
    "failed" (any other exit, a launch that could not start, --timeout reached, or exit 0 without summary.json);
    "planned" until the run ends (never in manifest.json)"""
    returncode: Optional[int] = None
    """the launch's exit code; -1 if it could not start or its SLURM job died"""
    wall_seconds: float = 0.0
    utilisation: Optional[dict] = None
    """{"interval_s": float, "cpu_percent": [samples of whole-machine CPU %], "gpu_percent": [samples] or None}"""

    @property
    def key(self) -> tuple:
        """The run in its experiment: (label, env id, simulators, seed); the manifest is sorted by it."""
        return (self.label, self.env_id, self.simulators, self.seed)


def read_manifest(path: Path) -> list[ManifestEntry]:
    """The entries of an experiment's manifest.json."""
    return [ManifestEntry(**entry) for entry in json.loads(path.read_text())]
