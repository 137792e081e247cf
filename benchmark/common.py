"""What the benchmarks and the tests share: launching a script, reading a run's TensorBoard scalars, the manifest.

What `python -m benchmark run` (benchmark/run.py) writes and `python -m benchmark report`
(benchmark/report/) reads.

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
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]


SCRIPTS = {
    "gala_a2c": "gala_a2c_atari.py",
    "a2c_allreduce": "a2c_allreduce_atari.py",
    "a3c_gpu": "a3c_gpu_atari.py",
    "impala": "impala_atari.py",
}

IMPALA_BATCH = 32
"""trajectories in one IMPALA update: Table G.1's batch, impala_atari.py's default --batch-size"""


class ConfigError(ValueError):
    """Input the runner refuses; main prints the message and exits with 2."""


@dataclass(frozen=True)
class Plan:
    """One launch: `mpirun -np ranks python SCRIPT --num-envs envs_per_rank`, of which `workers`
    ranks hold simulators (workers x envs_per_rank = the total)."""

    ranks: int
    envs_per_rank: int
    workers: int


def launch_plan(algorithm: str, simulators: int, workers: int, impala_batch_size: int = IMPALA_BATCH) -> Plan:
    """The launch of ALGORITHM at SIMULATORS in total over WORKERS ranks that hold simulators.

    A2C and GALA: R = workers ranks x S. A3C: the same plus a store rank (rank 0) that only serves.
    IMPALA: a learner (rank 0) plus A = workers actors x S, and its batch of trajectories must be
    whole unrolls of S. Raises ConfigError, saying why, when the total does not split."""
    if algorithm not in SCRIPTS:
        raise ConfigError(f"unknown algorithm {algorithm!r}: one of {', '.join(SCRIPTS)}")
    noun = "actors" if algorithm == "impala" else "workers"
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if simulators < workers or simulators % workers:
        raise ConfigError(
            f"{algorithm}: {simulators} simulators do not split over {workers} {noun} "
            f"({simulators} is not a positive multiple of {workers}); use a multiple of {workers} or change --workers"
        )
    per_rank = simulators // workers
    if algorithm == "impala":
        if impala_batch_size < per_rank or impala_batch_size % per_rank:
            raise ConfigError(
                f"impala: --batch-size {impala_batch_size} trajectories is not a multiple of the {per_rank} simulators "
                f"per actor ({simulators} over {workers} actors); an update takes whole unrolls, "
                f"so set --impala-batch-size to a multiple of {per_rank}"
            )
        return Plan(ranks=workers + 1, envs_per_rank=per_rank, workers=workers)
    if algorithm == "a3c_gpu":
        return Plan(ranks=workers + 1, envs_per_rank=per_rank, workers=workers)
    return Plan(ranks=workers, envs_per_rank=per_rank, workers=workers)


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


def start(where: Path, algorithm: str, simulators: int, workers: int, *args: str, tree: Path = ROOT,
          impala_batch_size: int = IMPALA_BATCH) -> subprocess.Popen:
    """Starts ALGORITHM's script from TREE (a checkout; default this one) at SIMULATORS over WORKERS ranks that
    hold simulators, in launch_plan's shape (`mpirun -np R`, plain `python` for one rank), with ARGS after its
    --num-envs, in WHERE (created), as a user runs it (this process's environment, W&B offline). Its output is
    discarded and its stderr kept in a temporary file (no pipe to drain), which `finished` shows if it fails."""
    plan = launch_plan(algorithm, simulators, workers, impala_batch_size)
    script = tree / SCRIPTS[algorithm]
    argv = [*command(SCRIPTS[algorithm], "--num-envs", str(plan.envs_per_rank), *args,
                     np=plan.ranks if plan.ranks > 1 else None)]
    argv[argv.index(str(ROOT / SCRIPTS[algorithm]))] = str(script)
    if algorithm == "impala":
        argv += ["--batch-size", str(impala_batch_size)]
    where.mkdir(parents=True, exist_ok=True)
    err = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(argv, cwd=where, env={**os.environ, "WANDB_MODE": "offline"}, stdout=subprocess.DEVNULL,
                            stderr=err, text=True)
    proc.err_file = err
    return proc


def finished(proc: subprocess.Popen, where: Path) -> Path:
    """Waits for a run started by `start` in WHERE; exits with its error if it failed; returns its run directory
    (the newest under WHERE/runs)."""
    proc.wait()
    proc.err_file.seek(0)
    err = proc.err_file.read()
    proc.err_file.close()
    if proc.returncode != 0:
        sys.exit(f"{shlex.join(proc.args)} exited {proc.returncode}:\n{err[-2000:]}")
    return max((where / "runs").iterdir(), key=lambda p: p.stat().st_mtime)


def launch(where: Path, algorithm: str, simulators: int, workers: int, *args: str, **options) -> Path:
    """`start` then `finished`: runs ALGORITHM to its end in WHERE; returns its run directory."""
    began = time.time()
    run_dir = finished(start(where, algorithm, simulators, workers, *args, **options), where)
    print(f"  {algorithm} {simulators} simulators over {workers}: {time.time() - began:.0f} s wall", flush=True)
    return run_dir


def summary(run_dir: Path) -> dict:
    """A run's summary.json: its result, with every rank's counters under "ranks" (README, "What a run writes")."""
    return json.loads((run_dir / "summary.json").read_text())


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
