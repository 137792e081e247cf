"""`python -m benchmark report`: the paper's figures and tables from the runs of an experiment.

Reads the runs of `python -m benchmark run` — locally from `bench_runs/<experiment>/manifest.json`
and each run's TensorBoard events, config.json, summary.json and eval.json (the contract in
benchmark/common.py), or online from W&B (`--wandb`: the runs of one group, their config and history) —
into one `RunRecord` each, then into a pandas table of one row per run (`runs_table`: label, game,
simulators, seed, final score, score per quarter of the steps, score at equal wall-clock time, SPS,
gossip statistics), from which every table of report.md is a group-by, and writes into `--out`
(default `<experiment>/report/`):

- `returns_vs_steps.png`, `returns_vs_time.png` (GALA paper Fig 1b–g): episodic return against global
  steps and against wall-clock seconds, one panel per comparison (A2C vs GALA; each variant of GALA
  beside both; A2C vs the other baselines), one row of panels per game; each seed a thin line, the
  mean over seeds bold (on the steps or seconds that every seed reached);
- `success_vs_simulators.png` (Fig 1a): share of runs whose final score reaches a fraction of the
  game's nominal score, against the number of simulators;
- `disagreement.png` (Fig 2): GALA's relative disagreement against global steps, a line per run;
- `throughput.png` (Fig 3): steps per second and CPU (GPU) utilisation per label;
- `report.md`: runs found, final scores (mean, std, IQM with rliable's stratified-bootstrap CI), the
  score per quarter of the steps, the score at equal wall-clock time, scores normalised by A2C's with
  bootstrap CIs per step and per second, success shares, paired t-tests of GALA vs A2C (as the authors'
  rebuttal did for Fig 1a), the argmax evaluation (Table 1), SPS ratios, GALA's gossip statistics.

A variant of an algorithm (`python -m benchmark run --variant LABEL=...`) is its own line, row and bar
under its label everywhere but the paired GALA-vs-A2C tests, which take the plain runs. The statistics
are small pure functions (`final_score`, `iqm_with_ci`, `paired_ttest`, `success_share`, `run_sps`,
`score_at`) that the tests call directly; `compute_report` gathers report.md's numbers as tables,
`format_report` writes them out, the plot functions only draw. `--wandb-report` also builds the same view
as a W&B report (wandb_workspaces) and prints its URL.

    python -m benchmark report                                  # the newest bench_runs/<experiment>
    python -m benchmark report --experiment bench_runs/paper --nominal Pong=18 Breakout=400
    python -m benchmark report --wandb --wandb-group paper --wandb-report
"""

import json
import math
import os
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
import scipy.stats
import tyro

from benchmark.common import read_manifest, scalar_events

ALGORITHMS = ("a2c_allreduce", "gala_a2c", "a3c_gpu", "impala")
"""the `algorithm` of config.json and the manifest, in the order tables and legends use"""
GALA, A2C = "gala_a2c", "a2c_allreduce"

RANDOM_SCORES = {
    "BeamRider": 363.9,
    "Breakout": 1.7,
    "Pong": -20.7,
    "Qbert": 163.9,
    "Seaquest": 68.4,
    "SpaceInvaders": 148.0,
}
"""Random-play scores of the GALA games: Mnih et al. 2015 ("Human-level control through deep
reinforcement learning", Nature 518, Extended Data Table 2, "Random Play"), the values also used by
Dopamine/rliable (checked against google-research/reincarnating_rl, atari_scores.py). A game not
listed counts as 0."""


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


def game_of(env_id: str) -> str:
    """`Pong-v5` -> `Pong`: the key of RANDOM_SCORES and of --nominal."""
    return env_id.split("-")[0]


TAGS = {
    "returns": "charts/episodic_return",
    "sps": "charts/SPS",
    "disagreement": "gossip/disagreement",
    "disagreement_relative": "gossip/disagreement_relative",
}
"""RunRecord series <- TensorBoard tag (= W&B history key under sync_tensorboard)"""


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
        series = {}
        for key, tag in TAGS.items():
            rows = [r for r in run.scan_history(keys=["global_step", tag, "_runtime"])]
            series[key] = Series.by_step([r["global_step"] for r in rows], [r["_runtime"] for r in rows],
                                         [r[tag] for r in rows])
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
            cpu_percent=cpu, gpu_percent=gpu, config=config, **series,
        ))
    return records



# ---------------------------------------------------------------------------------------------
# Statistics: pure functions of arrays


def final_score(steps: np.ndarray, returns: np.ndarray, total_steps: int, window: float = 0.1) -> float:
    """Mean of the episodic returns logged in the last `window` of the run's global steps (steps >=
    (1 - window) x total); if none was, those of the last logged step. nan if no episode at all."""
    steps, returns = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    if len(returns) == 0:
        return math.nan
    late = steps >= (1 - window) * total_steps
    return float(returns[late].mean() if late.any() else returns[steps == steps.max()].mean())


def iqm_with_ci(scores: dict[str, np.ndarray], reps: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """Interquartile mean and its 95% stratified-bootstrap confidence interval (rliable), per key:
    scores[key] is (runs x tasks), or 1-D for one task. Returns key -> (IQM, low, high).
    rliable 1.2's StratifiedBootstrap draws its resamples from numpy's global generator (np.random.choice),
    not from the random_state it is given, so that one is seeded too (and restored afterwards)."""
    from rliable import library, metrics

    matrices = {k: np.asarray(v, dtype=float).reshape(len(v), -1) for k, v in scores.items() if len(v)}
    if not matrices:
        return {}
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch >= 7 deprecates the random_state that rliable passes
            warnings.simplefilter("ignore", FutureWarning)
            points, intervals = library.get_interval_estimates(
                matrices, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps,
                random_state=np.random.RandomState(seed),
            )
    finally:
        np.random.set_state(saved)
    return {k: (float(points[k][0]), float(intervals[k][0, 0]), float(intervals[k][1, 0])) for k in matrices}


class TTest(NamedTuple):
    n: int
    t: float
    p: float


def paired_ttest(a: np.ndarray, b: np.ndarray) -> Optional[TTest]:
    """Two-sided paired t-test of a vs b (scipy.stats.ttest_rel); None with fewer than 2 pairs."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2:
        return None
    result = scipy.stats.ttest_rel(a, b)
    return TTest(len(a), float(result.statistic), float(result.pvalue))


def success_threshold(nominal: float, random: float, fraction: float) -> float:
    """The final score a run must reach: `fraction` of the way from random play to the nominal score
    (for games with negative scores such as Pong, "half the nominal score" is meaningless)."""
    return random + fraction * (nominal - random)


def success_share(finals: np.ndarray, nominal: float, random: float, fraction: float) -> float:
    """Share of the runs whose final score reaches success_threshold."""
    finals = np.asarray(finals, dtype=float)
    return float(np.mean(finals >= success_threshold(nominal, random, fraction))) if len(finals) else math.nan


def run_sps(values: np.ndarray) -> float:
    """A run's throughput: the median of its logged SPS after the first point (the first covers
    start-up); the only point if there is one; nan if none."""
    values = np.asarray(values, dtype=float)
    return float(np.median(values[1:] if len(values) > 1 else values)) if len(values) else math.nan



def quarter_scores(steps: np.ndarray, returns: np.ndarray, total_steps: int) -> list[float]:
    """Mean episodic return in each quarter of the run's global steps (nan for a quarter without a game)."""
    steps, returns = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    quarter = np.minimum((4 * steps / total_steps).astype(int), 3) if len(steps) else np.zeros(0, dtype=int)
    return [float(returns[quarter == q].mean()) if (quarter == q).any() else math.nan for q in range(4)]


def score_at(walls: np.ndarray, returns: np.ndarray, seconds: float, window: float = 0.1) -> float:
    """The score at SECONDS of wall-clock time: the mean return of the games that ended in the last `window` of
    those seconds ((1 - window) x seconds .. seconds); if none did, of the last game before; nan if none."""
    walls, returns = np.asarray(walls, dtype=float), np.asarray(returns, dtype=float)
    inside = (walls >= (1 - window) * seconds) & (walls <= seconds)
    if inside.any():
        return float(returns[inside].mean())
    before = walls <= seconds
    return float(returns[before][np.argmax(walls[before])]) if before.any() else math.nan


def trailing_mean(order_by: np.ndarray, returns: np.ndarray, smooth: int) -> tuple[np.ndarray, np.ndarray]:
    """(the games' order by ORDER_BY, the trailing mean of the last `smooth` games in that order)."""
    order = np.argsort(np.asarray(order_by, dtype=float), kind="stable")
    smoothed = pd.Series(np.asarray(returns, dtype=float)[order]).rolling(smooth, min_periods=1).mean()
    return order, smoothed.to_numpy()


def time_to(walls: np.ndarray, steps: np.ndarray, returns: np.ndarray, target: float, smooth: int) -> tuple:
    """(wall seconds, global steps) at which the trailing mean of the last `smooth` games first reaches TARGET;
    (nan, nan) if it never does. The games in the order they ended in time (GALA's agents stamp their games with
    their own step counts, which a slower agent's make late)."""
    order, smoothed = trailing_mean(walls, returns, smooth)
    walls, steps = np.asarray(walls, dtype=float)[order], np.asarray(steps, dtype=float)[order]
    reached = np.flatnonzero(smoothed >= target)
    return (float(walls[reached[0]]), float(steps[reached[0]])) if len(reached) else (math.nan, math.nan)


def rank_rates(summary: dict, config: dict) -> str:
    """Each rank's global steps per second over its own seconds of training, from summary.json: an A2C worker, a
    GALA agent and an A3C worker make num_steps x num_envs steps per update, an IMPALA actor unroll_length x
    num_envs per unroll, the learner batch_size x unroll_length per update; with the seconds it slept on purpose
    (--debug-slow-rank) where it slept. "" without counters."""
    parts = []
    for r in summary.get("ranks") or []:
        if "unrolls" in r:
            steps = r["unrolls"] * config.get("unroll_length", 0) * config.get("num_envs", 0)
        elif "central_updates" in r and "updates" not in r:
            continue  # A3C's store rank holds no simulators
        elif config.get("unroll_length"):
            steps = r["updates"] * config["unroll_length"] * config.get("batch_size", 0)
        else:
            steps = r["updates"] * config.get("num_steps", 0) * config.get("num_envs", 0)
        slept = f" (slept {r['slept']:.0f} s)" if r.get("slept") else ""
        parts.append(f"{r['rank']}: {steps / r['seconds']:.0f}{slept}" if r.get("seconds") else f"{r['rank']}: n/a")
    return ", ".join(parts)


def normalised(scores: np.ndarray, random: float, reference: float) -> np.ndarray:
    """(score - random play) / (reference - random play): 1 = the reference (A2C's mean score), 0 = random play."""
    return (np.asarray(scores, dtype=float) - random) / (reference - random)


# ---------------------------------------------------------------------------------------------
# The runs table: one row per run; every table of report.md is a group-by of it


def label_order(labels) -> list[str]:
    """Tables and legends: the algorithms in ALGORITHMS order, each followed by its variants (alphabetically)."""

    def key(label: str) -> tuple:
        base = next((a for a in ALGORITHMS if label == a or label.startswith(a.split("_")[0])), label)
        return (ALGORITHMS.index(base) if base in ALGORITHMS else len(ALGORITHMS), label != base, label)

    return sorted(set(labels), key=key)


GOSSIP = ("mix_rate", "message_age", "longest_without_mix", "finish_spread_s", "drift_updates", "weights")
"""the columns of gossip_statistics (nan for a run that is not GALA's)"""


def gossip_statistics(summary: dict) -> dict:
    """A GALA run's gossip over all its agents, from summary.json: the share of updates that mixed, the mean age
    of the mixed messages (my update count minus the sender's at its write; averaged over a ring the drift of the
    agents' counts cancels), the longest run without a mix, how much later the last agent finished than the first
    (seconds, and that in updates at the agents' mean rate: how far their counts drifted by the end), and the
    range of push-sum's weights ("-" for runs without them)."""
    ranks = summary.get("ranks") or []
    if not ranks or "mixes" not in ranks[0]:
        return dict.fromkeys(GOSSIP, math.nan)
    updates = sum(r["updates"] for r in ranks)
    ages = {}
    for r in ranks:
        for age, n in r["ages"].items():
            ages[int(age)] = ages.get(int(age), 0) + n
    mixed = sum(ages.values())
    seconds = [r["seconds"] for r in ranks]
    rate = np.mean([r["updates"] / r["seconds"] for r in ranks if r["seconds"] > 0])
    return {
        "mix_rate": sum(r["mixes"] for r in ranks) / max(updates, 1),
        "message_age": sum(a * n for a, n in ages.items()) / mixed if mixed else math.nan,
        "longest_without_mix": max(r["longest_without_mix"] for r in ranks),
        "finish_spread_s": max(seconds) - min(seconds),
        "drift_updates": (max(seconds) - min(seconds)) * rate,
        # push-sum's weights: only the runs of results/mixing made with --mixing push-sum (removed since) have them
        "weights": (f"{min(r['weight'] for r in ranks):.2f}-{max(r['weight'] for r in ranks):.2f}"
                    if "weight" in ranks[0] else "-"),
    }


def late_mean(series: Series, total_steps: int) -> float:
    """The mean of a logged scalar over the last quarter of the run's steps (nan if none was logged there)."""
    late = series.step >= 0.75 * total_steps
    return float(series.value[late].mean()) if late.any() else math.nan


def runs_table(records: list[RunRecord], targets: Optional[dict[str, float]] = None, smooth: int = 10) -> pd.DataFrame:
    """One row per run: label, algorithm, game, simulators, seed, status, note, final score, the score in each
    quarter of the steps (q1..q4), SPS, the wall seconds and steps it reached, utilisation, evaluation, each
    rank's steps per second, the seconds and steps to its game's target score (TARGETS: game -> score), and for
    GALA runs the gossip statistics of its summary.json with the mean relative disagreement of the last quarter
    of its steps. `at_time` (the score at the game's common wall-clock time) is added by compute_report."""
    rows = []
    for r in records:
        ok = r.status == "ok"
        step_end, wall_end = r.end if ok and (len(r.returns) or len(r.sps)) else (math.nan, math.nan)
        # summary.json has the true total; GALA before 2026-12-05 logged rank 0's own steps x the agents (the
        # committed stragglers runs: a slower agent made fewer), now the agents' total as rank 0 knows it.
        true_steps = (r.summary or {}).get("global_step") if ok else None
        scale = true_steps / step_end if true_steps and step_end > 0 else 1.0
        rows.append({
            "name": r.name, "label": r.label, "algorithm": r.algorithm, "game": r.game, "simulators": r.simulators,
            "seed": r.seed, "status": r.status, "note": r.note, "final": r.final if ok else math.nan,
            **dict(zip(("q1", "q2", "q3", "q4"), quarter_scores(r.returns.step, r.returns.value, r.total_timesteps)
                       if ok else [math.nan] * 4)),
            "sps": run_sps(r.sps.value) * scale if ok else math.nan, "steps": true_steps or step_end,
            "seconds": wall_end,
            "cpu": float(np.mean(r.cpu_percent)) if r.cpu_percent else math.nan,
            "gpu": float(np.mean(r.gpu_percent)) if r.gpu_percent else math.nan,
            "eval_argmax": r.eval_argmax, "eval_sampled": r.eval_sampled,
            **gossip_statistics(r.summary if ok else {}),
            "disagreement": late_mean(r.disagreement_relative, r.total_timesteps),
            "rank_rates": rank_rates(r.summary, r.config) if ok else "",
            **dict(zip(("to_target_s", "to_target_steps"), time_to(r.returns.wall, r.returns.step, r.returns.value,
                                                                 (targets or {})[r.game], smooth)
                       if ok and r.game in (targets or {}) else (math.nan, math.nan))),
        })
    table = pd.DataFrame(rows)
    order = {label: i for i, label in enumerate(label_order(table["label"]))}
    return table.sort_values(["game", "label", "simulators", "seed"],
                             key=lambda col: col.map(order) if col.name == "label" else col).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# report.md: every number computed first (compute_report -> tables), then written out (format_report)


def fmt(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None or not isinstance(x, (int, float)) or not math.isfinite(x) else f"{x:.{digits}f}"


def fmt_ci(point: float, low: float, high: float) -> str:
    return f"{fmt(point)} [{fmt(low)}, {fmt(high)}]"


def mean_std(values: pd.Series) -> str:
    """'mean ± std' over the runs (std n/a for one run); 'n/a' without a value."""
    values = values.dropna()
    if values.empty:
        return "n/a"
    return f"{fmt(values.mean())} ± {fmt(values.std(ddof=1) if len(values) > 1 else None)}"


def ttest_line(what: str, test: Optional[TTest]) -> str:
    if test is None:
        return f"- {what}: n/a (need >= 2 pairs)"
    return f"- {what}: n = {test.n}, t = {fmt(test.t, 3)}, p = {test.p:.4g}"


def markdown(table: pd.DataFrame) -> list[str]:
    """A table as markdown lines (every cell formatted already), or a line saying there is none."""
    return table.astype(str).to_markdown(index=False, disable_numparse=True).splitlines() if len(table) else ["(none)"]


def nominal_scores(ok: pd.DataFrame, given: dict[str, float]) -> dict[str, tuple[float, str]]:
    """game -> (nominal score, where it came from): --nominal if given, else the mean final score
    of the A2C runs with the fewest simulators of that game ("the nominal score is with respect to
    standard 16-simulator A2C scores", the authors' rebuttal)."""
    out = {}
    for game, runs in ok.groupby("game", sort=True):
        a2c = runs[(runs["label"] == A2C) & runs["final"].notna()]
        if game in given:
            out[game] = (given[game], "--nominal")
        elif len(a2c):
            fewest = a2c[a2c["simulators"] == a2c["simulators"].min()]
            out[game] = (float(fewest["final"].mean()),
                         f"mean final score of {len(fewest)} A2C run(s) at {fewest['simulators'].iloc[0]} simulators")
    return out


def paired(ok: pd.DataFrame, column: str) -> Optional[TTest]:
    """GALA vs A2C on COLUMN, paired over (game, simulators, seed): the plain runs, not the variants."""
    wide = ok[ok["label"].isin([GALA, A2C])].pivot_table(index=["game", "simulators", "seed"], columns="label",
                                                          values=column).dropna()
    return paired_ttest(wide[GALA], wide[A2C]) if {GALA, A2C} <= set(wide.columns) else None


@dataclass
class ReportData:
    """What report.md says, computed from the runs table (compute_report) before it is written (format_report)."""

    table: pd.DataFrame
    """runs_table with `at_time`"""
    times: dict[str, float]
    """game -> the common wall-clock seconds at which `at_time` is read (the shortest run's)"""
    scores: pd.DataFrame
    """per (game, label, simulators): n, mean, std and `iqm` (IQM, low, high) of the final scores"""
    normalised: pd.DataFrame
    """per (game, label, simulators): n, `per_step` and `per_second`: (IQM, low, high) of (score - random) /
    (A2C's mean - random) of the final scores and of the scores at equal time (None without a score at time)"""
    nominal: pd.DataFrame
    shares: dict[tuple, tuple[float, int]]
    """(game, label, simulators) -> (share of successful runs, runs), where the nominal is above random play"""
    aggregate: dict[tuple, tuple[float, float, float]]
    """(label, simulators, games, seeds) -> IQM of nominal-normalised final scores and its 95% CI"""
    ttest_shares: Optional[TTest]
    """GALA vs A2C, paired over (game, simulators) cells"""
    ttest_finals: Optional[TTest]
    """GALA vs A2C final scores, paired over (game, simulators, seed)"""
    ttest_at_time: Optional[TTest]
    """GALA vs A2C scores at equal wall-clock time, paired over (game, simulators, seed)"""
    throughput: pd.DataFrame
    """per (label, simulators): runs, median SPS, ratio to A2C's, mean CPU and GPU %"""


def compute_report(records: list[RunRecord], cfg: "Config") -> ReportData:
    """Every number of report.md, from the runs table."""
    table = runs_table(records, dict(parse_game_scores(cfg.target)), cfg.smooth)
    ok = table[table["status"] == "ok"]
    scored = ok[ok["final"].notna()]
    by_name = {r.name: r for r in records}

    # At equal wall-clock time: each game's shortest run sets the time at which every run's score is read.
    times = {game: float(runs["seconds"].min()) for game, runs in scored.groupby("game")}
    table["at_time"] = [score_at(by_name[n].returns.wall, by_name[n].returns.value, times[g], cfg.final_window)
                        if s == "ok" and g in times else math.nan
                        for n, g, s in zip(table["name"], table["game"], table["status"])]
    ok, scored = table[table["status"] == "ok"], table[(table["status"] == "ok") & table["final"].notna()]

    # Final scores, and scores normalised by A2C's mean (per step: final; per second: at time)
    cells = list(scored.groupby(["game", "label", "simulators"], sort=False))
    iqm = {}
    for game, runs in scored.groupby("game"):
        iqm.update({(game, *k): v for k, v in iqm_with_ci({k: g["final"].to_numpy() for k, g in
                                                           runs.groupby(["label", "simulators"])},
                                                          cfg.bootstrap_reps, cfg.seed).items()})
    scores = pd.DataFrame([{"game": g, "label": lab, "simulators": s, "n": len(rs), "mean": rs["final"].mean(),
                            "std": rs["final"].std(ddof=1) if len(rs) > 1 else math.nan, "iqm": iqm[g, lab, s]}
                           for (g, lab, s), rs in cells])
    reference = {(g, s): rs["final"].mean() for (g, lab, s), rs in cells if lab == A2C}
    rows = []
    for (game, label, simulators), rs in cells:
        random, ref = RANDOM_SCORES.get(game, 0.0), reference.get((game, simulators))
        if ref is None or ref <= random:
            continue
        ci = {column: iqm_with_ci({"x": normalised(rs[column].dropna(), random, ref)}, cfg.bootstrap_reps,
                                  cfg.seed).get("x") for column in ("final", "at_time")}
        rows.append({"game": game, "label": label, "simulators": simulators, "n": len(rs),
                     "per_step": ci["final"], "per_second": ci["at_time"]})
    normalised_scores = pd.DataFrame(rows)

    # Nominal scores, success, aggregate
    nominal = nominal_scores(scored, dict(parse_game_scores(cfg.nominal)))
    nominal_rows = []
    for game in sorted(scored["game"].unique()):
        random = RANDOM_SCORES.get(game, 0.0)
        if game not in nominal:
            nominal_rows.append({"game": game, "nominal": "n/a", "nominal from": "no A2C run and no --nominal",
                                 "random": fmt(random), "success threshold": "n/a"})
            continue
        value, where = nominal[game]
        warn = " (not above random play: no success share, no normalised score)" if value <= random else ""
        nominal_rows.append({"game": game, "nominal": fmt(value), "nominal from": where + warn, "random": fmt(random),
                             "success threshold": fmt(success_threshold(value, random, cfg.success_fraction))})
    usable = [g for g, (v, _) in nominal.items() if v > RANDOM_SCORES.get(g, 0.0)]
    shares = {(g, lab, s): (success_share(rs["final"], nominal[g][0], RANDOM_SCORES.get(g, 0.0),
                                          cfg.success_fraction), len(rs))
              for (g, lab, s), rs in cells if g in usable}
    matrices = {}
    for (label, simulators), rs in scored[scored["game"].isin(usable)].groupby(["label", "simulators"]):
        wide = rs.pivot_table(index="seed", columns="game", values="final").dropna()
        if len(wide):
            games = list(wide.columns)
            norm = np.column_stack([normalised(wide[g], RANDOM_SCORES.get(g, 0.0), nominal[g][0]) for g in games])
            matrices[label, simulators, tuple(games), len(wide)] = norm
    aggregate = iqm_with_ci(matrices, cfg.bootstrap_reps, cfg.seed)

    # GALA vs A2C, paired
    both = sorted({(g, s) for g, lab, s in shares if (g, GALA, s) in shares and (g, A2C, s) in shares})
    ttest_shares = paired_ttest([shares[g, GALA, s][0] for g, s in both], [shares[g, A2C, s][0] for g, s in both])

    # Throughput
    rows = []
    for (label, simulators), rs in ok.groupby(["label", "simulators"], sort=False):
        rows.append({"algorithm": label, "simulators": simulators, "runs": int(rs["sps"].notna().sum()),
                     "sps": rs["sps"].median(), "cpu": rs["cpu"].mean(), "gpu": rs["gpu"].mean()})
    throughput = pd.DataFrame(rows, columns=["algorithm", "simulators", "runs", "sps", "cpu", "gpu"]).astype(
        {"sps": float, "cpu": float, "gpu": float})
    base = throughput[throughput["algorithm"] == A2C].set_index("simulators")["sps"]
    throughput["ratio"] = throughput["sps"] / throughput["simulators"].map(base)
    return ReportData(table, times, scores, normalised_scores, pd.DataFrame(nominal_rows), shares, aggregate,
                      ttest_shares, paired(scored, "final"), paired(ok, "at_time"), throughput.sort_values(
                          "simulators", kind="stable"))


def runs_section(data: ReportData, cfg: "Config") -> list[str]:
    """The runs found, the failed ones and why."""
    table = data.table
    ok = table[table["status"] == "ok"]
    lines = ["## Runs", ""]
    counts = table.assign(ok=table["status"] == "ok", failed=table["status"] != "ok",
                          no_episode=(table["status"] == "ok") & table["final"].isna())
    counts = counts.groupby(["label", "game", "simulators"], sort=False)[["ok", "failed", "no_episode"]].sum()
    lines += markdown(counts.reset_index().rename(columns={"label": "algorithm",
                                                           "no_episode": "ok without an episode"})) + [""]
    failed = table[table["status"] != "ok"]
    lines += [f"Failed runs (excluded from every statistic): {len(failed) or 'none'}"]
    lines += [f"- {name}: {note}" for name, note in zip(failed["name"], failed["note"])] + [""]
    lines += [f"- {name}: logged no episode, final score missing" for name in ok[ok["final"].isna()]["name"]]

    return lines


def scores_section(data: ReportData, cfg: "Config") -> list[str]:
    """Final scores, the score per quarter of the steps, at equal wall-clock time, and normalised by A2C's."""
    table = data.table
    ok = table[table["status"] == "ok"]
    lines = ["## Final scores", "",
              (f"Final score of a run: mean of the episodic returns (raw game score) logged in the last "
               f"{cfg.final_window:.0%} of its global steps (at least its last logged episode). IQM: 25% "
               f"trimmed mean over runs with a 95% stratified-bootstrap CI (rliable, {cfg.bootstrap_reps} "
               f"reps, seed {cfg.seed}); each game is one task."), ""]
    lines += markdown(data.scores.assign(mean=data.scores["mean"].map(fmt), std=data.scores["std"].map(fmt),
                                         iqm=data.scores["iqm"].map(lambda ci: fmt_ci(*ci))).rename(
        columns={"label": "algorithm", "iqm": "IQM [95% CI]"})) + [""]

    lines += ["## Per quarter of the steps", "",
              "Mean episodic return in each quarter of a run's global steps: mean ± std over seeds.", ""]
    quarters = ok.groupby(["game", "label", "simulators"], sort=False).agg(
        n=("seed", "size"), **{q: (q, mean_std) for q in ("q1", "q2", "q3", "q4")}).reset_index()
    lines += markdown(quarters.rename(columns={"label": "algorithm"})) + [""]

    times = ", ".join(f"{game} {seconds:.0f} s" for game, seconds in data.times.items())
    lines += ["## At equal wall-clock time", "",
              (f"Score at equal time: the mean return of the games that ended in the last {cfg.final_window:.0%} of "
               f"each game's common time, the wall-clock seconds of its shortest run ({times or 'none'}); a "
               "continued run's seconds are those of its launches' training (report.read_events)."), ""]
    at_time = ok.groupby(["game", "label", "simulators"], sort=False).agg(
        n=("seed", "size"), seconds=("seconds", lambda s: f"{s.min():.0f}-{s.max():.0f}"),
        steps=("steps", lambda s: f"{s.min():.0f}-{s.max():.0f}"), score=("at_time", mean_std)).reset_index()
    lines += markdown(at_time.rename(columns={"label": "algorithm", "seconds": "run seconds",
                                              "steps": "run steps", "score": "score at equal time"})) + [""]

    lines += ["## Normalised by A2C", "",
              ("(score - random play) / (A2C's mean score - random play), per step (the final score) and per second "
               "(the score at equal wall-clock time): IQM over seeds with a 95% stratified-bootstrap CI (1 = A2C's "
               "mean, 0 = random play; only where A2C scored above random play)."), ""]
    lines += markdown(data.normalised.assign(
        per_step=data.normalised["per_step"].map(lambda ci: fmt_ci(*ci)),
        per_second=data.normalised["per_second"].map(lambda ci: fmt_ci(*ci) if ci else "n/a")).rename(
        columns={"label": "algorithm", "per_step": "per step: final [95% CI]",
                 "per_second": "per second: at equal time [95% CI]"})) + [""]

    return lines


def success_section(data: ReportData, cfg: "Config") -> list[str]:
    """Fig 1a's success shares, the nominal scores they are relative to, and the aggregate over games."""
    lines = ["## Success (Fig 1a)", "",
              (f"A run succeeds when its final score >= random + {cfg.success_fraction} x (nominal − random), "
               "random = random-play score of Mnih et al. 2015 (Extended Data Table 2; 0 for games not listed)."),
              ""]
    lines += markdown(data.nominal) + [""]
    lines += markdown(pd.DataFrame([{"game": g, "algorithm": a, "simulators": s, "successful share (runs)":
                                     f"{fmt(v)} ({n})"} for (g, a, s), (v, n) in data.shares.items()])) + [""]
    lines += [("Aggregate over games: IQM of nominal-normalised final scores (final − random) / (nominal − random) "
               "(1 = the nominal A2C score), over the seeds present in every game of that algorithm and simulator "
               "count; games whose nominal is not above random play are left out."), ""]
    lines += markdown(pd.DataFrame([{"algorithm": f"{label} ({simulators} sims)", "games": ", ".join(games),
                                     "seeds": seeds, "normalised IQM [95% CI]": fmt_ci(*iqm)}
                                    for (label, simulators, games, seeds), iqm in data.aggregate.items()])) + [""]

    return lines


def tests_section(data: ReportData, cfg: "Config") -> list[str]:
    """The paired GALA-vs-A2C tests, and the argmax evaluation (Table 1)."""
    table = data.table
    ok = table[table["status"] == "ok"]
    lines = ["## GALA-A2C vs A2C: paired t-tests (two-sided, scipy.stats.ttest_rel)", "",
              ttest_line("success share, paired over (game, simulators) cells (as the authors did for Fig 1a)",
                         data.ttest_shares),
              ttest_line("final score, paired over (game, simulators, seed)", data.ttest_finals),
              ttest_line("score at equal wall-clock time, paired over (game, simulators, seed)", data.ttest_at_time),
              ""]

    lines += ["## Evaluation (Table 1 style: full games after training, mean ± std over seeds of each run's mean)", ""]
    evaluated = ok[ok["eval_argmax"].notna() | ok["eval_sampled"].notna()]
    lines += (markdown(evaluated.groupby(["game", "label", "simulators"], sort=False).agg(
        n=("eval_argmax", lambda v: int(v.notna().sum())), argmax=("eval_argmax", mean_std),
        sampled=("eval_sampled", mean_std)).reset_index().rename(columns={"label": "algorithm"}))
              if len(evaluated) else ["no evaluation found (runs without --eval-episodes)"]) + [""]

    return lines


def throughput_section(data: ReportData, cfg: "Config") -> list[str]:
    """SPS per label and simulators, with the ratio to A2C's and the utilisation."""
    lines = ["## Throughput (Fig 3)", "",
              "SPS of a run: median of its logged charts/SPS after the first point; per algorithm: median over "
              "its runs (all games). Ratio: to a2c_allreduce at the same total simulators. Utilisation: mean of "
              "the whole-machine samples of each run, mean over runs" +
              (" (W&B system metrics)." if cfg.wandb else " (the runner's samples in the manifest)."), ""]
    shown = data.throughput.assign(
        sps=data.throughput["sps"].map(lambda v: fmt(v, 0)),
        ratio=data.throughput["ratio"].map(lambda v: fmt(v) if math.isfinite(v) else "n/a (no A2C run)"),
        cpu=data.throughput["cpu"].map(lambda v: fmt(v, 1)), gpu=data.throughput["gpu"].map(lambda v: fmt(v, 1)))
    lines += markdown(shown[["algorithm", "simulators", "runs", "sps", "ratio", "cpu", "gpu"]].rename(columns={
        "sps": "SPS", "ratio": "SPS / a2c_allreduce", "cpu": "CPU %", "gpu": "GPU %"})) + [""]

    return lines


def time_section(data: ReportData, cfg: "Config") -> list[str]:
    """With --target: the time each run takes to reach its game's score."""
    table = data.table
    ok = table[table["status"] == "ok"]
    lines = []
    targets = dict(parse_game_scores(cfg.target))
    if targets:
        lines += ["## Time to a score", "",
                  ("Wall-clock seconds (and global steps) at which a run's trailing mean of the last "
                   f"{cfg.smooth} games first reaches the game's target ({', '.join(cfg.target)}); seeds that never "
                   "reach it are counted in `reached` and left out of the mean. Ratio: the mean seconds over "
                   "A2C's at the same simulators."), ""]
        timed = ok[ok["game"].isin(targets)]
        cells = timed.groupby(["game", "label", "simulators"], sort=False)
        a2c = {(g, s): rs["to_target_s"].mean() for (g, lab, s), rs in cells if lab == A2C}
        lines += markdown(pd.DataFrame([{
            "game": g, "algorithm": lab, "simulators": s, "reached": f"{rs['to_target_s'].notna().sum()} of {len(rs)}",
            "seconds per seed": ", ".join(fmt(v, 0) for v in rs["to_target_s"]),
            "mean seconds": fmt(rs["to_target_s"].mean(), 0), "mean steps": fmt(rs["to_target_steps"].mean(), 0),
            "seconds / A2C's": fmt(rs["to_target_s"].mean() / a2c[g, s]) if (g, s) in a2c else "n/a",
        } for (g, lab, s), rs in cells])) + [""]

    return lines


def ranks_section(data: ReportData, cfg: "Config") -> list[str]:
    """Each rank's steps per second, and GALA's gossip over all its agents."""
    table = data.table
    ok = table[table["status"] == "ok"]
    lines = ["## Ranks (from summary.json)", "",
              ("Each rank's global steps per second over its own seconds of training (A2C's workers at the job's "
               "pace; a GALA agent, an A3C worker, an IMPALA actor at its own), and the seconds a rank slowed on "
               "purpose slept (--debug-slow-rank)."), ""]
    lines += markdown(ok[ok["rank_rates"] != ""][["label", "game", "simulators", "seed", "rank_rates"]].rename(
        columns={"label": "algorithm", "rank_rates": "steps per second by rank"})) + [""]

    gala = ok[ok["algorithm"] == GALA].dropna(subset=["mix_rate"])
    # push-sum's weights only where a run had them other than 1 (runs of the removed --mixing push-sum)
    weighted = (~gala["weights"].isin(["-", "1.00-1.00"])).any()
    lines += ["## Gossip (GALA's runs, every agent, from summary.json)", "",
              ("Mix rate: share of updates that mixed a message; message age: my update count minus the sender's "
               "when it wrote, over every mixed message of every agent (the drift of the agents' counts cancels "
               "over a ring); finish spread: how much later the last agent finished its updates than the first, "
               "and that in updates at the agents' mean rate (how far their counts drifted); "
               + ("push-sum weights: their range at the end; " if weighted else "")
               + "disagreement: the mean relative disagreement (RMS |θ_i − θ̄| / |θ̄|) logged over the last quarter "
               "of the steps."), ""]
    columns = {
        "algorithm": gala["label"], "game": gala["game"], "simulators": gala["simulators"], "seed": gala["seed"],
        "mix rate": gala["mix_rate"].map(fmt), "message age": gala["message_age"].map(fmt),
        "longest without a mix": gala["longest_without_mix"].map(lambda v: fmt(v, 0)),
        "finish spread (s)": gala["finish_spread_s"].map(lambda v: fmt(v, 0)),
        "drift (updates)": gala["drift_updates"].map(lambda v: fmt(v, 0)),
        **({"push-sum weights": gala["weights"]} if weighted else {}),
        "disagreement (last quarter)": gala["disagreement"].map(lambda v: fmt(v, 4)),
    }
    lines += markdown(pd.DataFrame(columns)) + [""]
    return lines


def format_report(data: ReportData, cfg: "Config", source: str) -> list[str]:
    """report.md's lines (without its figure list): its sections in order."""
    sections = (runs_section, scores_section, success_section, tests_section, throughput_section, time_section,
                ranks_section)
    return ["# Benchmark report", "", f"Source: {source}.", ""] + [line for section in sections
                                                                   for line in section(data, cfg)]


def parse_game_scores(items: tuple[str, ...]) -> list[tuple[str, float]]:
    """--nominal and --target: `Pong=18` or `Pong-v5=18` -> ("Pong", 18.0)."""
    out = []
    for item in items:
        game, sep, score = item.partition("=")
        if not sep:
            raise ValueError(f"--nominal and --target take GAME=SCORE, got {item!r}")
        out.append((game_of(game), float(score)))
    return out


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg): the curves are computed first (curves, comparisons), then drawn

COLOURS = {A2C: "black", GALA: "tab:blue", "a3c_gpu": "tab:green", "impala": "tab:red"}
"""a label's colour in every panel; a variant takes tab:orange beside its algorithm (an A2C variant tab:purple)"""


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def comparisons(labels: list[str]) -> list[tuple[str, list[str]]]:
    """The panels of a game: (title, labels). A2C vs GALA (the paper's pair); each variant beside A2C and its
    algorithm; a variant of both (a2c_X and gala_X) as a pair; A2C vs the other baselines."""
    present = label_order(labels)
    panels = []
    if A2C in present and GALA in present:
        panels.append(("A2C vs GALA", [A2C, GALA]))
    for label in present:
        if label not in ALGORITHMS:
            base = next((a for a in ALGORITHMS if label.startswith(a.split("_")[0])), None)
            panels.append((label, list(dict.fromkeys(x for x in (A2C, base, label) if x in present))))
    for label in present:  # a variant of both (a2c_slow, gala_slow): the pair, beside the plain A2C and GALA
        twin = "gala_" + label[len("a2c_"):] if label.startswith("a2c_") and label != A2C else None
        if twin in present:
            panels.append((f"{label} vs {twin}", [x for x in (A2C, GALA, label, twin) if x in present]))
    baselines = [a for a in (A2C, "a3c_gpu", "impala") if a in present]
    if len(baselines) > 1 or (baselines and not panels):
        panels.append(("the baselines", baselines))
    if not panels:
        panels.append(("", present))
    return panels


def curves(runs: list[RunRecord], x: str, smooth: int, points: int) -> tuple[list, Optional[tuple]]:
    """Each run's curve (x, trailing mean of its last `smooth` games) and the mean over runs on a common grid up to
    where every run has reached (None if the runs share no range). x: "step" or "wall": the games in that order."""
    lines = []
    for r in runs:
        xs = np.asarray(getattr(r.returns, x), dtype=float)
        order, smoothed = trailing_mean(xs, r.returns.value, smooth)
        lines.append((xs[order], smoothed))
    start, stop = max(xs[0] for xs, _ in lines), min(xs[-1] for xs, _ in lines)
    if len(lines) < 2 or stop <= start:
        return lines, None
    grid = np.linspace(start, stop, points)
    return lines, (grid, np.mean([np.interp(grid, xs, ys) for xs, ys in lines], axis=0))


def plot_returns(ok: list[RunRecord], x: str, smooth: int, points: int, path: Path) -> bool:
    """Episodic return (trailing mean over `smooth` games) against global steps or wall seconds: a row of panels per
    game, one panel per comparison (at most 3 a row), each seed thin and the mean over seeds bold."""
    with_episodes = [r for r in ok if len(r.returns)]
    if not with_episodes:
        return False
    games = sorted({r.game for r in with_episodes})
    panels = [(game, title, labels) for game in games
              for title, labels in comparisons([r.label for r in with_episodes if r.game == game])]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    plt = pyplot()
    fig, axes = plt.subplots(rows, columns, figsize=(max(9.5, 5 * columns), 3.8 * rows), squeeze=False,
                             sharey="row")
    for ax, (game, title, labels) in zip(axes.flat, panels):
        for label in labels:
            runs = [r for r in with_episodes if r.game == game and r.label == label]
            colour = COLOURS.get(label, "tab:purple" if label.startswith("a2c_") else "tab:orange")
            lines, mean = curves(runs, x, smooth, points)
            for xs, ys in lines:
                ax.plot(xs, ys, color=colour, lw=0.7, alpha=0.35)
            if mean is not None:
                ax.plot(*mean, color=colour, lw=2.2, label=f"{label} (mean of {len(runs)})")
            else:
                ax.plot(*lines[0], color=colour, lw=2.2, label=f"{label} ({len(runs)} run)")
        ax.set_title(f"{game}: {title}" if title else game)
        ax.set_xlabel("global steps" if x == "step" else "wall-clock seconds")
        ax.set_ylabel(f"return (mean of last {smooth} games)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("thin: each seed; bold: mean over seeds", fontsize=10)
    return save(plt, fig, path)


def save(plt, fig, path: Path) -> bool:
    """Lays the figure out, writes it as PNG (100 dpi: every figure is at least 950 pixels wide, 500 a panel) and
    frees it; True: drawn."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_success(shares: dict[tuple, tuple[float, int]], path: Path) -> bool:
    """shares[(game, label, simulators)] = (share, runs): one panel per game, share vs simulators on a log2 axis,
    one line per label."""
    if not shares:
        return False
    games = sorted({g for g, _, _ in shares})
    plt = pyplot()
    fig, axes = plt.subplots(1, len(games), figsize=(max(9, 4.5 * len(games)), 3.6), squeeze=False)
    for ax, game in zip(axes[0], games):
        for label in label_order(a for g, a, _ in shares if g == game):
            sims = sorted(s for g, a, s in shares if g == game and a == label)
            ax.plot(sims, [shares[game, label, s][0] for s in sims], marker="o", label=label,
                    color=COLOURS.get(label, None))
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(game)
        ax.set_xlabel("simulators")
        ax.set_ylabel("share of successful runs")
        ax.legend(fontsize=8)
    return save(plt, fig, path)


def plot_disagreement(ok: list[RunRecord], path: Path) -> bool:
    """GALA's runs (its variants too): relative disagreement against global steps, one panel per game, one line per
    run, a colour per label."""
    gala = [r for r in ok if r.algorithm == GALA and len(r.disagreement_relative)]
    if not gala:
        return False
    games = sorted({r.game for r in gala})
    plt = pyplot()
    fig, axes = plt.subplots(1, len(games), figsize=(max(9, 6 * len(games)), 4), squeeze=False)
    for ax, game in zip(axes[0], games):
        runs = [r for r in gala if r.game == game]
        labels = label_order(r.label for r in runs)
        colours = dict(zip(labels, [f"C{i}" for i in range(len(labels))]))
        for r in runs:
            series = r.disagreement_relative
            first = r is next(q for q in runs if q.label == r.label)
            ax.plot(series.step, series.value, lw=1, color=colours[r.label], marker="." if len(series) < 3 else None,
                    label=r.label if first else None)
        ax.set_yscale("log")
        ax.set_title(f"{game}: GALA's agents, RMS |θ_i − θ̄| / |θ̄|", fontsize=10)
        ax.set_xlabel("global steps")
        ax.legend(fontsize=8)
    return save(plt, fig, path)


def plot_throughput(throughput: pd.DataFrame, path: Path) -> bool:
    """Bars per label at each simulator count: median SPS (left), mean CPU % and GPU % (right)."""
    rows = throughput[np.isfinite(throughput["sps"])]
    if rows.empty:
        return False
    sims = sorted(rows["simulators"].unique())
    labels = label_order(rows["algorithm"])
    width = 0.8 / len(labels)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(max(10, 1.2 * len(labels) * len(sims) + 4), 4), squeeze=False)
    for i, label in enumerate(labels):
        found = rows[rows["algorithm"] == label].set_index("simulators")
        xs = [j + i * width for j, s in enumerate(sims) if s in found.index]
        at = [s for s in sims if s in found.index]
        axes[0][0].bar(xs, found.loc[at, "sps"], width, label=label)
        axes[0][1].bar(xs, found.loc[at, "cpu"].fillna(0), width, label=f"{label} CPU")
        if found["gpu"].notna().any():
            axes[0][1].bar(xs, found.loc[at, "gpu"].fillna(0), width * 0.5, hatch="//", fill=False,
                           label=f"{label} GPU")
    for ax, ylabel in zip(axes[0], ("steps per second (median over runs)", "mean utilisation %")):
        ax.set_xticks([j + width * (len(labels) - 1) / 2 for j in range(len(sims))], [f"{s} sims" for s in sims])
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    if rows["cpu"].isna().all():
        axes[0][1].text(0.5, 0.5, "no utilisation samples", ha="center", transform=axes[0][1].transAxes)
    return save(plt, fig, path)


# ---------------------------------------------------------------------------------------------
# The W&B report


def wandb_report(cfg: "Config", markdown: str):
    """A W&B report of the group: episodic return vs global step and vs wall time, disagreement,
    SPS, grouped by the script (config exp_name), and report.md as a markdown block. Built without
    network; `.save()` needs it."""
    import wandb_workspaces.reports.v2 as wr

    group = wr.Config("exp_name")
    entity = {"entity": cfg.wandb_entity} if cfg.wandb_entity else {}  # default: the API key's (needs network)
    runset = wr.Runset(**entity, project=cfg.wandb_project, name=cfg.wandb_group or cfg.wandb_project,
                       filters=f"Group = '{cfg.wandb_group}'" if cfg.wandb_group else "")
    panels = [
        wr.LinePlot(title="episodic return vs global steps", x="global_step", y=["charts/episodic_return"],
                    groupby=group, groupby_aggfunc="mean", groupby_rangefunc="stderr", smoothing_factor=0.6),
        wr.LinePlot(title="episodic return vs wall time", x="RelativeTime(Wall)", y=["charts/episodic_return"],
                    groupby=group, groupby_aggfunc="mean", groupby_rangefunc="stderr", smoothing_factor=0.6),
        wr.LinePlot(title="GALA disagreement (relative)", x="global_step", y=["gossip/disagreement_relative"]),
        wr.BarPlot(title="steps per second", metrics=["charts/SPS"], groupby=group, groupby_aggfunc="median"),
    ]
    return wr.Report(
        **entity, project=cfg.wandb_project, title=f"gala-rl benchmark: {cfg.wandb_group or cfg.wandb_project}",
        description="GALA-A2C vs A2C (Allreduce), A3C, IMPALA: python -m benchmark report",
        blocks=[wr.PanelGrid(runsets=[runset], panels=panels), wr.MarkdownBlock(text=markdown)],
    )


# ---------------------------------------------------------------------------------------------
# The command line


@dataclass
class Config:
    """Figures and report.md from an experiment's runs (local manifest + TensorBoard, or W&B)."""

    experiment: tuple[Path, ...] = ()
    """experiment directories (each with a manifest.json); default: the newest one under bench_runs/"""
    out: Optional[Path] = None
    """where figures and report.md go; default <first experiment>/report (W&B: bench_runs/<group>/report)"""
    wandb: bool = False
    """read the runs from W&B instead of the local directories (needs network and an API key)"""
    wandb_project: str = "gala-rl-benchmark"
    """W&B project of the runs"""
    wandb_entity: Optional[str] = None
    """W&B entity (team or user); default: the API key's"""
    wandb_group: Optional[str] = None
    """W&B group (= experiment name) of the runs; default: every run of the project"""
    wandb_report: bool = False
    """also build and save a W&B report of the group and print its URL (needs network)"""
    success_fraction: float = 0.5
    """a run succeeds when final >= random + FRACTION x (nominal - random)"""
    nominal: tuple[str, ...] = ()
    """nominal scores GAME=SCORE (e.g. Pong=18); default per game: mean final score of its A2C runs
    with the fewest simulators"""
    bootstrap_reps: int = 2000
    """stratified-bootstrap replications of the IQM confidence intervals"""
    seed: int = 0
    """seed of the bootstrap"""
    final_window: float = 0.1
    """final score: mean of the episodes in this last fraction of a run's global steps"""
    smooth: int = 10
    """return curves and the time to a target: trailing mean over this many games"""
    target: tuple[str, ...] = ()
    """target scores GAME=SCORE (e.g. Breakout=10): the time and steps at which each run first reaches it"""
    grid_points: int = 200
    """return curves: points of the common grid the seeds are interpolated on"""


FIGURES = {
    "returns_vs_steps.png": "episodic return vs global steps (Fig 1b–c)",
    "returns_vs_time.png": "episodic return vs wall-clock time (Fig 1d–g)",
    "success_vs_simulators.png": "share of successful runs vs simulators (Fig 1a)",
    "disagreement.png": "GALA parameter disagreement vs global steps (Fig 2)",
    "throughput.png": "SPS and utilisation per algorithm (Fig 3)",
}


def newest_experiment(root: Path = Path("bench_runs")) -> Optional[Path]:
    """The experiment whose manifest was written last (not the directory: a report written into
    an older experiment would make it look new)."""
    found = [d for d in root.glob("*") if (d / "manifest.json").exists()] if root.is_dir() else []
    return max(found, key=lambda d: (d / "manifest.json").stat().st_mtime, default=None)


def apply_final_window(records: list[RunRecord], window: float) -> None:
    """Sets the final window of every run. A run whose last logged step is short of that window
    (stopped by a signal, pre-empted, a W&B run cut short) has no final score: it counts as failed,
    with the step it reached."""
    for r in records:
        r.final_window = window
        if r.status == "ok" and len(r.sps) and r.sps.step.max() < (1 - window) * r.total_timesteps:
            r.status, r.note = "failed", f"stopped at step {r.sps.step.max():.0f} of {r.total_timesteps}"


def duplicated_runs(records: list[RunRecord]) -> list[str]:
    """Runs that would be counted twice, or cells that mix run lengths: two ok runs with the same
    (label, game, simulators, seed), e.g. from two experiments or a W&B project read without a
    group, or one cell with runs of different total steps (runs ended by their --max-seconds: different
    budgets)."""
    problems, seen, lengths = [], {}, defaultdict(set)
    for r in (r for r in records if r.status == "ok"):
        key = (r.label, r.env_id, r.simulators, r.seed)
        if key in seen:
            problems.append(f"{r.name} and {seen[key]} are both {r.label} on {r.env_id} with {r.simulators} "
                            f"simulators, seed {r.seed}")
        seen[key] = r.name
        budget = (r.summary or {}).get("out_of_time") and (r.config or {}).get("max_seconds")
        lengths[key[:3]].add(f"{budget:g} s" if budget else r.total_timesteps)  # a budget run is as long as its seconds
    problems += [f"{a} on {g} with {s} simulators mixes runs of lengths {sorted(map(str, n))} (steps or seconds)"
                 for (a, g, s), n in lengths.items() if len(n) > 1]
    return problems


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m benchmark report ARGV`."""
    return make_report(tyro.cli(Config, args=argv, prog="python -m benchmark report"))


def make_report(cfg: Config) -> int:
    """Reads the runs, refuses (exit 2) what cannot be compared, writes the figures and report.md."""
    try:
        parse_game_scores(cfg.nominal + cfg.target)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.wandb or cfg.wandb_report:
        problem = wandb_unavailable()
        if problem:
            print(f"error: {'--wandb' if cfg.wandb else '--wandb-report'}: {problem}", file=sys.stderr)
            return 2
    if cfg.wandb:
        records = load_wandb(cfg.wandb_project, cfg.wandb_entity, cfg.wandb_group)
        source = f"W&B project {cfg.wandb_project}" + (f", group {cfg.wandb_group}" if cfg.wandb_group else "")
        out = cfg.out or Path("bench_runs") / (cfg.wandb_group or cfg.wandb_project) / "report"
    else:
        experiments = list(cfg.experiment) or [e for e in [newest_experiment()] if e]
        missing = [e for e in experiments if not (e / "manifest.json").exists()]
        if not experiments or missing:
            where = ", ".join(map(str, missing)) or "any directory under bench_runs/"
            print(f"error: no manifest.json in {where}", file=sys.stderr)
            return 2
        records = [r for e in experiments for r in load_local(e)]
        source = "local runs of " + ", ".join(str(e) for e in experiments)
        out = cfg.out or experiments[0] / "report"
    if not records:
        print("error: no runs found", file=sys.stderr)
        return 2
    if not any(len(r.returns) for r in records):
        print(f"error: none of the {len(records)} runs of {source} logged a finished game (their events files, "
              "runs/*/events.out.tfevents.*, or their W&B history)", file=sys.stderr)
        return 2
    apply_final_window(records, cfg.final_window)
    duplicated = duplicated_runs(records)
    if duplicated:
        print("error: these runs cannot be compared as one experiment (pick one --experiment or --wandb-group):\n  "
              + "\n  ".join(duplicated), file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    data = compute_report(records, cfg)
    ok = [r for r in records if r.status == "ok"]
    drawn = {
        "returns_vs_steps.png": plot_returns(ok, "step", cfg.smooth, cfg.grid_points, out / "returns_vs_steps.png")
        or "no run logged an episode",
        "returns_vs_time.png": plot_returns(ok, "wall", cfg.smooth, cfg.grid_points, out / "returns_vs_time.png")
        or "no run logged an episode",
        "success_vs_simulators.png": plot_success(data.shares, out / "success_vs_simulators.png")
        or "no game has a nominal score above random play (from --nominal or its A2C runs)",
        "disagreement.png": plot_disagreement(ok, out / "disagreement.png") or "no GALA run logged gossip/disagreement",
        "throughput.png": plot_throughput(data.throughput, out / "throughput.png") or "no run logged charts/SPS",
    }
    lines = format_report(data, cfg, source) + ["## Figures", ""]
    lines += [f"- `{name}`: {FIGURES[name]}" if done is True else f"- `{name}`: skipped, {done}"
              for name, done in drawn.items()]
    if cfg.wandb:
        lines.append("- utilisation online: W&B system metrics (system.cpu.<i>.cpu_percent, system.gpu.<i>.gpu) "
                     "when present")
    markdown = "\n".join(lines) + "\n"
    (out / "report.md").write_text(markdown)
    print(f"wrote {out / 'report.md'} and {sum(d is True for d in drawn.values())} figures in {out}")
    if cfg.wandb_report:
        remote = wandb_report(cfg, markdown)
        remote.save()
        print(f"W&B report: {remote.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
