"""`python -m benchmark report`: the paper's figures and tables from the runs of an experiment.

Reads the runs of `python -m benchmark run` — locally from `bench_runs/<experiment>/manifest.json`
and each run's TensorBoard events, config.json and eval.json (the contract in benchmark/common.py),
or online from W&B (`--wandb`: the runs of one group, their config and history) — normalises them
into one `RunRecord` each, and writes into `--out` (default `<experiment>/report/`):

- `returns_vs_steps.png`, `returns_vs_time.png` (GALA paper Fig 1b–g): episodic return per game,
  one line per algorithm (and simulator count), mean over seeds with a 95% t-interval band;
  a variant of an algorithm (`python -m benchmark run --variant LABEL=...`) is its own line, table
  row and bar under its label, everywhere but the paired GALA-vs-A2C tests, which take the plain runs;
- `success_vs_simulators.png` (Fig 1a): share of runs whose final score reaches a fraction of the
  game's nominal score, against the number of simulators;
- `disagreement.png` (Fig 2): GALA's gossip/disagreement(_relative) against global steps;
- `throughput.png` (Fig 3): steps per second and CPU (GPU) utilisation per algorithm;
- `report.md`: runs found, final scores (mean, std, IQM with rliable's stratified-bootstrap CI),
  success shares, paired t-tests of GALA vs A2C (as the authors' rebuttal did for Fig 1a), the argmax
  evaluation (Table 1), SPS ratios to A2C at matched simulators, and the figures written.

`--wandb-report` also builds the same view as a W&B report (wandb_workspaces) and prints its URL.
The statistics are small pure functions (`final_score`, `iqm_with_ci`, `paired_ttest`,
`success_share`, `run_sps`) so that tests call them directly; `compute_report` gathers report.md's numbers
as plain data, `format_report` writes them out.

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
           for tag, es in events.items()}  # fmt: skip
    config = read_json(run_dir / "config.json")
    if not config.get("resume"):
        return own
    earlier_dir = (run_dir.parent.parent / config["resume"]).parent  # the run's cwd / runs/<name>/checkpoint(.pt)
    if not earlier_dir.is_dir():
        return own
    earlier, cut = read_events(earlier_dir), config["start_step"]
    kept = {tag: series.step <= cut for tag, series in earlier.items()}
    offset = max((float(series.wall[kept[tag]].max()) for tag, series in earlier.items() if kept[tag].any()),
                 default=0.0)  # fmt: skip
    joined = {}
    for tag in {*earlier, *own}:
        before, after = earlier.get(tag, Series()), own.get(tag, Series())
        keep = kept.get(tag, np.zeros(0, dtype=bool))
        joined[tag] = Series.by_step(*(np.concatenate([getattr(before, key)[keep], getattr(after, key) + shift])
                                       for key, shift in (("step", 0), ("wall", offset), ("value", 0))))
    return joined


def load_local(experiment: Path) -> list[RunRecord]:
    """The runs of one experiment directory, from its manifest. A manifest entry with status ok
    whose run directory is missing counts as failed."""
    records = []
    for entry in read_manifest(experiment / "manifest.json"):
        run_dir = experiment / entry.run_dir if entry.run_dir else None
        status = entry.status
        note = {"ok": "", "stopped": "stopped by a signal"}.get(status, f"exit {entry.returncode}")
        if run_dir is None or not run_dir.is_dir():
            status, note = "failed", note or "no run directory"
        events = read_events(run_dir) if status == "ok" else {}
        config = read_json(run_dir / "config.json") if status == "ok" else {}
        evaluation = read_json(run_dir / "eval.json") if status == "ok" else {}
        utilisation = entry.utilisation or {}
        records.append(RunRecord(
            name=f"{experiment.name}/{entry.workdir}", algorithm=entry.algorithm, label=entry.label,
            env_id=entry.env_id,
            seed=config.get("seed", entry.seed), simulators=config.get("total_envs", entry.simulators),
            total_timesteps=config.get("total_timesteps", entry.total_timesteps), status=status, note=note,
            **{key: events.get(tag, Series()) for key, tag in TAGS.items()},
            eval_argmax=evaluation.get("argmax", {}).get("mean", last_value(events, "eval/argmax_return_mean")),
            eval_sampled=evaluation.get("sampled", {}).get("mean", last_value(events, "eval/sampled_return_mean")),
            cpu_percent=list(utilisation.get("cpu_percent") or []), gpu_percent=utilisation.get("gpu_percent"),
        ))  # fmt: skip
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
                                         [r[tag] for r in rows])  # fmt: skip
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
            cpu_percent=cpu, gpu_percent=gpu, **series,
        ))  # fmt: skip
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


def t_band(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the rows of (seeds x points), ignoring nan, with its 95% t-interval (nan where fewer
    than 2 seeds have a value)."""
    n = np.sum(np.isfinite(samples), axis=0)
    with warnings.catch_warnings():  # nanmean / nanstd of columns without a value
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(samples, axis=0)
        half = scipy.stats.t.ppf(0.975, n - 1) * np.nanstd(samples, axis=0, ddof=1) / np.sqrt(n)
    half[n < 2] = np.nan
    return mean, mean - half, mean + half


# ---------------------------------------------------------------------------------------------
# Grouping and the nominal scores


def line_name(label: str, simulators: int, several: bool) -> str:
    return f"{label} ({simulators} sims)" if several else label


def order(records: list[RunRecord]) -> list[RunRecord]:
    """Table order: game, then the algorithms in ALGORITHMS order, each followed by its variants."""
    rank = {a: i for i, a in enumerate(ALGORITHMS)}
    return sorted(records, key=lambda r: (r.game, rank.get(r.algorithm, 99), r.algorithm, r.label != r.algorithm,
                                          r.label, r.simulators, r.seed))  # fmt: skip


def groups(records: list[RunRecord], *keys: str) -> dict[tuple, list[RunRecord]]:
    """Records by the tuple of their attributes `keys`, in table order."""
    out = defaultdict(list)
    for r in order(records):
        out[tuple(getattr(r, k) for k in keys)].append(r)
    return dict(out)


def nominal_scores(ok: list[RunRecord], given: dict[str, float]) -> dict[str, tuple[float, str]]:
    """game -> (nominal score, where it came from): --nominal if given, else the mean final score
    of the A2C runs with the fewest simulators of that game ("the nominal score is with respect to
    standard 16-simulator A2C scores", the authors' rebuttal)."""
    out = {}
    for (game,), runs in groups(ok, "game").items():
        if game in given:
            out[game] = (given[game], "--nominal")
            continue
        a2c = [r for r in runs if r.label == A2C and math.isfinite(r.final)]
        if a2c:
            fewest = min(r.simulators for r in a2c)
            finals = [r.final for r in a2c if r.simulators == fewest]
            out[game] = (float(np.mean(finals)), f"mean final score of {len(finals)} A2C run(s) at {fewest} simulators")
    return out


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def subplots(count: int, rows: int = 1, width: float = 4.5, height: float = 3.4):
    plt = pyplot()
    fig, axes = plt.subplots(rows, count, figsize=(width * count, height * rows), squeeze=False)
    return plt, fig, axes


def save(plt, fig, path: Path) -> bool:
    """Lays the figure out, writes it as PNG and frees it; True: the figure was drawn."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_returns(ok: list[RunRecord], x: str, smooth: int, points: int, path: Path) -> bool:
    """Episodic return (trailing mean over `smooth` games) of each run, interpolated on a common grid
    of its game from the run's first game to its end (the last game's value held to the last logged
    point of the run: it is the latest known return), mean over seeds and 95% t-interval; one subplot
    per game, one line per algorithm (x simulators). x: "step" or "wall"."""
    with_episodes = [r for r in ok if len(r.returns)]
    if not with_episodes:
        return False
    games = groups(with_episodes, "game")
    several = len({r.simulators for r in with_episodes}) > 1
    end = {id(r): max(getattr(s, x).max() for s in (r.returns, r.sps) if len(s)) for r in with_episodes}
    plt, fig, axes = subplots(len(games))
    for ax, ((game,), runs) in zip(axes[0], games.items()):
        grid = np.linspace(0, max(end[id(r)] for r in runs), points)
        for (label, simulators), same in groups(runs, "label", "simulators").items():
            curves = []
            for r in same:
                smoothed = pd.Series(r.returns.value).rolling(smooth, min_periods=1).mean().to_numpy()
                xs, ys = np.append(getattr(r.returns, x), end[id(r)]), np.append(smoothed, smoothed[-1])
                curves.append(np.interp(grid, xs, ys, left=np.nan, right=np.nan))
            mean, low, high = t_band(np.array(curves))
            name = f"{line_name(label, simulators, several)}, {len(same)} seed(s)"
            (line,) = ax.plot(grid, mean, label=name, marker="o" if np.isfinite(mean).sum() < 2 else None)
            ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(game)
        ax.set_xlabel("global steps" if x == "step" else "wall-clock seconds")
        ax.set_ylabel(f"episodic return (mean of last {smooth} games)")
        ax.legend(fontsize=7)
    fig.suptitle("mean over seeds, band: 95% t-interval", fontsize=9)
    return save(plt, fig, path)


def plot_success(shares: dict[tuple, tuple[float, int]], path: Path) -> bool:
    """shares[(game, algorithm, simulators)] = (share, runs): one subplot per game, share vs
    simulators on a log2 axis, one line per algorithm."""
    if not shares:
        return False
    games = sorted({g for g, _, _ in shares})
    plt, fig, axes = subplots(len(games))
    for ax, game in zip(axes[0], games):
        for algorithm in sorted({a for g, a, _ in shares if g == game}, key=lambda a: (ALGORITHMS + (a,)).index(a)):
            sims = sorted(s for g, a, s in shares if g == game and a == algorithm)
            ax.plot(sims, [shares[game, algorithm, s][0] for s in sims], marker="o", label=algorithm)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(game)
        ax.set_xlabel("simulators")
        ax.set_ylabel("share of successful runs")
        ax.legend(fontsize=7)
    return save(plt, fig, path)


def plot_disagreement(ok: list[RunRecord], path: Path) -> bool:
    """GALA runs (its variants too): relative (top) and absolute (bottom) disagreement vs global steps, one line
    per run."""
    gala = [r for r in ok if r.algorithm == GALA and len(r.disagreement_relative) + len(r.disagreement)]
    if not gala:
        return False
    games = groups(gala, "game")
    plt, fig, axes = subplots(len(games), rows=2)
    for column, ((game,), runs) in enumerate(games.items()):
        ylabels = (("disagreement_relative", "RMS |θ_i − θ̄| / |θ̄|"), ("disagreement", "RMS |θ_i − θ̄|"))
        for row, (key, ylabel) in enumerate(ylabels):
            ax = axes[row][column]
            for r in runs:
                series = getattr(r, key)
                ax.plot(series.step, series.value, lw=1, marker="." if len(series) < 3 else None,
                        label=f"{r.label}, {r.simulators} sims, seed {r.seed}")  # fmt: skip
            ax.set_title(f"GALA-A2C {game}: gossip/{key}", fontsize=9)
            ax.set_xlabel("global steps")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
    return save(plt, fig, path)


def plot_throughput(rows: list[dict], path: Path) -> bool:
    """Bars per algorithm at each simulator count: median SPS (left), mean CPU % and GPU % (right)."""
    rows = [row for row in rows if math.isfinite(row["sps"])]
    if not rows:
        return False
    sims = sorted({row["simulators"] for row in rows})
    algorithms = [a for a in ALGORITHMS if any(row["algorithm"] == a for row in rows)]
    algorithms += sorted({row["algorithm"] for row in rows} - set(algorithms))
    width = 0.8 / len(algorithms)
    plt, fig, axes = subplots(2, width=5.5)
    for i, algorithm in enumerate(algorithms):
        found = {row["simulators"]: row for row in rows if row["algorithm"] == algorithm}
        xs = [j + i * width for j, s in enumerate(sims) if s in found]
        axes[0][0].bar(xs, [found[s]["sps"] for s in sims if s in found], width, label=algorithm)
        cpu = [found[s]["cpu"] for s in sims if s in found]
        axes[0][1].bar(xs, [c if c is not None else 0 for c in cpu], width, label=f"{algorithm} CPU")
        gpu = [found[s]["gpu"] for s in sims if s in found]
        if any(g is not None for g in gpu):
            axes[0][1].bar(xs, [g or 0 for g in gpu], width * 0.5, hatch="//", fill=False, label=f"{algorithm} GPU")
    for ax, ylabel in zip(axes[0], ("steps per second (median over runs)", "mean utilisation %")):
        ax.set_xticks([j + width * (len(algorithms) - 1) / 2 for j in range(len(sims))], [f"{s} sims" for s in sims])
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    if not any(row["cpu"] is not None for row in rows):
        axes[0][1].text(0.5, 0.5, "no utilisation samples", ha="center", transform=axes[0][1].transAxes)
    return save(plt, fig, path)


# ---------------------------------------------------------------------------------------------
# report.md: every number computed first (compute_report -> ReportData), then written out (format_report)


def fmt(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def table(header: list[str], rows: list[list]) -> list[str]:
    return [table_row(header), "|" + "---|" * len(header)] + [table_row(r) for r in rows]


def table_row(cells: list) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def ttest_line(what: str, test: Optional[TTest]) -> str:
    if test is None:
        return f"- {what}: n/a (need >= 2 pairs)"
    return f"- {what}: n = {test.n}, t = {fmt(test.t, 3)}, p = {test.p:.4g}"


def fmt_ci(point: float, low: float, high: float) -> str:
    return f"{fmt(point)} [{fmt(low)}, {fmt(high)}]"


def fmt_mean_std(moments: Optional[tuple[float, Optional[float]]]) -> str:
    return "n/a" if moments is None else f"{fmt(moments[0])} ± {fmt(moments[1])}"


class Score(NamedTuple):
    """The final scores of the runs of one (game, label, simulators)."""

    game: str
    label: str
    simulators: int
    n: int
    mean: float
    std: Optional[float]
    """None for a single run"""
    iqm: tuple[float, float, float]
    """IQM and its 95% CI (low, high)"""


class Nominal(NamedTuple):
    """A game's nominal score (None: no A2C run and no --nominal), where it came from, and the success threshold."""

    game: str
    random: float
    score: Optional[float]
    source: str
    threshold: Optional[float]


class Evaluation(NamedTuple):
    """The evaluations of one (game, label, simulators): (mean, std or None for one run) over runs, None if none."""

    game: str
    label: str
    simulators: int
    n: int
    """runs with an argmax evaluation"""
    argmax: Optional[tuple[float, Optional[float]]]
    sampled: Optional[tuple[float, Optional[float]]]


@dataclass
class ReportData:
    """What report.md says, computed from the records (compute_report) before it is written (format_report)."""

    runs: list[tuple[str, str, int, int, int, int]]
    """(label, game, simulators, ok, failed, ok without an episode)"""
    failed: list[tuple[str, str]]
    """(name, note) of each run left out of every statistic"""
    no_episode: list[str]
    """ok runs that logged no episode"""
    scores: list[Score]
    nominal: list[Nominal]
    shares: dict[tuple, tuple[float, int]]
    """(game, label, simulators) -> (share of successful runs, runs), where the nominal is above random play"""
    aggregate: dict[tuple, tuple[float, float, float]]
    """(label, simulators, games, seeds) -> IQM of nominal-normalised final scores and its 95% CI"""
    ttest_shares: Optional[TTest]
    """GALA vs A2C, paired over (game, simulators) cells"""
    ttest_finals: Optional[TTest]
    """GALA vs A2C, paired over (game, simulators, seed)"""
    evaluation: list[Evaluation]
    throughput: list[dict]
    """{"algorithm" (the label), "simulators", "runs", "sps", "ratio" (to A2C's SPS; None without A2C), "cpu", "gpu"}"""


def mean_and_std(values: list[float]) -> Optional[tuple[float, Optional[float]]]:
    """(mean, sample std or None for one value), None for none."""
    if not values:
        return None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def compute_report(records: list[RunRecord], cfg: "Config") -> ReportData:
    """Every number of report.md, from the records."""
    ok = [r for r in records if r.status == "ok"]
    scored = [r for r in ok if math.isfinite(r.final)]
    runs = [(a, g, s, sum(r.status == "ok" for r in rs), sum(r.status != "ok" for r in rs),
             sum(r.status == "ok" and not math.isfinite(r.final) for r in rs))
            for (g, a, s), rs in groups(records, "game", "label", "simulators").items()]  # fmt: skip
    failed = [(r.name, r.note) for r in order(records) if r.status != "ok"]
    no_episode = [r.name for r in order(ok) if not math.isfinite(r.final)]

    # Final scores
    scores = []
    for (game,), game_runs in groups(scored, "game").items():
        cells = groups(game_runs, "label", "simulators")
        iqm = iqm_with_ci({k: np.array([r.final for r in rs]) for k, rs in cells.items()}, cfg.bootstrap_reps, cfg.seed)
        for (label, simulators), rs in cells.items():
            finals = np.array([r.final for r in rs])
            std = float(finals.std(ddof=1)) if len(finals) > 1 else None
            scores.append(Score(game, label, simulators, len(finals), float(finals.mean()), std,
                                iqm[label, simulators]))  # fmt: skip

    # Nominal scores, success, aggregate
    nominal = nominal_scores(scored, dict(parse_nominal(cfg.nominal)))
    nominal_rows = []
    for game in sorted({r.game for r in scored}):
        random = RANDOM_SCORES.get(game, 0.0)
        if game not in nominal:
            nominal_rows.append(Nominal(game, random, None, "no A2C run and no --nominal", None))
            continue
        value, where = nominal[game]
        nominal_rows.append(Nominal(game, random, value, where, success_threshold(value, random, cfg.success_fraction)))
    shares = {}  # only where success means something: a nominal score above random play
    usable = [g for g, (v, _) in nominal.items() if v > RANDOM_SCORES.get(g, 0.0)]
    for (game, label, simulators), rs in groups(scored, "game", "label", "simulators").items():
        if game in usable:
            finals = [r.final for r in rs]
            random = RANDOM_SCORES.get(game, 0.0)
            shares[game, label, simulators] = (success_share(finals, nominal[game][0], random, cfg.success_fraction),
                                               len(finals))  # fmt: skip
    matrices = {}
    for (label, simulators), rs in groups([r for r in scored if r.game in usable], "label", "simulators").items():
        games = sorted({r.game for r in rs})
        seeds = sorted(set.intersection(*({r.seed for r in rs if r.game == g} for g in games)))
        by = {(r.game, r.seed): r.final for r in rs}
        norm = [[(by[g, s] - RANDOM_SCORES.get(g, 0.0)) / (nominal[g][0] - RANDOM_SCORES.get(g, 0.0)) for g in games]
                for s in seeds]  # fmt: skip
        if seeds:
            matrices[label, simulators, tuple(games), len(seeds)] = np.array(norm)
    aggregate = iqm_with_ci(matrices, cfg.bootstrap_reps, cfg.seed)

    # Paired t-tests
    cells = sorted({(g, s) for g, a, s in shares if (g, GALA, s) in shares and (g, A2C, s) in shares})
    by_seed = {(r.game, r.simulators, r.seed, r.label): r.final for r in scored}  # GALA, A2C: the plain runs
    pairs = sorted({k[:3] for k in by_seed if (*k[:3], GALA) in by_seed and (*k[:3], A2C) in by_seed})
    ttest_shares = paired_ttest([shares[g, GALA, s][0] for g, s in cells], [shares[g, A2C, s][0] for g, s in cells])
    ttest_finals = paired_ttest([by_seed[(*k, GALA)] for k in pairs], [by_seed[(*k, A2C)] for k in pairs])

    # Evaluation, Table 1 style
    evaluation = []
    for (game, label, simulators), rs in groups(ok, "game", "label", "simulators").items():
        argmax = [r.eval_argmax for r in rs if r.eval_argmax is not None]
        sampled = [r.eval_sampled for r in rs if r.eval_sampled is not None]
        if argmax or sampled:
            evaluation.append(Evaluation(game, label, simulators, len(argmax), mean_and_std(argmax),
                                         mean_and_std(sampled)))  # fmt: skip

    # Throughput
    throughput = []
    for (label, simulators), rs in sorted(groups(ok, "label", "simulators").items(), key=lambda kv: kv[0][1]):
        per_run = [run_sps(r.sps.value) for r in rs if len(r.sps)]
        cpu = [float(np.mean(r.cpu_percent)) for r in rs if r.cpu_percent]
        gpu = [float(np.mean(r.gpu_percent)) for r in rs if r.gpu_percent]
        throughput.append({"algorithm": label, "simulators": simulators, "runs": len(per_run),
                           "sps": float(np.median(per_run)) if per_run else math.nan,
                           "cpu": float(np.mean(cpu)) if cpu else None,
                           "gpu": float(np.mean(gpu)) if gpu else None})  # fmt: skip
    base = {row["simulators"]: row["sps"] for row in throughput if row["algorithm"] == A2C}
    for row in throughput:
        row["ratio"] = row["sps"] / base[row["simulators"]] if row["simulators"] in base else None
    return ReportData(runs, failed, no_episode, scores, nominal_rows, shares, aggregate, ttest_shares, ttest_finals,
                      evaluation, throughput)  # fmt: skip


def format_report(data: ReportData, cfg: "Config", source: str) -> list[str]:
    """report.md's lines (without its figure list)."""
    lines = ["# Benchmark report", "", f"Source: {source}.", ""]

    lines += ["## Runs", ""]
    lines += table(["algorithm", "game", "simulators", "ok", "failed", "ok without an episode"], data.runs) + [""]
    lines += [f"Failed runs (excluded from every statistic): {len(data.failed) or 'none'}"]
    lines += [f"- {name}: {note}" for name, note in data.failed] + [""]
    lines += [f"- {name}: logged no episode, final score missing" for name in data.no_episode]

    lines += ["## Final scores", "",
              (f"Final score of a run: mean of the episodic returns (raw game score) logged in the last "
               f"{cfg.final_window:.0%} of its global steps (at least its last logged episode). IQM: 25% "
               f"trimmed mean over runs with a 95% stratified-bootstrap CI (rliable, {cfg.bootstrap_reps} "
               f"reps, seed {cfg.seed}); each game is one task."), ""]  # fmt: skip
    lines += table(["game", "algorithm", "simulators", "n", "mean", "std", "IQM [95% CI]"],
                   [[s.game, s.label, s.simulators, s.n, fmt(s.mean), fmt(s.std), fmt_ci(*s.iqm)]
                    for s in data.scores]) + [""]  # fmt: skip

    lines += ["## Success (Fig 1a)", "",
              (f"A run succeeds when its final score >= random + {cfg.success_fraction} x (nominal − random), "
               "random = random-play score of Mnih et al. 2015 (Extended Data Table 2; 0 for games not listed)."),
              ""]  # fmt: skip
    rows = []
    for nominal in data.nominal:
        if nominal.score is None:
            rows.append([nominal.game, "n/a", nominal.source, fmt(nominal.random), "n/a"])
            continue
        below = nominal.score <= nominal.random
        warn = " (not above random play: no success share, no normalised score)" if below else ""
        rows.append([nominal.game, fmt(nominal.score), nominal.source + warn, fmt(nominal.random),
                     fmt(nominal.threshold)])  # fmt: skip
    lines += table(["game", "nominal", "nominal from", "random", "success threshold"], rows) + [""]
    lines += table(["game", "algorithm", "simulators", "successful share (runs)"],
                   [[g, a, s, f"{fmt(v)} ({n})"] for (g, a, s), (v, n) in data.shares.items()]) + [""]  # fmt: skip

    lines += [("Aggregate over games: IQM of nominal-normalised final scores (final − random) / (nominal − random) "
               "(1 = the nominal A2C score), over the seeds present in every game of that algorithm and simulator "
               "count; games whose nominal is not above random play are left out."), ""]  # fmt: skip
    lines += table(["algorithm", "games", "seeds", "normalised IQM [95% CI]"],
                   [[line_name(label, simulators, True), ", ".join(games), seeds, fmt_ci(*iqm)]
                    for (label, simulators, games, seeds), iqm in data.aggregate.items()]
                   ) if data.aggregate else ["n/a: no game with a nominal score above random play"]  # fmt: skip
    lines.append("")

    lines += ["## GALA-A2C vs A2C: paired t-tests (two-sided, scipy.stats.ttest_rel)", "",
              ttest_line("success share, paired over (game, simulators) cells (as the authors did for Fig 1a)",
                         data.ttest_shares),
              ttest_line("final score, paired over (game, simulators, seed)", data.ttest_finals),
              ""]  # fmt: skip

    lines += ["## Evaluation (Table 1 style: full games after training, mean ± std over seeds of each run's mean)", ""]
    rows = [[e.game, e.label, e.simulators, e.n, fmt_mean_std(e.argmax), fmt_mean_std(e.sampled)]
            for e in data.evaluation]  # fmt: skip
    lines += (table(["game", "algorithm", "simulators", "n", "argmax", "sampled"], rows) if rows
              else ["no evaluation found (runs without --eval-episodes)"]) + [""]  # fmt: skip

    lines += ["## Throughput (Fig 3)", "",
              "SPS of a run: median of its logged charts/SPS after the first point; per algorithm: median over "
              "its runs (all games). Ratio: to a2c_allreduce at the same total simulators. Utilisation: mean of "
              "the whole-machine samples of each run, mean over runs" +
              (" (W&B system metrics)." if cfg.wandb else " (the runner's samples in the manifest)."), ""]  # fmt: skip
    lines += table(["algorithm", "simulators", "runs", "SPS", "SPS / a2c_allreduce", "CPU %", "GPU %"],
                   [[row["algorithm"], row["simulators"], row["runs"], fmt(row["sps"], 0),
                     fmt(row["ratio"]) if row["ratio"] is not None else "n/a (no A2C run)",
                     fmt(row["cpu"], 1), fmt(row["gpu"], 1)] for row in data.throughput]) + [""]  # fmt: skip
    return lines


def parse_nominal(items: tuple[str, ...]) -> list[tuple[str, float]]:
    """`Pong=18` or `Pong-v5=18` -> ("Pong", 18.0)."""
    out = []
    for item in items:
        game, sep, score = item.partition("=")
        if not sep:
            raise ValueError(f"--nominal takes GAME=SCORE, got {item!r}")
        out.append((game_of(game), float(score)))
    return out


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
                       filters=f"Group = '{cfg.wandb_group}'" if cfg.wandb_group else "")  # fmt: skip
    panels = [
        wr.LinePlot(title="episodic return vs global steps", x="global_step", y=["charts/episodic_return"],
                    groupby=group, groupby_aggfunc="mean", groupby_rangefunc="stderr", smoothing_factor=0.6),
        wr.LinePlot(title="episodic return vs wall time", x="RelativeTime(Wall)", y=["charts/episodic_return"],
                    groupby=group, groupby_aggfunc="mean", groupby_rangefunc="stderr", smoothing_factor=0.6),
        wr.LinePlot(title="GALA disagreement (relative)", x="global_step", y=["gossip/disagreement_relative"]),
        wr.BarPlot(title="steps per second", metrics=["charts/SPS"], groupby=group, groupby_aggfunc="median"),
    ]  # fmt: skip
    return wr.Report(
        **entity, project=cfg.wandb_project, title=f"gala-rl benchmark: {cfg.wandb_group or cfg.wandb_project}",
        description="GALA-A2C vs A2C (Allreduce), A3C, IMPALA: python -m benchmark report",
        blocks=[wr.PanelGrid(runsets=[runset], panels=panels), wr.MarkdownBlock(text=markdown)],
    )  # fmt: skip


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
    """return curves: trailing mean over this many games"""
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
    group, or one cell with runs of different total steps."""
    problems, seen, lengths = [], {}, defaultdict(set)
    for r in (r for r in records if r.status == "ok"):
        key = (r.label, r.env_id, r.simulators, r.seed)
        if key in seen:
            problems.append(f"{r.name} and {seen[key]} are both {r.label} on {r.env_id} with {r.simulators} "
                            f"simulators, seed {r.seed}")  # fmt: skip
        seen[key] = r.name
        lengths[key[:3]].add(r.total_timesteps)
    problems += [f"{a} on {g} with {s} simulators mixes runs of {sorted(n)} steps"
                 for (a, g, s), n in lengths.items() if len(n) > 1]  # fmt: skip
    return problems


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m benchmark report ARGV`."""
    return make_report(tyro.cli(Config, args=argv, prog="python -m benchmark report"))


def make_report(cfg: Config) -> int:
    """Reads the runs, refuses (exit 2) what cannot be compared, writes the figures and report.md."""
    try:
        parse_nominal(cfg.nominal)
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
    apply_final_window(records, cfg.final_window)
    duplicated = duplicated_runs(records)
    if duplicated:
        print("error: these runs cannot be compared as one experiment (pick one --experiment or --wandb-group):\n  "
              + "\n  ".join(duplicated), file=sys.stderr)  # fmt: skip
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
    }  # fmt: skip
    lines = format_report(data, cfg, source) + ["## Figures", ""]
    lines += [f"- `{name}`: {FIGURES[name]}" if done is True else f"- `{name}`: skipped, {done}"
              for name, done in drawn.items()]  # fmt: skip
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
