"""The report's figures (matplotlib, Agg): the curves are computed first (curves, comparisons), then drawn;
and the same view as a W&B report (wandb_report)."""

import math
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from benchmark.report.config import Config
from benchmark.report.load import A2C, ALGORITHMS, GALA, HIDDEN, RunRecord, label_order
from benchmark.report.stats import trailing_mean

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
    return mean_of_curves([(getattr(r.returns, x), r.returns.value) for r in runs], smooth, points)


def mean_of_curves(games: list[tuple], smooth: int, points: int) -> tuple[list, Optional[tuple]]:
    """GAMES: per run (x, returns) of its games. Each run's curve (x in order, trailing mean of its last `smooth`
    games) and the mean over runs on a grid of POINTS where every run has values (None if fewer than two runs or
    they share no range)."""
    lines = []
    for x, values in games:
        xs = np.asarray(x, dtype=float)
        order, smoothed = trailing_mean(xs, values, smooth)
        lines.append((xs[order], smoothed))
    start, stop = max(xs[0] for xs, _ in lines), min(xs[-1] for xs, _ in lines)
    if len(lines) < 2 or stop <= start:
        return lines, None
    grid = np.linspace(start, stop, points)
    return lines, (grid, np.mean([np.interp(grid, xs, ys) for xs, ys in lines], axis=0))


def colour_of(label: str) -> str:
    """A label's colour: COLOURS', else tab:purple for an A2C variant and tab:orange for any other."""
    return COLOURS.get(label, "tab:purple" if label.startswith("a2c_") else "tab:orange")


def draw_runs(ax, runs: list[RunRecord], x: str, smooth: int, points: int, lw: float = 2.2, thin: float = 0.7) -> None:
    """RUNS (one label on one game) on AX: each run's curve thin, the mean over them bold (the first run bold where
    the runs share no range), with the label and the number of runs as the bold line's legend entry."""
    label, colour = runs[0].label, colour_of(runs[0].label)
    lines, mean = curves(runs, x, smooth, points)
    for xs, ys in lines:
        ax.plot(xs, ys, color=colour, lw=thin, alpha=0.35)
    if mean is not None:
        ax.plot(*mean, color=colour, lw=lw, label=f"{label} (mean of {len(runs)})")
    else:
        ax.plot(*lines[0], color=colour, lw=lw, label=f"{label} ({len(runs)} run)")


def plot_returns(ok: list[RunRecord], x: str, smooth: int, points: int, path: Path) -> bool:
    """Episodic return (trailing mean over `smooth` games) against global steps or wall seconds: panels per game (and
    per simulator count, where the runs have several), one panel per comparison (at most 3 a row; the panels of one
    game share their y axis), each seed thin and the mean over seeds bold."""
    with_episodes = [r for r in ok if len(r.returns)]
    if not with_episodes:
        return False
    several_sims = len({r.simulators for r in with_episodes}) > 1

    def group_of(r: RunRecord) -> tuple:
        return r.game, r.simulators if several_sims else 0

    groups = sorted({group_of(r) for r in with_episodes})

    def members(group: tuple) -> list[RunRecord]:
        return [r for r in with_episodes if group_of(r) == group]

    panels = [(group, title, labels) for group in groups
              for title, labels in comparisons([r.label for r in members(group)])]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    plt = pyplot()
    fig, axes = plt.subplots(rows, columns, figsize=(max(9.5, 5 * columns), 3.8 * rows), squeeze=False)
    first_of = {}
    for ax, (group, title, labels) in zip(axes.flat, panels):
        game = group[0]
        if game in first_of:
            ax.sharey(first_of[game])
        first_of.setdefault(game, ax)
        for label in labels:
            draw_runs(ax, [r for r in members(group) if r.label == label], x, smooth, points)
        name = f"{game}, {group[1]} simulators" if several_sims else game
        ax.set_title(f"{name}: {title}" if title and len(labels) > 1 else name)
        ax.set_xlabel("global steps" if x == "step" else "wall-clock seconds")
        ax.set_ylabel(f"return (mean of last {smooth} games)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("thin: each seed; bold: mean over seeds", fontsize=10)
    return save(plt, fig, path)


def plot_games(ok: list[RunRecord], x: str, smooth: int, points: int, path: Path) -> bool:
    """A2C and GALA (an experiment without either: every label) at README width, 800 pixels: one panel per game, 3 a
    row, episodic return (trailing mean over `smooth` games) against global steps or wall seconds, each seed thin and
    the mean over seeds bold; the legend in the first panel."""
    with_episodes = [r for r in ok if len(r.returns)]
    if not with_episodes:
        return False
    present = label_order(r.label for r in with_episodes)
    labels = [label for label in (A2C, GALA) if label in present] or present
    games = sorted({r.game for r in with_episodes if r.label in labels})
    columns = min(3, len(games))
    rows = math.ceil(len(games) / columns)
    plt = pyplot()
    from matplotlib.ticker import EngFormatter

    fig, axes = plt.subplots(rows, columns, figsize=(8, 0.5 + 2.4 * rows), squeeze=False)
    for ax, game in zip(axes.flat, games):
        for label in labels:
            runs = [r for r in with_episodes if r.game == game and r.label == label]
            if runs:
                draw_runs(ax, runs, x, smooth, points, lw=1.8, thin=0.6)
        ax.set_title(game, fontsize=9)
        ax.xaxis.set_major_formatter(EngFormatter(unit="" if x == "step" else "s", sep=""))  # 2M steps, 1.5ks
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=6.5, loc="upper left")
    for ax in list(axes.flat)[len(games):]:
        ax.set_visible(False)
    what = "global steps" if x == "step" else "wall-clock seconds"
    fig.suptitle(f"return (mean of the last {smooth} games) against {what}; thin: each seed, bold: their mean",
                 fontsize=9)
    return save(plt, fig, path)


def save(plt, fig, path: Path) -> bool:
    """Lays the figure out, writes it as PNG (100 dpi: the per-comparison figures are at least 950 pixels wide, 500 a
    panel; the per-game figures and the performance profile 800, README width) and frees it; True: drawn."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_profiles(profiles: dict[int, tuple[np.ndarray, dict, dict]], path: Path) -> bool:
    """Performance profiles of the A2C-normalised final scores (Agarwal et al. 2021; tables.profiles_of): per label,
    the share of its runs of all games whose normalised score is above tau, against tau, with its 95% CI as a band
    (rliable's plot_performance_profiles); one panel per simulator count; 1 = A2C's mean on each game."""
    if not profiles:
        return False
    plt = pyplot()
    from rliable import plot_utils  # after pyplot(): it imports matplotlib.pyplot

    fig, axes = plt.subplots(1, len(profiles), figsize=(8, 3.6), squeeze=False)
    for ax, (simulators, (taus, shares, intervals)) in zip(axes[0], sorted(profiles.items())):
        labels = label_order(shares)
        plot_utils.plot_performance_profiles(
            {label: shares[label] for label in labels}, taus, performance_profile_cis=intervals, ax=ax,
            colors={label: colour_of(label) for label in labels}, xlabel=r"A2C-normalised final score $\tau$",
            ylabel=r"share of runs with score $> \tau$", labelsize=9, ticklabelsize=8, wrect=5, hrect=5)
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{simulators} simulators: all games x seeds, 95% CI bands", fontsize=9)
        ax.legend(fontsize=8)
    return save(plt, fig, path)


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


def legend_key(runs: list[RunRecord]):
    """A run's name in a legend of RUNS: its label, then its game and its simulator count where RUNS have several."""
    several_games, several_sims = len({r.game for r in runs}) > 1, len({r.simulators for r in runs}) > 1
    return lambda r: " ".join([r.label] + [r.game] * several_games + [f"{r.simulators} sims"] * several_sims)


def plot_dead_units(ok: list[RunRecord], path: Path) -> bool:
    """The share of dead units against global steps: one panel per hidden layer, one line per run, a colour per
    label (and game, and simulator count, where there are several)."""
    runs = [r for r in ok if r.dead_units]
    if not runs:
        return False
    labels = label_order(r.label for r in runs)
    key = legend_key(runs)
    order = sorted(runs, key=lambda r: (labels.index(r.label), r.game, r.simulators))
    keys = list(dict.fromkeys(key(r) for r in order))
    colours = dict(zip(keys, [f"C{i % 10}" for i in range(len(keys))]))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(HIDDEN), figsize=(16, 3.6), squeeze=False, sharey=True)
    for ax, layer in zip(axes[0], HIDDEN):
        drawn = set()
        for r in runs:
            if layer in r.dead_units:
                series = r.dead_units[layer]
                ax.plot(series.step, series.value, lw=1, color=colours[key(r)],
                        label=None if key(r) in drawn else key(r))
                drawn.add(key(r))
        ax.set_title(f"{layer}: share of dead units", fontsize=10)
        ax.set_xlabel("global steps")
        ax.set_ylim(-0.03, 1.03)
    axes[0][0].legend(fontsize=7)
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


def wandb_report(cfg: Config, markdown: str):
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
