"""Reading the runs of an experiment into one `RunRecord` each, whatever the source: locally from
`bench_runs/<experiment>/manifest.json` and each run's TensorBoard events, config.json, summary.json and
eval.json (the contract in benchmark/common.py), or online from W&B (the runs of one group, their config
and history)."""

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from benchmark.common import read_manifest, scalar_events
from benchmark.report.games import game_of
from benchmark.report.stats import final_score

ALGORITHMS = ("a2c_allreduce", "gala_a2c", "a3c_gpu", "impala")
"""the `algorithm` of config.json and the manifest, in the order tables and legends use"""
GALA, A2C = "gala_a2c", "a2c_allreduce"


def label_order(labels) -> list[str]:
    """Tables and legends: the algorithms in ALGORITHMS order, each followed by its variants (alphabetically)."""

    def key(label: str) -> tuple:
        base = next((a for a in ALGORITHMS if label == a or label.startswith(a.split("_")[0])), label)
        return (ALGORITHMS.index(base) if base in ALGORITHMS else len(ALGORITHMS), label != base, label)

    return sorted(set(labels), key=key)


# ---------------------------------------------------------------------------------------------
# One record per run, whatever the source


@dataclass
class Series:
    """One logged scalar of a run: global steps, wall seconds since the run's first event, values."""

    step: np.ndarray = field(default_factory=lambda: np.zeros(0))
    wall: np.ndarray = field(default_factory=lambda: np.zeros(0))
    value: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.value)

    @staticmethod
    def by_step(step, wall, value) -> "Series":
        """Sorted by global step (stable). Logs are not always in step order: GALA's rank 0 logs the
        other agents' games when their lists arrive, A3C's store each worker's at that worker's step."""
        step, wall, value = (np.asarray(x, dtype=float) for x in (step, wall, value))
        order = np.argsort(step, kind="stable")
        return Series(step[order], wall[order], value[order])


@dataclass
class RunRecord:
    """A run as the report sees it; `status` is "ok" or "failed" (failed runs are listed in the
    report and left out of every statistic)."""

    name: str
    """where it came from: the workdir in the experiment, or the W&B run path"""
    algorithm: str
    env_id: str
    seed: int
    simulators: int
    total_timesteps: int
    status: str
    label: str = ""
    """what the tables and figures group by: the algorithm, or a variant's label (default: the algorithm)"""
    returns: Series = field(default_factory=Series)
    """charts/episodic_return: one point per finished game"""
    sps: Series = field(default_factory=Series)
    disagreement: Series = field(default_factory=Series)
    disagreement_relative: Series = field(default_factory=Series)
    grad_cosine: Series = field(default_factory=Series)
    """gossip/grad_cosine: the mean pairwise cosine of GALA's agents' gradients at a measured update"""
    dead_units: dict[str, Series] = field(default_factory=dict)
    """layer (HIDDEN) -> network/dead_units_<layer>: the share of its units no observation of a batch activates"""
    eval_argmax: Optional[float] = None
    eval_sampled: Optional[float] = None
    cpu_percent: list[float] = field(default_factory=list)
    gpu_percent: Optional[list[float]] = None
    summary: dict = field(default_factory=dict)
    """the run's summary.json (every rank's counters under "ranks"); {} where there is none (W&B)"""
    config: dict = field(default_factory=dict)
    """the run's arguments (config.json, or the W&B run's config)"""
    note: str = ""
    """why a run failed, or what is missing"""
    final_window: float = 0.1
    """the final score averages the games of this last fraction of the run's steps (--final-window)"""

    def __post_init__(self):
        self.label = self.label or self.algorithm

    @property
    def game(self) -> str:
        return game_of(self.env_id)

    @property
    def final(self) -> float:
        """The run's final score (nan when it logged no episode)."""
        return final_score(self.returns.step, self.returns.value, self.total_timesteps, self.final_window)

    @property
    def end(self) -> tuple[float, float]:
        """(global step, wall second) of the run's last logged point."""
        logged = [s for s in (self.returns, self.sps) if len(s)]
        return max(s.step.max() for s in logged), max(s.wall.max() for s in logged)


TAGS = {
    "returns": "charts/episodic_return",
    "sps": "charts/SPS",
    "disagreement": "gossip/disagreement",
    "disagreement_relative": "gossip/disagreement_relative",
    "grad_cosine": "gossip/grad_cosine",
}
"""RunRecord series <- TensorBoard tag (= W&B history key under sync_tensorboard)"""
HIDDEN = ("conv1", "conv2", "conv3", "fc")
"""the scripts' hidden layers (their Agent.dead_units, logged as network/dead_units_<layer>)"""
DEAD_UNITS = {layer: f"network/dead_units_{layer}" for layer in HIDDEN}


# ---------------------------------------------------------------------------------------------
# Reading the runs: local (manifest + TensorBoard) and W&B


def read_events(run_dir: Path) -> dict[str, Series]:
    """Every TensorBoard scalar of a run directory, with wall seconds since its first event (the
    writer's creation), which Fig 1d–g needs. A run that continued from an earlier launch's checkpoint
    (its config.json names it in `resume` and its step in `start_step`) is joined to that launch's
    events, read the same way: the earlier ones up to that step, then its own, their wall seconds counted
    on from the earlier launch's last event at or before that step (the time the earlier launch spent
    past its checkpoint was work done again, and is not counted)."""
    start, events = scalar_events(run_dir)
    own = {tag: Series.by_step([e.step for e in es], [e.wall_time - start for e in es], [e.value for e in es])
           for tag, es in events.items()}
    config = read_json(run_dir / "config.json")
    if not config.get("resume"):
        return own
    earlier_dir = (run_dir.parent.parent / config["resume"]).parent  # the run's cwd / runs/<name>/checkpoint(.pt)
    if not earlier_dir.is_dir():
        return own
    earlier, cut = read_events(earlier_dir), config["start_step"]
    kept = {tag: series.step <= cut for tag, series in earlier.items()}
    offset = max((float(series.wall[kept[tag]].max()) for tag, series in earlier.items() if kept[tag].any()),
                 default=0.0)
    joined = {}
    for tag in {*earlier, *own}:
        before, after = earlier.get(tag, Series()), own.get(tag, Series())
        keep = kept.get(tag, np.zeros(0, dtype=bool))
        joined[tag] = Series.by_step(*(np.concatenate([getattr(before, key)[keep], getattr(after, key) + shift])
                                       for key, shift in (("step", 0), ("wall", offset), ("value", 0))))
    return joined


def load_local(experiment: Path) -> list[RunRecord]:
    """The runs of one experiment directory, from its manifest. A manifest entry with status ok
    whose run directory is missing counts as failed. A run that ended on its wall-clock budget
    (--max-seconds: summary.json's out_of_time) is as long as the steps it made."""
    records = []
    for entry in read_manifest(experiment / "manifest.json"):
        run_dir = experiment / entry.run_dir if entry.run_dir else None
        status = entry.status
        note = {"ok": "", "stopped": "stopped by a signal"}.get(status, f"exit {entry.returncode}")
        if run_dir is None or not run_dir.is_dir():
            status, note = "failed", note or "no run directory"
        read = status == "ok"
        events = read_events(run_dir) if read else {}
        config, summary, evaluation = (read_json(run_dir / name) if read else {}
                                       for name in ("config.json", "summary.json", "eval.json"))
        total = summary["global_step"] if summary.get("out_of_time") else config.get("total_timesteps")
        utilisation = entry.utilisation or {}
        records.append(RunRecord(
            name=f"{experiment.name}/{entry.workdir}", algorithm=entry.algorithm, label=entry.label,
            env_id=entry.env_id,
            seed=config.get("seed", entry.seed), simulators=config.get("total_envs", entry.simulators),
            total_timesteps=total or entry.total_timesteps, status=status, note=note,
            **{key: events.get(tag, Series()) for key, tag in TAGS.items()},
            dead_units={layer: events[tag] for layer, tag in DEAD_UNITS.items() if tag in events},
            eval_argmax=evaluation.get("argmax", {}).get("mean", last_value(events, "eval/argmax_return_mean")),
            eval_sampled=evaluation.get("sampled", {}).get("mean", last_value(events, "eval/sampled_return_mean")),
            cpu_percent=list(utilisation.get("cpu_percent") or []), gpu_percent=utilisation.get("gpu_percent"),
            summary=summary, config=config,
        ))
    return records


def read_json(path: Path) -> dict:
    """The JSON object in PATH, {} if there is no such file."""
    return json.loads(path.read_text()) if path.exists() else {}


def last_value(series: dict[str, Series], tag: str) -> Optional[float]:
    return float(series[tag].value[-1]) if tag in series and len(series[tag]) else None


def wandb_unavailable() -> Optional[str]:
    """Why W&B cannot be reached (offline mode, no API key), or None."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        return f"WANDB_MODE={mode}: W&B is not reachable; report on the local runs instead (--experiment)"
    try:
        import wandb

        wandb.Api()
    except Exception as e:  # noqa: BLE001 -- no API key, no network: wandb raises several types
        return f"cannot use the W&B API ({type(e).__name__}: {e})"
    return None


def load_wandb(project: str, entity: Optional[str], group: Optional[str]) -> list[RunRecord]:
    """The runs of a W&B project (one group if given): config, the TensorBoard keys of their history
    (scan_history: every row, not a sample) with `_runtime` as wall seconds, and the machine's CPU
    (mean over cores of system.cpu.<i>.cpu_percent) and GPU from the system metrics. A run that
    did not finish counts as failed."""
    import wandb

    api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    records = []
    for run in api.runs(path, filters={"group": group} if group else None):
        config = dict(run.config)
        exp_name = config.get("exp_name", "").removesuffix("_atari")  # the script's name, or a variant's label
        algorithm = next((t for t in run.tags if t in ALGORITHMS), exp_name or "?")
        series, dead = {}, {}
        for key, tag in (*TAGS.items(), *DEAD_UNITS.items()):
            rows = [r for r in run.scan_history(keys=["global_step", tag, "_runtime"])]
            found = Series.by_step([r["global_step"] for r in rows], [r["_runtime"] for r in rows],
                                   [r[tag] for r in rows])
            if key in TAGS:
                series[key] = found
            elif len(found):
                dead[key] = found
        cpu, gpu = [], None
        try:
            system = run.history(stream="events", pandas=True)
            cores = [c for c in system.columns if c.startswith("system.cpu.") and c.endswith(".cpu_percent")]
            gpus = [c for c in system.columns if c.startswith("system.gpu.") and c.endswith(".gpu")]
            cpu = system[cores].mean(axis=1).dropna().tolist() if cores else []
            gpu = system[gpus].mean(axis=1).dropna().tolist() if gpus else None
        except Exception as e:  # noqa: BLE001 -- system metrics are optional; the report says none were found
            print(f"note: no W&B system metrics for {run.id}: {type(e).__name__}: {e}", file=sys.stderr)
        records.append(RunRecord(
            name=f"{path}/{run.id}", algorithm=algorithm, label=exp_name or algorithm, env_id=config.get("env_id", "?"),
            seed=int(config.get("seed", 0)), simulators=int(config.get("total_envs", 0)),
            total_timesteps=int(config.get("total_timesteps", 0)),
            status="ok" if run.state == "finished" else "failed",
            note="" if run.state == "finished" else f"state {run.state}",
            eval_argmax=run.summary.get("eval/argmax_return_mean"),
            eval_sampled=run.summary.get("eval/sampled_return_mean"),
            cpu_percent=cpu, gpu_percent=gpu, config=config, dead_units=dead, **series,
        ))
    return records
