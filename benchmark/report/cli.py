"""The command `python -m benchmark report ARGV` (main), and make_report, which reads the runs, refuses what
cannot be compared, and writes the figures and report.md."""

import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

import tyro

from benchmark.report.config import Config
from benchmark.report.figures import (
    plot_dead_units,
    plot_disagreement,
    plot_games,
    plot_profiles,
    plot_returns,
    plot_success,
    plot_throughput,
    wandb_report,
)
from benchmark.report.games import parse_game_scores, read_random_play
from benchmark.report.load import RunRecord, load_local, load_wandb, wandb_unavailable
from benchmark.report.markdown import format_report
from benchmark.report.tables import compute_report

FIGURES = {
    "returns_vs_steps.png": "episodic return vs global steps (Fig 1b–c)",
    "returns_vs_time.png": "episodic return vs wall-clock time (Fig 1d–g)",
    "success_vs_simulators.png": "share of successful runs vs simulators (Fig 1a)",
    "disagreement.png": "GALA parameter disagreement vs global steps (Fig 2)",
    "throughput.png": "SPS and utilisation per algorithm (Fig 3)",
    "dead_units.png": "share of dead units per hidden layer vs global steps",
    "games_vs_steps.png": "A2C and GALA on each game, return vs global steps (800 pixels wide)",
    "games_vs_time.png": "A2C and GALA on each game, return vs wall-clock time (800 pixels wide)",
}
"""the figures of every report: each is drawn where its runs are (GALA runs for the disagreement, a nominal score
above random play for the success), else report.md says why it is skipped"""

ACROSS_GAMES_FIGURES = {
    "performance_profile.png": "share of runs above each A2C-normalised final score, per algorithm, with 95% CI "
                               "bands (Agarwal et al. 2021)",
}
"""the figures of the comparison over games, drawn where some game's A2C runs scored above random play (the A2C
normalisation needs it)"""


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
        read_random_play(cfg.random_play)
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
    records = [r for r in records
               if (not cfg.labels or r.label in cfg.labels) and (not cfg.seeds or r.seed in cfg.seeds)]
    source += "".join(f", {name} {' '.join(map(str, chosen))}" for name, chosen in
                      (("labels", cfg.labels), ("seeds", cfg.seeds)) if chosen)
    if not records:
        print("error: no runs found" + (" of the --labels / --seeds asked" if cfg.labels or cfg.seeds else ""),
              file=sys.stderr)
        return 2
    if not any(len(r.returns) for r in records):
        print(f"error: none of the {len(records)} runs of {source} logged a finished game (their events files, "
              "runs/*/events.out.tfevents.*, or their W&B history)", file=sys.stderr)
        return 2
    apply_final_window(records, cfg.final_window)
    duplicated = duplicated_runs(records)
    if duplicated:
        print("error: these runs cannot be compared as one experiment (pick one --experiment or --wandb-group, or "
              "narrow them with --labels / --seeds):\n  "
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
        "dead_units.png": plot_dead_units(ok, out / "dead_units.png") or "no run logged network/dead_units_*",
        **{f"games_vs_{name}.png": plot_games(ok, x, cfg.smooth, cfg.grid_points, out / f"games_vs_{name}.png")
           or "no run logged an episode" for x, name in (("step", "steps"), ("wall", "time"))},
        "performance_profile.png": plot_profiles(data.profiles, out / "performance_profile.png")
        or "no game where A2C's final score is above random play (or no A2C run)",
    }
    lines = format_report(data, cfg, source) + ["## Figures", ""]
    described = {**FIGURES, **ACROSS_GAMES_FIGURES}
    lines += [f"- `{name}`: {described[name]}" if done is True else f"- `{name}`: skipped, {done}"
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
