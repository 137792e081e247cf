"""`python -m benchmark run`: launches the four scripts at matched total simulators and writes a manifest.

For every (algorithm, env id, total simulators, seed) the runner derives the launch at that total
(`launch_plan`): A2C and GALA run R workers x S simulators, A3C the same R x S plus its store rank,
IMPALA one learner plus A actors x S. A total that does not split is refused before anything runs.
A variant (`--variant LABEL=ALGORITHM:FLAGS`) is an algorithm run with extra script flags under its
own label, which the manifest and the report use in place of the algorithm's name. The runs go
seed-major (all of seed 1, then seed 2, ...) within each group of consecutive algorithms with the
same seeds, so that an experiment cut short still has whole seeds of the algorithms listed first.
Running an experiment again continues it: the runs already ok in its manifest are skipped, the
failed and stopped ones run again.
Every run is tracked in one W&B project (group = the experiment, tags = the preset and the git
commit; WANDB_MODE is inherited, so offline works without network), runs in its own directory
with its stdout and stderr saved there, and is sampled for whole-machine CPU (and GPU) utilisation
while it runs. Runs go locally, as many at once as the cores (and the GPUs) allow, or to SLURM through submitit.
`bench_runs/<experiment>/manifest.json` (a list of benchmark.common.ManifestEntry) is what
`python -m benchmark report` reads.

    python -m benchmark run --preset smoke
    python -m benchmark run --preset paper --dry-run
    python -m benchmark run --preset learning --variant "gala_sync=gala_a2c:--sync-freq 0"
    python -m benchmark run --preset sweep --slurm --slurm-partition gpu --slurm-gpus-per-node 1
"""

import functools
import itertools
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal, Optional

import psutil
import tyro
from tqdm import tqdm

from benchmark.common import (
    IMPALA_BATCH,
    ROOT,
    SCRIPTS,
    ConfigError,
    ManifestEntry,
    Plan,
    command,
    launch_plan,
    read_manifest,
    script_module,
)

Algorithm = Literal["gala_a2c", "a2c_allreduce", "a3c_gpu", "impala"]
GAMES = ("BeamRider-v5", "Breakout-v5", "Pong-v5", "Qbert-v5", "Seaquest-v5", "SpaceInvaders-v5")


@functools.cache
def defaults(algorithm: str):
    """ALGORITHM's script's Args as they are by default (imported when first needed: importing a script starts MPI,
    which `python -m benchmark report` does not need)."""
    return script_module(SCRIPTS[algorithm]).Args()


# ---------------------------------------------------------------------------------------------
# Presets and the command line


@dataclass(frozen=True)
class Preset:
    algorithms: tuple[str, ...]
    env_ids: tuple[str, ...]
    seeds: tuple[int, ...]
    """seeds of every algorithm not in seeds_of"""
    simulators: tuple[int, ...]
    """total simulators of a run, one set of runs per value"""
    total_timesteps: Optional[int]
    """global steps of a run; None: --updates x the algorithm's batch (throughput)"""
    workers: int
    impala_batch_size: Optional[int]
    """IMPALA's trajectories per update; None: one per simulator (= the total simulators)"""
    flags: tuple[str, ...]
    """passed to every script"""
    seeds_of: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """an algorithm's own seeds, in place of `seeds`"""
    flags_of: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """passed to one algorithm's script, after `flags`"""
    variants: tuple[str, ...] = ()
    """LABEL=ALGORITHM:FLAGS, as --variant, before those of the command line; their seeds may be in seeds_of"""
    simulators_of: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """an arm's (label's or algorithm's) own simulator counts, a subset of `simulators`"""
    envs_per_worker: Optional[int] = None
    """simulators per worker at every count (workers = simulators / this), in place of `workers`"""
    extends: Optional[str] = None
    """an experiment (beside this one) whose runs this one continues to more steps: a run starts from the final
    checkpoint of the same run there (its label, game, simulators and seed), unless it has its own to continue"""

    def seeds_for(self, label: str, algorithm: str) -> tuple[int, ...]:
        return self.seeds_of.get(label, self.seeds_of.get(algorithm, self.seeds))

    def simulators_for(self, label: str, algorithm: str, totals: tuple[int, ...]) -> tuple[int, ...]:
        own = self.simulators_of.get(label, self.simulators_of.get(algorithm))
        return totals if own is None else tuple(t for t in totals if t in own)


PRESETS = {
    # All four, end to end (training, logging, evaluation, W&B offline) in a few minutes on 2 cores.
    "smoke": Preset(
        algorithms=tuple(SCRIPTS),
        env_ids=("Pong-v5",),
        seeds=(1, 2),
        simulators=(8,),
        total_timesteps=12_000,
        workers=2,
        impala_batch_size=IMPALA_BATCH,
        flags=("--eval-episodes", "2", "--log-every", "5"),
    ),
    # The paper's Table 1 / Fig 2 comparison: 64 simulators, 40M steps, 10 seeds, six games.
    "paper": Preset(
        algorithms=tuple(SCRIPTS),
        env_ids=GAMES,
        seeds=tuple(range(1, 11)),
        simulators=(64,),
        total_timesteps=40_000_000,
        workers=4,
        impala_batch_size=IMPALA_BATCH,
        flags=("--eval-episodes", "30"),
    ),
    # The paper's Fig 1a: GALA and A2C as the simulators grow from 2^6 to 2^10.
    "sweep": Preset(
        algorithms=("gala_a2c", "a2c_allreduce"),
        env_ids=GAMES,
        seeds=tuple(range(1, 11)),
        simulators=(64, 128, 256, 512, 1024),
        total_timesteps=40_000_000,
        workers=4,
        impala_batch_size=IMPALA_BATCH,
        flags=("--eval-episodes", "30"),
    ),
    # The same number of steps of each (--updates x the batch) on this machine at 2 x 8 simulators; IMPALA's batch is 16
    # trajectories (2 actors x 8), so that one update covers the same 16 simulators as A2C's.
    "throughput": Preset(
        algorithms=tuple(SCRIPTS),
        env_ids=("Pong-v5",),
        seeds=(1,),
        simulators=(16,),
        total_timesteps=None,
        workers=2,
        impala_batch_size=None,
        flags=(),
    ),
    # Learning curves on this machine: the four at 32 simulators, 16 per learner, 500k steps of Breakout, GALA and A2C
    # first (seeds 1-3), then A3C and IMPALA (seeds 1-2). IMPALA's batch is one actor's unroll of its 16 simulators
    # (320 steps per update, ~1,560 updates in 500k steps where Table G.1's batch of 32 would give 780), and its rate
    # is not annealed: 500k steps are the very start of Table G.1's 200M-step schedule, where the rate is still ~6e-4
    # (the A2C-family scripts do not anneal either). No evaluation games: the paper's learning curves (Fig 1) are the
    # training returns of the sampled policy, and at 500k steps an argmax Breakout policy often never launches the
    # ball, so each of its games runs to the 27,000-step limit (3-4 minutes of every run here).
    "learning": Preset(
        algorithms=("a2c_allreduce", "gala_a2c", "a3c_gpu", "impala"),
        env_ids=("Breakout-v5",),
        seeds=(1, 2, 3),
        seeds_of={"a3c_gpu": (1, 2), "impala": (1, 2)},
        simulators=(32,),
        total_timesteps=500_000,
        workers=2,
        impala_batch_size=16,
        flags=(),
        flags_of={"impala": ("--unroll-length", "20", "--no-anneal-lr")},
    ),
    # The paper's shape (Fig 1b-c, the official README's run): GALA 4 agents x 16 simulators (ring, 1 peer, never
    # blocking) against A2C 4 workers x 16, both at the learning rate 7e-4 x sqrt(64 / 16) = 1.4e-3 (the scripts'
    # default at 64 simulators), Breakout, 2M steps (8M frames) per run, seeds 1-3; synchronous gossip seeds 1-2.
    # A checkpoint every 100k steps: a run cut short continues from it when the experiment is run again.
    # results/paper-shape also holds two runs added from the command line and stopped (their networks never learned):
    # --seeds 1 --variant "gala_sync_lr2.2e-3=gala_a2c:--sync-freq 0 --learning-rate 2.2e-3", and the same with
    # "a2c_lr2.2e-3=a2c_allreduce:--learning-rate 2.2e-3".
    "paper-shape": Preset(
        algorithms=("a2c_allreduce", "gala_a2c"),
        env_ids=("Breakout-v5",),
        seeds=(1, 2, 3),
        simulators=(64,),
        total_timesteps=2_000_000,
        workers=4,
        impala_batch_size=IMPALA_BATCH,
        flags=("--save-model", "--checkpoint-every", "100000"),
        variants=("gala_sync=gala_a2c:--sync-freq 0",),
        seeds_of={"gala_sync": (1, 2)},
    ),
    # Why asynchronous mixing costs learning at 2 agents: the learning preset's shape (Breakout, A2C and GALA
    # 2 x 16, 500k steps), seed by seed: A2C, GALA (the paper's asynchronous averaging) and synchronous gossip,
    # seeds 1-3, and GALA in lockstep mixing messages exactly 1 and 2 updates old (staleness without the jitter and
    # drift of real asynchrony), seeds 1-2. A checkpoint every 100k steps, as paper-shape. The three remedy arms of
    # results/mixing (gala_pushsum, gala_extrapolate, gala_aligned: --mixing push-sum, extrapolate, aligned) were
    # run at commits f9dd21c and c856349 (their manifest entries' git_commit), where --mixing existed; none helped,
    # and the option is gone. Seeds 4-5 of A2C, GALA and gala_extrapolate were added at c856349 (`--preset learning
    # --name mixing --seeds 4 5 --extra="--save-model --checkpoint-every 100000"`, the variant on the command line).
    "mixing": Preset(
        algorithms=("a2c_allreduce", "gala_a2c"),
        env_ids=("Breakout-v5",),
        seeds=(1, 2, 3),
        simulators=(32,),
        total_timesteps=500_000,
        workers=2,
        impala_batch_size=IMPALA_BATCH,
        flags=("--save-model", "--checkpoint-every", "100000"),
        variants=("gala_sync=gala_a2c:--sync-freq 0", "gala_lockstep1=gala_a2c:--debug-lockstep-age 1",
                  "gala_lockstep2=gala_a2c:--debug-lockstep-age 2"),
        seeds_of={"gala_lockstep1": (1, 2), "gala_lockstep2": (1, 2)},
    ),
    # GALA against A2C on the paper's six games at its shape: paper-shape's launch (4 x 16, learning rate 1.4e-3, ring,
    # 1 peer, never blocking, 2M steps, a checkpoint every 100k steps) on each game, seeds 1-2, plus the final policy
    # played for 10 full games with the argmax and 10 with the sampled policy (the paper's Table 1 and Fig 1). Breakout
    # comes last: its training curves also stand in paper-shape. Run it one arm at a time, A2C first
    # (--algorithms a2c_allreduce), as a run takes ~25 minutes here.
    "six-games": Preset(
        algorithms=("a2c_allreduce", "gala_a2c"),
        env_ids=tuple(g for g in GAMES if g != "Breakout-v5") + ("Breakout-v5",),
        seeds=(1, 2),
        simulators=(64,),
        total_timesteps=2_000_000,
        workers=4,
        impala_batch_size=IMPALA_BATCH,
        flags=("--save-model", "--checkpoint-every", "100000", "--eval-episodes", "10"),
    ),
    # Later or lower: on Seaquest, A2C's and GALA's seed 2 of six-games continued from their final checkpoints (2M
    # steps) to 5M, the same launch otherwise: does GALA reach the score A2C had at 2M, or level off below it?
    # Seaquest is the game where A2C levels off first within 2M steps (its seed 1 gained 11% from the third quarter to
    # the last, where BeamRider, Breakout and Qbert gained 44-109%); on Pong neither learned at this learning rate.
    # Seed 2, chosen before its runs: seed 1's checkpoints (not committed) were lost with the machine that made them,
    # and a run continued from its 2M-step checkpoint makes 3M steps, not 5M. Without a checkpoint it runs from 0.
    "horizon": Preset(
        algorithms=("a2c_allreduce", "gala_a2c"),
        env_ids=("Seaquest-v5",),
        seeds=(2,),
        simulators=(64,),
        total_timesteps=5_000_000,
        workers=4,
        impala_batch_size=IMPALA_BATCH,
        flags=("--save-model", "--checkpoint-every", "100000", "--eval-episodes", "10"),
        extends="six-games",
    ),
    # From A2C to GALA one change at a time, at the paper's shape (Breakout, 4 x 16, 2M steps, seeds 1-2), beside
    # paper-shape's arms (run it with --name paper-shape so that one report holds every rung): A2C whose ranks each
    # clip their own gradient before the exact average (a2c_clip_per_rank); agents that each clip and normalise
    # with their own RMSprop and then average their parameters exactly (gala_exact: every other agent a peer, in
    # lockstep with messages of this update); and the step-size control, A2C at half the learning rate (7e-4).
    "ladder": Preset(
        algorithms=(),
        env_ids=("Breakout-v5",),
        seeds=(1, 2),
        simulators=(64,),
        total_timesteps=2_000_000,
        workers=4,
        impala_batch_size=IMPALA_BATCH,
        flags=("--save-model", "--checkpoint-every", "100000"),
        variants=("a2c_clip_per_rank=a2c_allreduce:--debug-clip-per-rank",
                  "gala_exact=gala_a2c:--num-peers 3 --debug-lockstep-age 0",
                  "a2c_lr7e-4=a2c_allreduce:--learning-rate 7e-4"),
    ),
    # The paper's Fig 1a where this machine reaches: A2C and GALA at 128 (8 x 16) and 256 (16 x 16) simulators with
    # the default learning rate 7e-4 x sqrt(simulators / 16) (2.0e-3 and 2.8e-3), Breakout, 1M steps, seeds 1-2, and
    # the 16-simulator A2C whose score defines a successful run.
    "fig1a": Preset(
        algorithms=("a2c_allreduce", "gala_a2c"),
        env_ids=("Breakout-v5",),
        seeds=(1, 2),
        simulators=(16, 128, 256),
        total_timesteps=1_000_000,
        workers=4,
        impala_batch_size=IMPALA_BATCH,
        flags=("--save-model", "--checkpoint-every", "100000"),
        simulators_of={"gala_a2c": (128, 256)},
        envs_per_worker=16,
    ),
    # GALA's reason to exist: time to a score when one worker is slower (issue 23). A2C and GALA at 2 x 16 on Breakout,
    # a rank per core, each run for the same wall-clock budget (--max-seconds 880: what unslowed A2C takes for 1M
    # steps here, 1,139 steps/s in the mixing study), unslowed and with worker 1 a device 2 times slower, seeds 1-2.
    # The steps are not reached: the budget ends every run.
    "stragglers": Preset(
        algorithms=("a2c_allreduce", "gala_a2c"),
        env_ids=("Breakout-v5",),
        seeds=(1, 2),
        simulators=(32,),
        total_timesteps=10_000_000,
        workers=2,
        impala_batch_size=IMPALA_BATCH,
        flags=("--max-seconds", "880", "--save-model", "--checkpoint-every", "100000"),
        variants=("a2c_slow=a2c_allreduce:--debug-slow-rank 1 --debug-slow-factor 2",
                  "gala_slow=gala_a2c:--debug-slow-rank 1 --debug-slow-factor 2"),
    ),
}


@dataclass
class Config:
    """Runs the gala-rl scripts at matched total simulators, locally or on SLURM, and writes
    bench_runs/<experiment>/manifest.json for `python -m benchmark report`."""

    preset: Literal["smoke", "paper", "sweep", "throughput", "learning", "paper-shape", "six-games", "horizon",
                    "ladder", "fig1a", "mixing", "stragglers"] = "smoke"
    """smoke: all four on Pong, 2 seeds, 2 workers x 4 simulators, 12k steps (minutes on 2 cores);
    paper: all four on six games, 4 x 16 simulators, 40M steps, 10 seeds; sweep: GALA and A2C at
    64..1024 simulators (Fig 1a); throughput: --updates x the batch steps of each on Pong at 2 x 8;
    learning: all four on Breakout at 2 x 16, 500k steps, seeds 1-3 (A2C, GALA) and 1-2 (A3C, IMPALA);
    paper-shape: A2C and GALA on Breakout at 4 x 16, 2M steps, seeds 1-3, synchronous GALA seeds 1-2;
    six-games: paper-shape's A2C and GALA on the paper's six games, seeds 1-2, each final policy played 10 + 10 games;
    horizon: six-games' Seaquest seed 2 of A2C and GALA continued to 5M steps; ladder: the rungs from A2C to GALA at the
    paper's shape (A2C clipping per rank, agents averaging exactly, A2C at 7e-4), seeds 1-2; fig1a: A2C and GALA at
    128 and 256 simulators (16 per worker), 1M steps, seeds 1-2, and A2C at 16;
    mixing: A2C, GALA and synchronous GALA at 2 x 16, 500k steps, seeds 1-3, and GALA in lockstep with messages 1
    and 2 updates old, seeds 1-2; stragglers: A2C and GALA at 2 x 16 for 880 s each, unslowed and with worker 1
    two times slower, seeds 1-2"""
    algorithms: Optional[tuple[Algorithm, ...]] = None
    """overrides the preset's algorithms"""
    labels: Optional[tuple[str, ...]] = None
    """run only these arms (algorithms or variants' labels) of the preset and --variant"""
    variant: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """LABEL=ALGORITHM:FLAGS: ALGORITHM's runs again (its games, simulators and seeds) with FLAGS
    after all others, under LABEL in the manifest and the report: --variant "gala_sync=gala_a2c:--sync-freq 0"
    (the script's --exp-name is LABEL too)"""
    env_ids: Optional[tuple[str, ...]] = None
    """overrides the preset's games"""
    seeds: Optional[tuple[int, ...]] = None
    """overrides the preset's seeds (of every algorithm)"""
    simulators: Optional[tuple[int, ...]] = None
    """total simulators of a run, one set of runs per value; overrides the preset's"""
    total_timesteps: Optional[int] = None
    """global steps of every run; overrides the preset's"""
    workers: Optional[int] = None
    """ranks that hold simulators: A2C/GALA ranks, A3C workers (+1 store rank), IMPALA actors
    (+1 learner); default: the preset's (paper, sweep: 4; smoke, throughput, learning: 2)"""
    updates: int = 200
    """throughput preset: total steps = updates x the algorithm's batch over all its simulators (A2C:
    that many updates; GALA: that many per agent; A3C: workers x that many central updates of one
    worker's batch; IMPALA: that many learner updates)"""
    impala_batch_size: Optional[int] = None
    """IMPALA's --batch-size (trajectories, a multiple of its simulators per actor); default 32,
    throughput: the total simulators, learning: 16"""
    threads: int = 1
    """--torch-threads and --env-threads of every rank"""
    max_parallel: Optional[int] = None
    """local runs at once; default max(1, cores // (ranks x threads of the largest run)), and with GPUs here at
    most as many as have GPUs of their own (each run gets its GPU-using ranks' worth through CUDA_VISIBLE_DEVICES)"""
    sample_interval: float = 1.0
    """seconds between two samples of CPU (and GPU) utilisation"""
    timeout: Optional[float] = None
    """minutes after which a local run is stopped (SIGTERM, which checkpoints, then SIGKILL after a
    minute) and counted as failed; default: none"""
    name: Optional[str] = None
    """experiment name (directory under --out, W&B group); default: the preset. Running an experiment again
    continues it: runs already ok in its manifest are skipped, the others run"""
    out: Path = Path("bench_runs")
    """where experiments go"""
    wandb_project: str = "gala-rl-benchmark"
    """W&B project of every run"""
    wandb_entity: Optional[str] = None
    """W&B entity (team or user) of every run"""
    extra: str = ""
    """flags for every script, after the runner's and the preset's (the later flag wins; a variant's own come
    last); write it with "=" as it starts with "--": --extra="--save-model --eval-episodes 5\""""
    dry_run: bool = False
    """print the commands (one line each, with their directory) and run nothing"""
    slurm: bool = False
    """submit every run as a SLURM job through submitit instead of running locally"""
    slurm_partition: Optional[str] = None
    """SLURM partition"""
    slurm_time: int = 1440
    """SLURM time limit of a job, minutes"""
    slurm_nodes: int = 1
    """SLURM nodes per job"""
    slurm_gpus_per_node: int = 0
    """SLURM GPUs per node"""
    slurm_cpus_per_task: Optional[int] = None
    """SLURM CPUs of a job (one task per node runs mpirun); default: ranks x threads of the largest run"""


# ---------------------------------------------------------------------------------------------
# Matched simulators: the steps of one update (the launch shapes are benchmark.common.launch_plan's)


def steps_per_update(algorithm: str, simulators: int, impala_batch_size: int) -> int:
    """Global steps of one update at the scripts' default rollouts: A2C, GALA and A3C step every
    simulator --num-steps times (5); IMPALA learns from batch trajectories of --unroll-length (20) steps."""
    if algorithm == "impala":
        return impala_batch_size * defaults("impala").unroll_length
    return defaults(algorithm).num_steps * simulators


# ---------------------------------------------------------------------------------------------
# The runs of an experiment


def git_commit() -> str:
    """The project's HEAD commit, or "unknown" outside a git checkout."""
    if shutil.which("git") is None:
        return "unknown"
    proc = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def first_given(*values):
    """The first value that is not None: a flag given explicitly, else the preset's."""
    return next((value for value in values if value is not None), None)


@dataclass(frozen=True)
class Arm:
    """What one line of the figures shows: an algorithm, or a variant of it (its own label and flags)."""

    label: str
    algorithm: str
    flags: tuple[str, ...]
    """the variant's flags, after every other (none for a plain algorithm)"""
    seeds: tuple[int, ...]


VARIANT_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
"""a label is a directory name in the experiment"""


def parse_variant(text: str) -> tuple[str, str, tuple[str, ...]]:
    """`LABEL=ALGORITHM:FLAGS` -> (label, algorithm, flags); raises ConfigError saying what is wrong."""
    label, equals, rest = text.partition("=")
    algorithm, _, flags = rest.partition(":")
    if not equals or not VARIANT_LABEL.fullmatch(label):
        raise ConfigError(f"--variant {text!r}: write LABEL=ALGORITHM:FLAGS, with a LABEL of letters, digits, _ . + -")
    if algorithm not in SCRIPTS:
        raise ConfigError(f"--variant {text!r}: unknown algorithm {algorithm!r}: one of {', '.join(SCRIPTS)}")
    if label in SCRIPTS:
        raise ConfigError(f"--variant {text!r}: the label {label!r} is a plain algorithm's; give the variant its own")
    return label, algorithm, tuple(shlex.split(flags))


def plan_arms(cfg: Config, preset: Preset) -> list[Arm]:
    """The algorithms (the preset's, or --algorithms), then the variants, each with its seeds (--seeds, or the
    preset's for its algorithm). A variant also sets the script's --exp-name to its label (run names, W&B)."""

    def seeds(label: str, algorithm: str) -> tuple[int, ...]:
        return first_given(cfg.seeds, preset.seeds_for(label, algorithm))

    arms = [Arm(a, a, (), seeds(a, a)) for a in first_given(cfg.algorithms, preset.algorithms)]
    for text in (*preset.variants, *cfg.variant):
        label, algorithm, flags = parse_variant(text)
        if label in (arm.label for arm in arms):
            raise ConfigError(f"--variant {text!r}: the label {label!r} is given twice")
        arms.append(Arm(label, algorithm, ("--exp-name", label, *flags), seeds(label, algorithm)))
    if cfg.labels is not None:
        unknown = sorted(set(cfg.labels) - {arm.label for arm in arms})
        if unknown:
            raise ConfigError(f"--labels {' '.join(unknown)}: not an arm here ({', '.join(a.label for a in arms)})")
        arms = [arm for arm in arms if arm.label in cfg.labels]
    return arms


def run_shape(cfg: Config, preset: Preset, workers: int, algorithm: str, simulators: int) -> tuple[Plan, int, int]:
    """The launch, IMPALA batch and global steps of ALGORITHM at SIMULATORS; raises ConfigError."""
    batch = first_given(cfg.impala_batch_size, preset.impala_batch_size, simulators)
    plan = launch_plan(algorithm, simulators, workers, batch)
    total_timesteps = first_given(cfg.total_timesteps, preset.total_timesteps)
    if total_timesteps is None:
        total_timesteps = cfg.updates * steps_per_update(algorithm, simulators, batch)
    if total_timesteps < steps_per_update(algorithm, simulators, batch):
        raise ConfigError(
            f"{algorithm}: --total-timesteps {total_timesteps} is below one update "
            f"({steps_per_update(algorithm, simulators, batch)} steps at {simulators} simulators)"
        )
    return plan, batch, total_timesteps


def plan_runs(cfg: Config) -> list[ManifestEntry]:
    """Every run of the experiment, as its manifest entry before it runs: the preset's values, overridden by the
    explicit flags, each total split by launch_plan. Raises ConfigError before anything runs. The order is the
    order of execution: seed-major within each group of consecutive arms with the same seeds (learning: A2C and
    GALA seed 1, 2, 3, then A3C and IMPALA seed 1, 2), then game, simulators, arm."""
    preset = PRESETS[cfg.preset]
    env_ids = first_given(cfg.env_ids, preset.env_ids)
    totals = first_given(cfg.simulators, preset.simulators)
    workers = first_given(cfg.workers, preset.workers)
    if cfg.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {cfg.threads}")
    if cfg.updates < 1:
        raise ConfigError(f"--updates must be at least 1, got {cfg.updates}")
    if cfg.sample_interval <= 0:
        raise ConfigError(f"--sample-interval must be positive, got {cfg.sample_interval}")
    if cfg.max_parallel is not None and cfg.max_parallel < 1:
        raise ConfigError(f"--max-parallel must be at least 1, got {cfg.max_parallel}")
    arms = plan_arms(cfg, preset)
    per_worker = None if cfg.workers is not None else preset.envs_per_worker
    shapes = {(algorithm, simulators): run_shape(cfg, preset, simulators // per_worker if per_worker else workers,
                                                 algorithm, simulators)
              for algorithm in dict.fromkeys(arm.algorithm for arm in arms) for simulators in totals}
    experiment = cfg.name or cfg.preset
    commit = git_commit()
    extra = shlex.split(cfg.extra)
    runs = []
    for seeds, group in itertools.groupby(arms, key=lambda arm: arm.seeds):
        for seed, env_id, simulators, arm in itertools.product(seeds, env_ids, totals, list(group)):
            if cfg.simulators is None and simulators not in preset.simulators_for(arm.label, arm.algorithm, totals):
                continue
            plan, batch, total_timesteps = shapes[arm.algorithm, simulators]
            args = ["--env-id", env_id, "--seed", str(seed), "--total-timesteps", str(total_timesteps),
                    "--num-envs", str(plan.envs_per_rank),
                    "--torch-threads", str(cfg.threads), "--env-threads", str(cfg.threads),
                    "--track", "--wandb-project-name", cfg.wandb_project, "--wandb-group", experiment]
            if cfg.wandb_entity:
                args += ["--wandb-entity", cfg.wandb_entity]
            args += ["--wandb-tags", cfg.preset, f"commit-{commit[:7]}"]
            if arm.algorithm == "impala":
                args += ["--batch-size", str(batch)]
            args += [*preset.flags, *preset.flags_of.get(arm.algorithm, ()), *extra, *arm.flags]
            runs.append(ManifestEntry(
                experiment=experiment, preset=cfg.preset, algorithm=arm.algorithm, label=arm.label,
                script=SCRIPTS[arm.algorithm], env_id=env_id, seed=seed, simulators=simulators, ranks=plan.ranks,
                envs_per_rank=plan.envs_per_rank, workers=plan.workers, total_timesteps=total_timesteps,
                command=command(SCRIPTS[arm.algorithm], *args, np=plan.ranks),
                workdir=f"{arm.label}/{env_id}/sims{simulators}/seed{seed}", git_commit=commit,
                wandb_project=cfg.wandb_project, wandb_group=experiment,
            ))
    if not runs:
        raise ConfigError("nothing to run: no algorithm, env id, simulator count or seed")
    return runs


# ---------------------------------------------------------------------------------------------
# Executing one run (in a local thread, or inside a SLURM allocation)


def gpu_percent(gpus: Optional[list[str]] = None) -> Optional[float]:
    """Mean utilisation of this node's GPUs now (of GPUS alone if given), by nvidia-smi; None if it fails."""
    query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
    if gpus:
        query.append(f"--id={','.join(gpus)}")
    try:
        proc = subprocess.run(query, check=False, capture_output=True, text=True, timeout=10)
        values = [float(line) for line in proc.stdout.split()]
    except (subprocess.SubprocessError, ValueError):
        return None
    return sum(values) / len(values) if proc.returncode == 0 and values else None


def visible_gpus() -> list[str]:
    """The GPUs the runner may hand out: CUDA_VISIBLE_DEVICES' entries where it is set (empty: none), else the
    indices nvidia-smi lists; none without nvidia-smi."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [gpu.strip() for gpu in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if gpu.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], check=False,
                              capture_output=True, text=True, timeout=30)
    except subprocess.SubprocessError:
        return []
    return proc.stdout.split() if proc.returncode == 0 else []


def last_flag(command: list[str], name: str, default: Optional[str] = None) -> Optional[str]:
    """The value of the last NAME VALUE or NAME=VALUE in COMMAND (as the script's parser takes it), or DEFAULT."""
    value = default
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            value = command[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def gpu_ranks(run: ManifestEntry) -> int:
    """How many of RUN's ranks take a GPU (the scripts' set_up): every rank of A2C and GALA, A3C's workers,
    IMPALA's learner (and its actors with --actor-device cuda); none with --no-cuda (the last of --cuda and
    --no-cuda wins)."""
    switches = [arg for arg in run.command if arg in ("--cuda", "--no-cuda")]
    if switches and switches[-1] == "--no-cuda":
        return 0
    if run.algorithm == "a3c_gpu":
        return max(run.ranks - 1, 1)
    if run.algorithm == "impala":
        return run.ranks if last_flag(run.command, "--actor-device") == "cuda" else 1
    return run.ranks


def gpu_groups(gpus: list[str], per_run: int, parallel: int) -> list[list[str]]:
    """PARALLEL groups of GPUS, one per run at once: disjoint groups of PER_RUN GPUs (fewer if there are not
    that many) while there are enough, then shared in turn (only when --max-parallel asks for more)."""
    per_run = max(1, min(per_run, len(gpus) // parallel or 1, len(gpus)))
    groups = [gpus[i : i + per_run] for i in range(0, len(gpus) - per_run + 1, per_run)]
    return [groups[i % len(groups)] for i in range(parallel)]


def execute(
    run: ManifestEntry, experiment_dir: Path, interval: float, timeout: Optional[float] = None,
    gpus: Optional[list[str]] = None,
) -> ManifestEntry:
    """Runs RUN's command to completion in its directory, with its stdout and stderr in stdout.txt
    and stderr.txt there, sampling whole-machine CPU % (and GPU % where nvidia-smi exists) every
    INTERVAL seconds; returns its manifest entry. With GPUS, the run sees those GPUs alone (CUDA_VISIBLE_DEVICES,
    said on the first line of stderr.txt) and the GPU % is theirs. Status, from the exit code and the run's
    summary.json:
    "ok" (exit 0), "stopped" (exit 0, and the summary says stopped: the run ended early by a signal, with a
    checkpoint), or "failed" (any other exit, a launch that could not start, TIMEOUT minutes passed: the run
    is sent SIGTERM, then SIGKILL a minute later; or exit 0 without a summary: the reason ends stderr.txt)."""
    workdir = experiment_dir / run.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    before = set((workdir / "runs").glob("*"))
    cpu = []
    gpu = [] if shutil.which("nvidia-smi") else None
    psutil.cpu_percent()  # starts this thread's measurement; each later call covers the time since
    began = time.monotonic()
    timed_out = False
    with open(workdir / "stdout.txt", "w") as out, open(workdir / "stderr.txt", "w") as err:
        try:
            env = None
            if gpus is not None:
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus)}
                err.write(f"benchmark run: CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}\n")
                err.flush()
            proc = subprocess.Popen(run.command, cwd=workdir, stdout=out, stderr=err, env=env)
        except OSError as e:  # mpirun or python missing: this run fails, the others go on
            err.write(f"cannot start {run.command[0]}: {e}\n")
            return replace(run, run_dir=None, status="failed", returncode=-1, wall_seconds=0.0, utilisation=None)
        try:
            while True:
                try:
                    returncode = proc.wait(timeout=interval)
                    break
                except subprocess.TimeoutExpired:
                    cpu.append(psutil.cpu_percent())
                    if gpu is not None:
                        sample = gpu_percent(gpus)
                        if sample is not None:
                            gpu.append(sample)
                    if timeout is not None and time.monotonic() - began > 60 * timeout and not timed_out:
                        timed_out = True
                        err.write(f"\nbenchmark run: --timeout {timeout} min reached, SIGTERM\n")
                        err.flush()
                        proc.terminate()  # mpirun forwards it: the ranks checkpoint and exit
        finally:  # the runner is stopping, or the run ignored SIGTERM: nothing is left running
            if proc.poll() is None:
                if not timed_out:
                    proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    wall_seconds = time.monotonic() - began
    new = sorted(set((workdir / "runs").glob("*")) - before, key=lambda p: p.stat().st_mtime)
    status = "failed" if returncode != 0 or timed_out else "ok"
    if status == "ok":
        summary, problem = read_summary(new[-1] if new else None, workdir)
        if problem:  # said where report_failure shows it: the last line of stderr.txt
            status = "failed"
            with open(workdir / "stderr.txt", "a") as err:
                err.write(f"\nbenchmark run: exit 0 but {problem}: the run did not end as the scripts do, so it "
                          "counts as failed\n")
        elif summary["stopped"]:
            status = "stopped"
    return replace(
        run, run_dir=f"{run.workdir}/runs/{new[-1].name}" if new else None, status=status, returncode=returncode,
        wall_seconds=round(wall_seconds, 2),
        utilisation={"interval_s": interval, "cpu_percent": cpu, "gpu_percent": gpu},
    )


def read_summary(run_dir: Optional[Path], workdir: Path) -> tuple[Optional[dict], str]:
    """(the summary.json that a script writes at the end of every run (benchmark/common.py), ""), or (None, what
    is wrong): no new run directory in WORKDIR/runs, no summary.json in it, or one without "stopped"."""
    if run_dir is None:
        return None, f"no new run directory in {workdir / 'runs'}"
    path = run_dir / "summary.json"
    if not path.exists():
        return None, f"no {path}"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"cannot read {path} ({type(e).__name__}: {e})"
    if not isinstance(summary, dict) or "stopped" not in summary:
        return None, f'no "stopped" in {path}'
    return summary, ""


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0))


def run_locally(runs: list[ManifestEntry], experiment_dir: Path, interval: float, max_parallel: int,
                timeout: Optional[float] = None, groups: Optional[list[list[str]]] = None) -> Iterator[ManifestEntry]:
    """Executes the runs here, at most MAX_PARALLEL at once; yields each entry as its run ends. With GROUPS (one
    list of GPUs per run at once, gpu_groups), a run takes a group that no running run holds and gives it back
    when it ends. The runs share the runner's process group, so Ctrl-C reaches them too: they checkpoint and stop."""
    free: queue.Queue = queue.Queue()
    for group in groups or [None] * max_parallel:
        free.put(group)

    def one(run: ManifestEntry) -> ManifestEntry:
        gpus = free.get()
        try:
            return execute(run, experiment_dir, interval, timeout, gpus)
        finally:
            free.put(gpus)

    pool = ThreadPoolExecutor(max_workers=max_parallel)
    try:
        futures = [pool.submit(one, run) for run in runs]
        for future in as_completed(futures):
            yield future.result()
    finally:  # after Ctrl-C, the runs that have not started yet do not start
        pool.shutdown(cancel_futures=True)


def slurm_executor(cfg: Config, experiment_dir: Path, name: str, cpus_per_task: int):
    """A submitit executor for SLURM jobs of one task per node with CPUS_PER_TASK cores (mpirun starts
    the ranks inside the allocation); submitit keeps its logs in EXPERIMENT_DIR/slurm. Raises
    RuntimeError where there is no SLURM."""
    import submitit

    executor = submitit.AutoExecutor(folder=experiment_dir / "slurm", cluster="slurm")
    parameters = {"name": name, "nodes": cfg.slurm_nodes, "tasks_per_node": 1, "cpus_per_task": cpus_per_task,
                  "gpus_per_node": cfg.slurm_gpus_per_node, "timeout_min": cfg.slurm_time}
    if cfg.slurm_partition:
        parameters["slurm_partition"] = cfg.slurm_partition
    executor.update_parameters(**parameters)
    return executor


def run_on_slurm(runs: list[ManifestEntry], experiment_dir: Path, interval: float, executor) -> Iterator[ManifestEntry]:
    """Submits the runs as one job array, each job executing its run inside its allocation; yields
    each entry as its job ends. A job that dies itself (time limit, node failure) yields a failed
    entry with returncode -1 and wall_seconds 0."""
    import submitit

    with executor.batch():
        jobs = [executor.submit(execute, run, experiment_dir.resolve(), interval) for run in runs]
    tqdm.write(
        f"submitted {len(jobs)} SLURM jobs ({jobs[0].job_id.split('_')[0]}), "
        f"submitit logs in {experiment_dir / 'slurm'}"
    )
    run_of = {job.job_id: run for job, run in zip(jobs, runs)}
    for job in submitit.helpers.as_completed(jobs):
        try:
            yield job.result()
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
            run = run_of[job.job_id]
            tqdm.write(
                f"SLURM job {job.job_id} ({run.workdir}) died: {type(e).__name__}: {str(e)[-2000:]}", file=sys.stderr
            )
            yield replace(run, run_dir=None, status="failed", returncode=-1, wall_seconds=0.0, utilisation=None)


# ---------------------------------------------------------------------------------------------
# The manifest and main


def earlier_entries(path: Path) -> dict[tuple, ManifestEntry]:
    """The entries of an earlier invocation of the same experiment, by run (ManifestEntry.key); a run done again
    replaces its entry, the others are kept."""
    return {entry.key: entry for entry in read_manifest(path)} if path.exists() else {}


def launch_of(entry: ManifestEntry) -> str:
    """How a run (planned, or as its manifest entry) is launched: its ranks and its script's flags, without the
    commit tag and the checkpoint it continued from (a run continued after a commit, or from a checkpoint, is the
    same run)."""
    start = next(i for i, arg in enumerate(entry.command) if Path(arg).name == entry.script) + 1
    flags = [arg for arg in entry.command[start:] if not arg.startswith("commit-")]
    if "--resume" in flags:
        at = flags.index("--resume")
        del flags[at : at + 2]
    return f"-np {entry.ranks} {entry.script} {shlex.join(flags)}"


def checkpoint_of(run: ManifestEntry, run_dir: Path, fewer_steps: bool = False) -> Optional[Path]:
    """The complete checkpoint in an earlier launch's RUN_DIR of the same run, or None: GALA's directory with every
    agent's file, the other scripts' checkpoint.pt. The run directory must be this run's: its config.json has the
    run's game, seed, steps and shape (the script refuses a checkpoint of another game or shape anyway); with
    FEWER_STEPS, the steps of a run that this one continues to more (at most the run's)."""
    config = run_dir / "config.json"
    if not config.is_file():
        return None
    try:
        args = json.loads(config.read_text())
    except ValueError:
        return None
    planned = {"env_id": run.env_id, "seed": run.seed, "total_envs": run.simulators, "world_size": run.ranks}
    if fewer_steps:
        if not isinstance(args.get("total_timesteps"), int) or args["total_timesteps"] > run.total_timesteps:
            return None
    else:
        planned["total_timesteps"] = run.total_timesteps
    if any(args.get(key) != value for key, value in planned.items()):
        return None
    if run.algorithm == "gala_a2c":
        path = run_dir / "checkpoint"
        return path if all((path / f"agent{r}.pt").is_file() for r in range(run.ranks)) else None
    path = run_dir / "checkpoint.pt"
    return path if path.is_file() else None


def continued(run: ManifestEntry, experiment_dir: Path, extends: Optional[str] = None) -> ManifestEntry:
    """RUN, continuing from the newest complete checkpoint that an earlier launch of it left in its workdir (one
    cut short by a signal, a --timeout, a crash, or a runner that was killed itself), with --resume; where there is
    none, from that of the same run in the experiment EXTENDS (beside this one) that had fewer steps; RUN as it is
    where there is neither. Its run writes a new run directory whose config.json names the checkpoint (`resume`,
    relative to the run's workdir) and its step (`start_step`): the report joins the parts into one curve."""
    workdir = experiment_dir / run.workdir
    places = [(workdir, False)] + ([(experiment_dir.parent / extends / run.workdir, True)] if extends else [])
    for place, fewer_steps in places:
        earlier = sorted((place / "runs").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
        found = next((c for c in (checkpoint_of(run, d, fewer_steps) for d in earlier) if c is not None), None)
        if found is not None:
            return replace(run, command=[*run.command, "--resume", os.path.relpath(found, workdir)])
    return run


def not_yet_ok(
    runs: list[ManifestEntry], entries: dict[tuple, ManifestEntry]
) -> tuple[list[ManifestEntry], list[ManifestEntry]]:
    """Splits RUNS into (to run, skipped): skipped are those the manifest ENTRIES have ok. Raises ConfigError
    if one of those was launched otherwise: continuing would mix two experiments under one name."""
    todo, skipped, changed = [], [], []
    for run in runs:
        entry = entries.get(run.key)
        if entry is None or entry.status != "ok":
            todo.append(run)
        elif launch_of(entry) != launch_of(run):
            changed.append((entry, run))
        else:
            skipped.append(run)
    if changed:
        entry, run = changed[0]
        raise ConfigError(
            f"{len(changed)} run(s) already ok in this experiment were launched otherwise, e.g. {run.workdir}: "
            f"{launch_of(entry)} (now {launch_of(run)}); continue it with the same flags, "
            "or give another --name"
        )
    return todo, skipped


def write_manifest(path: Path, entries: dict[tuple, ManifestEntry]) -> None:
    """Writes the entries sorted by run, atomically (temporary file, then rename)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps([asdict(entries[key]) for key in sorted(entries)], indent=1))
    os.replace(temporary, path)


def report_failure(entry: ManifestEntry, experiment_dir: Path, lines: int = 15) -> None:
    """Says which run failed, its exit code and the last lines of its stderr."""
    stderr = experiment_dir / entry.workdir / "stderr.txt"
    tail = stderr.read_text(errors="replace").splitlines()[-lines:] if stderr.exists() else []
    tqdm.write(
        f"{entry.status.upper()} {entry.label} {entry.env_id} sims{entry.simulators} seed{entry.seed}: "
        f"exit {entry.returncode}; last lines of {stderr}:" + "".join(f"\n    {line}" for line in tail),
        file=sys.stderr,
    )


def run_experiment(cfg: Config) -> int:
    """Plans the runs (exit 2 if a total does not split), leaves out those already ok in the
    experiment's manifest, prints the others (--dry-run) or runs them locally or on SLURM, keeping
    the manifest; exit 1 if any run failed."""
    try:
        planned = plan_runs(cfg)
        experiment_dir = cfg.out / planned[0].experiment
        manifest_path = experiment_dir / "manifest.json"
        entries = earlier_entries(manifest_path)
        runs, skipped = not_yet_ok(planned, entries)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs = [continued(run, experiment_dir, PRESETS[cfg.preset].extends) for run in runs]
    said = sys.stderr if cfg.dry_run else sys.stdout
    if entries:
        print(f"skipped {len(skipped)} of {len(planned)} runs, already ok in {manifest_path}", file=said)
    resumed = sum("--resume" in run.command for run in runs)
    if resumed:
        print(f"{resumed} run(s) continue from the checkpoint an earlier launch left", file=said)
    if not runs:
        return 0
    largest = max(run.ranks for run in runs) * cfg.threads
    max_parallel = cfg.max_parallel or max(1, cores() // largest)
    gpus, per_run = visible_gpus(), max(gpu_ranks(run) for run in runs)
    groups = None
    if gpus and per_run and not cfg.slurm:  # each run at once on GPUs of its own
        max_parallel = cfg.max_parallel or max(1, min(max_parallel, len(gpus) // min(per_run, len(gpus))))
        groups = gpu_groups(gpus, per_run, max_parallel)
    on_gpus = f" and {len(gpus)} GPUs ({len(groups[0])} per run)" if groups else ""
    if cfg.dry_run:
        for run in runs:
            print(f"cd {shlex.quote(str(experiment_dir / run.workdir))} && {shlex.join(run.command)}")
        where = "on SLURM" if cfg.slurm else f"at most {max_parallel} at once on {cores()} cores{on_gpus}"
        print(f"{len(runs)} runs, {where}; nothing run (--dry-run)", file=sys.stderr)
        return 0

    if cfg.slurm:
        try:
            executor = slurm_executor(
                cfg, experiment_dir, f"bench-{runs[0].experiment}", cfg.slurm_cpus_per_task or largest
            )
        except RuntimeError as e:  # submitit finds no SLURM here
            print(f"error: --slurm: {e}", file=sys.stderr)
            return 2
        results = run_on_slurm(runs, experiment_dir, cfg.sample_interval, executor)
    else:
        print(f"{len(runs)} runs in {experiment_dir}, at most {max_parallel} at once "
              f"({cores()} cores{on_gpus}, largest run {largest // cfg.threads} ranks x {cfg.threads} threads)")
        results = run_locally(runs, experiment_dir, cfg.sample_interval, max_parallel, cfg.timeout, groups)
    experiment_dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    failed = 0
    with tqdm(total=len(runs), unit="run", desc=runs[0].experiment) as bar:
        for entry in results:
            entries[entry.key] = entry
            write_manifest(manifest_path, entries)
            if entry.status != "ok":
                failed += 1
                report_failure(entry, experiment_dir)
            bar.set_postfix(failed=failed, refresh=False)
            bar.update()
    print(f"{len(runs) - failed} of {len(runs)} runs ok, {failed} failed, {time.monotonic() - began:.0f} s; "
          f"manifest: {manifest_path}")
    return 1 if failed else 0
