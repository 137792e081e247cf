"""report.md written out: one function per section, each turning `ReportData` (tables.py) into markdown
lines; `format_report` puts them in order."""

import math
from typing import Optional

import pandas as pd

from benchmark.report.config import Config
from benchmark.report.games import RANDOM_SCORES, parse_game_scores
from benchmark.report.load import A2C, GALA, HIDDEN
from benchmark.report.stats import TTest
from benchmark.report.tables import ReportData


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


def per_seed(values: dict) -> str:
    """{seed: score} as '44.10 (s1), 39.00 (s2)' in seed order, leaving out seeds without a score; 'n/a' if none."""
    shown = [f"{fmt(v)} (s{k})" for k, v in sorted(values.items()) if v is not None and math.isfinite(v)]
    return ", ".join(shown) or "n/a"


def ttest_line(what: str, test: Optional[TTest]) -> str:
    if test is None:
        return f"- {what}: n/a (need >= 2 pairs)"
    return f"- {what}: n = {test.n}, t = {fmt(test.t, 3)}, p = {test.p:.4g}"


def markdown(table: pd.DataFrame) -> list[str]:
    """A table as markdown lines (every cell formatted already), or a line saying there is none."""
    return table.astype(str).to_markdown(index=False, disable_numparse=True).splitlines() if len(table) else ["(none)"]


def runs_section(data: ReportData, cfg: Config) -> list[str]:
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


def scores_section(data: ReportData, cfg: Config) -> list[str]:
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

    if cfg.every_steps:
        marks = sorted({m for at in ok["at_steps"] for m in at})
        lines += [f"## At every {cfg.every_steps:,} steps", "",
                  (f"Score at a step: the mean return of the games that ended in the last {cfg.final_window:.0%} of "
                   "the steps up to it, as the final score is of all of a run's steps: mean ± std over seeds."), ""]
        lines += markdown(pd.DataFrame([
            {"game": g, "algorithm": lab, "simulators": s, "n": len(rs),
             **{f"{m:,}": mean_std(pd.Series([at.get(m, math.nan) for at in rs["at_steps"]])) for m in marks}}
            for (g, lab, s), rs in ok.groupby(["game", "label", "simulators"], sort=False)])) + [""]

    times = ", ".join(f"{game} s{seed} {seconds:.0f} s" for (game, seed), seconds in data.times.items())
    lines += ["## At equal wall-clock time", "",
              (f"Score at equal time: the mean return of the games that ended in the last {cfg.final_window:.0%} of "
               f"its game's and seed's common time, the wall-clock seconds of the shortest run of that game and seed "
               f"({times or 'none'}): per seed, since a seed's arms run on one machine and seeds may not; a "
               "continued run's seconds are those of its launches' training (load.read_events)."), ""]
    at_time = ok.groupby(["game", "label", "simulators"], sort=False).agg(
        n=("seed", "size"), seconds=("seconds", lambda s: f"{s.min():.0f}-{s.max():.0f}"),
        steps=("steps", lambda s: f"{s.min():.0f}-{s.max():.0f}"), score=("at_time", mean_std)).reset_index()
    lines += markdown(at_time.rename(columns={"label": "algorithm", "seconds": "run seconds",
                                              "steps": "run steps", "score": "score at equal time"})) + [""]

    lines += ["## Normalised by A2C", "",
              ("(score - random play) / (A2C's mean score - random play), per step (the final score) and per second "
               "(the score at equal wall-clock time): IQM over seeds with a 95% stratified-bootstrap CI (1 = A2C's "
               "mean, 0 = random play; only where A2C's mean is above random play: over the bound in section Random "
               "play)."), ""]
    lines += markdown(data.normalised.assign(
        per_step=data.normalised["per_step"].map(lambda ci: fmt_ci(*ci)),
        per_second=data.normalised["per_second"].map(lambda ci: fmt_ci(*ci) if ci else "n/a")).rename(
        columns={"label": "algorithm", "per_step": "per step: final [95% CI]",
                 "per_second": "per second: at equal time [95% CI]"})) + [""]

    return lines


def games_section(data: ReportData, cfg: Config) -> list[str]:
    """Random play per game; each label against A2C per game; and over all games x seeds (Agarwal et al. 2021): IQM
    and mean of A2C-normalised scores, the probability of improvement over A2C."""
    scored_games = set(data.table.loc[data.table["final"].notna(), "game"])
    lines = ["## Random play", "",
             ("The score that every normalised score and success threshold counts from: measured with this "
              "project's envpool settings (`python -m studies.random_play`, results/random_play.json) where "
              "measured, else the commonly tabulated one (Mnih et al. 2015, Extended Data Table 2), which was "
              "measured under other emulator settings. A mean counts as above random play (A2C's, to normalise by "
              "it; a nominal score) only above the upper end of the 95% CI of random play's measured mean (Student's "
              "t), mean + t(0.975, games − 1) std / sqrt(games); a tabulated score: only above the score. A reference "
              "a hair above random play would turn every other score into a huge ratio."), ""]
    lines += markdown(pd.DataFrame([{"game": g, "random play": fmt(play.score), "source": play.source,
                                     "a mean is above it over": fmt(play.above),
                                     "tabulated (Mnih et al. 2015)": fmt(RANDOM_SCORES.get(g))}
                                    for g, play in data.random.items() if g in scored_games])) + [""]

    lines += ["## Against A2C per game", "",
              ("Final score per seed and mean over seeds. Above random play as a share of A2C's, over the seeds "
               "both ran: (mean − random) / (A2C's mean − random), and in brackets its range seed by seed, (seed k − "
               "random) / (A2C's seed k − random), over those seeds where A2C's scored above random play. The score "
               "per quarter of the steps is under Per quarter of the steps, the final policy's games under "
               "Evaluation."), ""]
    shown = data.against_a2c
    lines += markdown(pd.DataFrame({
        "game": shown["game"], "simulators": shown["simulators"], "random play": shown["random"].map(fmt),
        "A2C, per seed": shown["a2c_finals"].map(per_seed), "A2C mean": shown["a2c_mean"].map(fmt),
        "algorithm": shown["label"], "per seed": shown["finals"].map(per_seed), "mean": shown["mean"].map(fmt),
        "seeds both ran": shown["both"],
        "/ A2C above random [seeds' range]": [
            f"{fmt(ratio)} [{fmt(low)}-{fmt(high)}]" if n else
            f"{fmt(ratio)} [{'A2C not above random play' if both else 'no seed pair'}]"
            for ratio, low, high, n, both in zip(*(shown[c] for c in ("ratio", "seed_low", "seed_high", "seed_ratios",
                                                                      "both")))],
    })) + [""]

    lines += ["## Across games (Agarwal et al. 2021)", "",
              ("Each run's score normalised on its game by A2C's mean there, (score − random) / (A2C's mean − "
               "random): 1 = A2C's mean, 0 = random play. Over all games x seeds: the IQM (25% trimmed mean of all "
               "runs) and the mean (of the games' means; A2C's is 1 by construction), with 95% stratified-bootstrap "
               "CIs (runs resampled within each game), and P(X > A2C), the probability of improvement: the chance "
               "that a run of X scores above a run of A2C on a game drawn at random (Mann-Whitney, ties count half), "
               f"with its CI (rliable, {cfg.bootstrap_reps} reps, seed {cfg.seed}). final: the final score of "
               "training (above); evaluation: the final policy's full games (eval.json). A label enters with its "
               "seeds that ran every game."), ""]
    names = {"final": "final", "eval_argmax": "evaluation, argmax", "eval_sampled": "evaluation, sampled"}
    lines += markdown(pd.DataFrame([{
        "score": names[a.score], "simulators": a.simulators, "algorithm": label, "games": len(a.games),
        "seeds": len(matrix), "IQM [95% CI]": fmt_ci(*a.aggregates[label]["IQM"]),
        "mean [95% CI]": fmt_ci(*a.aggregates[label]["mean"]),
        "P(> A2C) [95% CI]": fmt_ci(*a.improvement[label]) if label in a.improvement else "-",
    } for a in data.across for label, matrix in a.normalised.items()])) + [""]
    which = [f"- {names[a.score]}, {a.simulators} simulators: {', '.join(a.games)}"
             + (f"; left out: {'; '.join(a.left_out)}" if a.left_out else "") for a in data.across]
    return lines + which + ([""] if which else [])


def success_section(data: ReportData, cfg: Config) -> list[str]:
    """Fig 1a's success shares, the nominal scores they are relative to, and the aggregate over games."""
    lines = ["## Success (Fig 1a)", "",
              (f"A run succeeds when its final score >= random + {cfg.success_fraction} x (nominal − random), "
               "random = the game's random-play score (section Random play)."),
              ""]
    lines += markdown(data.nominal.assign(**{column: data.nominal[column].map(fmt) for column in
                                             ("nominal", "random", "success threshold")})) + [""]
    lines += markdown(pd.DataFrame([{"game": g, "algorithm": a, "simulators": s, "successful share (runs)":
                                     f"{fmt(v)} ({n})"} for (g, a, s), (v, n) in data.shares.items()])) + [""]
    lines += [("Aggregate over games: IQM of nominal-normalised final scores (final − random) / (nominal − random) "
               "(1 = the nominal A2C score), over the seeds present in every game of that algorithm and simulator "
               "count; games whose nominal is not above random play are left out."), ""]
    lines += markdown(pd.DataFrame([{"algorithm": f"{label} ({simulators} sims)", "games": ", ".join(games),
                                     "seeds": seeds, "normalised IQM [95% CI]": fmt_ci(*iqm)}
                                    for (label, simulators, games, seeds), iqm in data.aggregate.items()])) + [""]

    return lines


def tests_section(data: ReportData, cfg: Config) -> list[str]:
    """The paired GALA-vs-A2C tests, and the final policy's evaluation (Table 1): argmax and sampled, per seed."""
    table = data.table
    ok = table[table["status"] == "ok"]
    lines = ["## GALA-A2C vs A2C: paired t-tests (two-sided, scipy.stats.ttest_rel)", "",
              ttest_line("success share, paired over (game, simulators) cells (as the authors did for Fig 1a)",
                         data.ttest_shares),
              ttest_line("final score, paired over (game, simulators, seed)", data.ttest_finals),
              ttest_line("score at equal wall-clock time, paired over (game, simulators, seed)", data.ttest_at_time),
              ""]

    lines += ["## Evaluation (Table 1 style: full games after training, mean ± std over seeds of each run's mean)", "",
              ("Each run's final policy plays full games (eval.json): its mean return with the argmax policy and "
               "with actions sampled from the policy; mean ± std over seeds, then each seed's mean."), ""]
    evaluated = ok[ok["eval_argmax"].notna() | ok["eval_sampled"].notna()]
    lines += (markdown(pd.DataFrame([{
        "game": g, "algorithm": label, "simulators": s, "n": int(runs["eval_argmax"].notna().sum()),
        "argmax": mean_std(runs["eval_argmax"]), "sampled": mean_std(runs["eval_sampled"]),
        "argmax, per seed": per_seed(dict(zip(runs["seed"], runs["eval_argmax"]))),
        "sampled, per seed": per_seed(dict(zip(runs["seed"], runs["eval_sampled"]))),
    } for (g, label, s), runs in evaluated.groupby(["game", "label", "simulators"], sort=False)]))
              if len(evaluated) else ["no evaluation found (runs without --eval-episodes)"]) + [""]

    return lines


def throughput_section(data: ReportData, cfg: Config) -> list[str]:
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


def time_section(data: ReportData, cfg: Config) -> list[str]:
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


def ranks_section(data: ReportData, cfg: Config) -> list[str]:
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
               "of the steps; gradient cosine: the mean pairwise cosine of the agents' gradients of the same "
               "update count, over the measured updates of the last quarter (1: they agree, 0: unrelated)."), ""]
    columns = {
        "algorithm": gala["label"], "game": gala["game"], "simulators": gala["simulators"], "seed": gala["seed"],
        "mix rate": gala["mix_rate"].map(fmt), "message age": gala["message_age"].map(fmt),
        "longest without a mix": gala["longest_without_mix"].map(lambda v: fmt(v, 0)),
        "finish spread (s)": gala["finish_spread_s"].map(lambda v: fmt(v, 0)),
        "drift (updates)": gala["drift_updates"].map(lambda v: fmt(v, 0)),
        **({"push-sum weights": gala["weights"]} if weighted else {}),
        "disagreement (last quarter)": gala["disagreement"].map(lambda v: fmt(v, 4)),
        "gradient cosine (last quarter)": gala["grad_cosine"].map(lambda v: fmt(v, 3)),
    }
    lines += markdown(pd.DataFrame(columns)) + [""]
    return lines


def dead_units_section(data: ReportData, cfg: Config) -> list[str]:
    """Each run's share of dead units per hidden layer at its end (where the runs logged them)."""
    ok = data.table[data.table["status"] == "ok"]
    columns = [f"dead_{layer}" for layer in HIDDEN]
    logged = ok.dropna(subset=columns, how="all")
    if logged.empty:
        return []
    lines = ["## Dead units", "",
             ("The share of each hidden layer's units (a conv's channels, the fc layer's units) that no observation "
              "of the rollout batch activated (ReLU output 0 on the whole batch) at the run's last log point; "
              "`dead_units.png` draws it against the steps."), ""]
    table = logged[["label", "game", "simulators", "seed", "final", *columns]].rename(
        columns={"label": "algorithm", **{f"dead_{layer}": layer for layer in HIDDEN}})
    shares = {column: table[column].map(fmt) for column in ("final", *HIDDEN)}
    return lines + markdown(table.assign(**shares)) + [""]


def format_report(data: ReportData, cfg: Config, source: str) -> list[str]:
    """report.md's lines (without its figure list): its sections in order."""
    sections = (runs_section, scores_section, games_section, success_section, tests_section, throughput_section,
                time_section, ranks_section, dead_units_section)
    return ["# Benchmark report", "", f"Source: {source}.", ""] + [line for section in sections
                                                                   for line in section(data, cfg)]
