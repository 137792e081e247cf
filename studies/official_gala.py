"""Our GALA beside the GALA authors' code (facebookresearch/gala): learning and gossip timing at one shape.

The authors' code runs with the measurement harness in ../shared/official-gala (CPU tensors, envpool for
the baselines wrappers, a CSV line per game) plus a trace patch of the same kind (nothing of their
algorithm changes): each learner records the time of its write point every update, whether it wrote,
and for every message it mixes the time and the sender's update count when it was written. `trace` runs
our script with the same record, taken by wrapping its Gossip class from outside (the script is
unchanged). `compare` reads both kinds of run and tabulates, per run:

- the mean raw score per quarter of the steps (the last quarter is the final score);
- mix rate (updates that mixed a message / updates) and skipped writes (a sender's update that wrote
  nothing because the peer had not read the previous message);
- the age of a mixed message in the sender's updates: how many updates the sender had begun after the
  one that wrote it, when the receiver mixed it (0: the sender's latest parameters);
- drift: the updates the other learners still had to do when the first one finished, and the spread of
  the learners' end times.

    mpirun -np 4 python -m studies.official_gala trace DIR -- --env-id Breakout-v5 --seed 1 --total-timesteps 2000000
    OFFICIAL_GALA_REPO=... ../shared/official-gala/run 1 2000000 4 16 --out OUT   # theirs (with the trace patch)
    python -m studies.official_gala compare --run ours-s1=DIR --run theirs-s1=OUT --out results/official_gala/4x16.md

Only a directed ring with one peer is traced (the in-peer of agent r is r - 1), the shape of both codes' runs.
"""

import bisect
import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import tyro

from benchmark.common import script_module


# ---------------------------------------------------------------------------------------------
# Our script, traced
def traced(gala, trace_dir: Path) -> None:
    """Wraps gala.Gossip so that each agent records its write points (one per update, at the start of exchange,
    where it sends), its mixes (time, in-peer, the sender's update count in the message) and, at finish(), writes
    TRACE_DIR/rank{r}.trace.json in the format of the authors' code's trace patch."""
    init, exchange, mix, finish = gala.Gossip.__init__, gala.Gossip.exchange, gala.Gossip._mix, gala.Gossip.finish

    def traced_init(self, comm, flat, graph, num_peers, *args, **kwargs):
        if graph != "ring" or num_peers != 1:
            raise ValueError("the trace knows the in-peer only on a ring with one peer")
        init(self, comm, flat, graph, num_peers, *args, **kwargs)
        self.trace_writes, self.trace_mixes = [], []

    def traced_exchange(self, update):
        self.trace_writes.append(time.time())
        return exchange(self, update)

    def traced_mix(self, messages):
        now = time.time()
        self.trace_mixes += [(now, (self.rank - 1) % self.world, int(msg[-1])) for msg in messages]
        return mix(self, messages)

    def traced_finish(self, *args, **kwargs):
        trace_dir.mkdir(parents=True, exist_ok=True)
        (trace_dir / f"rank{self.rank}.trace.json").write_text(json.dumps(
            {"rank": self.rank, "writes": self.trace_writes, "mixes": self.trace_mixes, "skipped_writes": self.skipped}
        ))
        return finish(self, *args, **kwargs)

    gala.Gossip.__init__, gala.Gossip.exchange = traced_init, traced_exchange
    gala.Gossip._mix, gala.Gossip.finish = traced_mix, traced_finish


def run_traced(argv: list[str]) -> None:
    """`trace DIR -- SCRIPT FLAGS` (under mpirun): our gala_a2c_atari.py in DIR (its runs/ there), traced into
    DIR/gossip_trace."""
    if len(argv) < 1 or (len(argv) > 1 and argv[1] != "--"):
        sys.exit("usage: mpirun -np N python -m studies.official_gala trace DIR -- SCRIPT FLAGS")
    where = Path(argv[0]).resolve()
    gala = script_module("gala_a2c_atari.py")
    traced(gala, where / "gossip_trace")
    where.mkdir(parents=True, exist_ok=True)
    os.chdir(where)
    gala.main(tyro.cli(gala.Args, args=argv[2:]))


# ---------------------------------------------------------------------------------------------
# Reading a run of either code
@dataclass
class Learner:
    writes: np.ndarray
    """times of the write points, one per update"""
    mixes: list[tuple[float, int, int]]
    """(time, sender, the sender's update count in the message)"""
    skipped: int


@dataclass
class Run:
    code: str
    """"ours" or "theirs\""""
    learners: list[Learner]
    games: np.ndarray
    """(global step, raw score) of every finished game"""
    total_steps: int
    sps: float
    counts: Optional[tuple[float, float]] = None
    """(mix rate, skipped writes) from summary.json, for a run of ours without a trace"""


def summary_counts(summary: dict) -> tuple[float, float]:
    """Mix rate and skipped writes per update over all agents, from our summary.json's per-rank counts."""
    updates = sum(r["updates"] for r in summary["ranks"])
    return (sum(r["mixes"] for r in summary["ranks"]) / updates, sum(r["skipped"] for r in summary["ranks"]) / updates)


def read_ours(where: Path) -> Run:
    from benchmark.report.load import read_events

    run_dir = max((where / "runs").iterdir(), key=lambda d: d.stat().st_mtime)  # the last launch (joins earlier)
    learners = [read_trace(p) for p in sorted((where / "gossip_trace").glob("rank*.trace.json"), key=rank_of)]
    returns = read_events(run_dir)["charts/episodic_return"]
    summary = json.loads((run_dir / "summary.json").read_text())
    return Run("ours", learners, np.column_stack([returns.step, returns.value]), summary["global_step"],
               summary["sps"], None if learners else summary_counts(summary))


def read_theirs(out: Path) -> Run:
    logs = out / "logs"
    learners = [read_trace(p) for p in sorted(logs.glob("learner*.trace.json"), key=rank_of)]
    games = []
    for path in logs.glob("learner*.episodes.csv"):
        with open(path) as f:
            games += [(int(row["global_step"]), float(row["score"])) for row in csv.DictReader(f)]
    summaries = [json.loads(p.read_text()) for p in logs.glob("learner*.summary.json")]
    steps = sum(s["learner_steps"] for s in summaries)
    seconds = max(s["end_unix"] for s in summaries) - min(s["start_unix"] for s in summaries)
    return Run("theirs", learners, np.array(sorted(games), dtype=float).reshape(-1, 2), steps, steps / seconds)


def rank_of(path: Path) -> int:
    return int("".join(c for c in path.name.split(".")[0] if c.isdigit()))


def read_trace(path: Path) -> Learner:
    trace = json.loads(path.read_text())
    return Learner(np.array(trace["writes"]), [tuple(m) for m in trace["mixes"]], trace["skipped_writes"])


def read_run(where: Path) -> Run:
    return read_theirs(where) if (where / "logs").is_dir() else read_ours(where)


# ---------------------------------------------------------------------------------------------
# The measures
def ages(learners: list[Learner]) -> np.ndarray:
    """Per mixed message: the sender's write points up to the mix minus its update in the message."""
    return np.array([bisect.bisect_right(learners[sender].writes, t) - u
                     for learner in learners for t, sender, u in learner.mixes], dtype=int)


def drift(learners: list[Learner]) -> tuple[int, float]:
    """(updates the others still had to make when the first learner made its last write point, max - min of the
    learners' last write points in seconds)."""
    ends = [learner.writes[-1] for learner in learners]
    first = min(ends)
    behind = max(len(learner.writes) - bisect.bisect_right(learner.writes, first) for learner in learners)
    return behind, max(ends) - first


def quarters(run: Run) -> list[float]:
    steps, scores = run.games[:, 0], run.games[:, 1]
    quarter = np.minimum((4 * steps / run.total_steps).astype(int), 3)
    return [float(scores[quarter == q].mean()) if (quarter == q).any() else float("nan") for q in range(4)]


def gossip_cells(learners: list[Learner], counts: Optional[tuple[float, float]] = None) -> list[str]:
    """Mix rate, skipped writes, mean age, age shares, drift and end spread (for a run without a trace, the mix rate
    and skipped writes of its summary.json if given, "-" for the others)."""
    if not learners:
        return [f"{c:.3f}" for c in counts] + ["-"] * 4 if counts else ["-"] * 6
    updates = sum(len(learner.writes) for learner in learners)
    mixed = sum(len({t for t, _, _ in learner.mixes}) for learner in learners)
    age = ages(learners)
    share = [np.mean(age == a) for a in (0, 1, 2)] + [np.mean(age >= 3)]
    behind, spread = drift(learners)
    return [f"{mixed / updates:.3f}", f"{sum(learner.skipped for learner in learners) / updates:.3f}",
            f"{age.mean():.2f}", " / ".join(f"{s:.2f}" for s in share), f"{behind}", f"{spread:.0f}"]


def row(label: str, run: Run) -> list[str]:
    q = quarters(run)
    return [label, run.code, " / ".join(f"{x:.2f}" for x in q), f"{q[3]:.2f}", *gossip_cells(run.learners, run.counts),
            f"{run.sps:.0f}"]


HEADER = ["run", "code", "score per quarter", "final", "mix rate", "skipped writes",
          "mean age", "age 0 / 1 / 2 / 3+", "drift (updates)", "end spread (s)", "steps/s"]


@dataclass
class Compare:
    """Tabulates runs of both codes (see the module's docstring)."""

    run: Annotated[list[str], tyro.conf.UseAppendAction] = field(default_factory=list)
    """LABEL=DIR: a directory of ours with runs/ (a `trace` DIR, or a benchmark run's workdir: without a trace, its
    mix rate and skipped writes come from summary.json, its other gossip columns are "-"), or the authors' code's
    --out directory (it has logs/)"""
    out: Optional[Path] = None
    """where to write the table (markdown) as well"""
    figure: Optional[Path] = None
    """where to draw the runs' scores against steps (PNG): a colour per group (a label without its last "-part",
    e.g. theirs-s1 -> theirs), each run thin, the group's mean bold"""
    smooth: int = 100
    """the figure's curves: the mean of the last SMOOTH games"""


def group_of(label: str) -> str:
    """A run's group in the figure: its label without the last "-part" (theirs-s2 -> theirs; ours-after-s1 ->
    ours-after); a label without "-" is its own group."""
    return label.rpartition("-")[0] or label


def draw(runs: dict[str, Run], smooth: int, path: Path) -> None:
    """Each run's score (mean of its last SMOOTH games, in step order) against global steps, thin; per group the
    mean over its runs on a common grid, bold."""
    from benchmark.report.figures import mean_of_curves, pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    groups = list(dict.fromkeys(group_of(label) for label in runs))
    for colour, group in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], groups):
        games = [(run.games[:, 0], run.games[:, 1]) for label, run in runs.items()
                 if group_of(label) == group and len(run.games)]
        lines, mean = mean_of_curves(games, smooth, 200)
        for line in lines:
            ax.plot(*line, color=colour, lw=0.7, alpha=0.35)
        ax.plot(*(mean if mean is not None else lines[0]), color=colour, lw=2.2,
                label=f"{group} (mean of {len(lines)})" if mean is not None else f"{group} ({len(lines)} run)")
    ax.set_xlabel("global steps")
    ax.set_ylabel(f"score (mean of last {smooth} games)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper left")
    ax.set_title("thin: each run; bold: mean over a group's runs", fontsize=10)
    save(plt, fig, path)


def compare(cfg: Compare) -> None:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    runs = {}
    for item in cfg.run:
        label, _, where = item.partition("=")
        runs[label] = read_run(Path(where))
        lines.append("| " + " | ".join(row(label, runs[label])) + " |")
    if cfg.figure:
        draw(runs, cfg.smooth, cfg.figure)
    text = "\n".join([f"`python -m studies.official_gala compare {' '.join(sys.argv[2:])}`", "", *lines, ""])
    print(text)
    if cfg.out:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(text)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "trace":
        run_traced(sys.argv[2:])
        return
    compare(tyro.cli(Compare, args=sys.argv[2:] if sys.argv[1:2] == ["compare"] else sys.argv[1:]))


if __name__ == "__main__":
    main()
