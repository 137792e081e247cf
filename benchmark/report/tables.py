"""Every number of report.md, as tables: `runs_table` (one row per run), of which every table is a
group-by, and `compute_report`, which gathers them in a `ReportData` before markdown.py writes them out."""

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from benchmark.report.config import Config
from benchmark.report.games import RandomPlay, parse_game_scores, random_play, read_random_play
from benchmark.report.load import A2C, GALA, HIDDEN, RunRecord, Series, label_order
from benchmark.report.stats import (
    TTest,
    aggregates_with_ci,
    final_score,
    gossip_statistics,
    iqm_with_ci,
    normalised,
    paired_ttest,
    performance_profiles,
    probability_of_improvement,
    quarter_scores,
    rank_rates,
    run_sps,
    score_at,
    success_share,
    success_threshold,
    time_to,
)


def late_mean(series: Series, total_steps: int) -> float:
    """The mean of a logged scalar over the last quarter of the run's steps (nan if none was logged there)."""
    late = series.step >= 0.75 * total_steps
    return float(series.value[late].mean()) if late.any() else math.nan


def score_up_to(returns: Series, step: int, window: float) -> float:
    """The final score the run would have had had it ended at STEP (final_score of its games up to STEP)."""
    before = returns.step <= step
    return final_score(returns.step[before], returns.value[before], step, window)


def runs_table(records: list[RunRecord], targets: Optional[dict[str, float]] = None, smooth: int = 10) -> pd.DataFrame:
    """One row per run: label, algorithm, game, simulators, seed, status, note, final score, the score in each
    quarter of the steps (q1..q4), SPS, the wall seconds and steps it reached, utilisation, evaluation, each
    rank's steps per second, the seconds and steps to its game's target score (TARGETS: game -> score), the share
    of dead units of each hidden layer at its last log point (dead_<layer>), and for GALA runs the gossip
    statistics of its summary.json with the mean relative disagreement and the mean gradient cosine of the last
    quarter of its steps.
    `at_time` (the score at the game's common wall-clock time) is added by compute_report."""
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
            "grad_cosine": late_mean(r.grad_cosine, r.total_timesteps),
            **{f"dead_{layer}": float(r.dead_units[layer].value[-1]) if ok and layer in r.dead_units else math.nan
               for layer in HIDDEN},
            "rank_rates": rank_rates(r.summary, r.config) if ok else "",
            **dict(zip(("to_target_s", "to_target_steps"), time_to(r.returns.wall, r.returns.step, r.returns.value,
                                                                 (targets or {})[r.game], smooth)
                       if ok and r.game in (targets or {}) else (math.nan, math.nan))),
        })
    table = pd.DataFrame(rows)
    order = {label: i for i, label in enumerate(label_order(table["label"]))}
    return table.sort_values(["game", "label", "simulators", "seed"],
                             key=lambda col: col.map(order) if col.name == "label" else col).reset_index(drop=True)


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


def above_said(play: RandomPlay) -> str:
    """', the upper end of its 95% CI X' when a mean must beat more than the score itself (measured random play)"""
    return f", the upper end of its 95% CI {play.above:.2f}" if play.above != play.score else ""


def against_a2c(scored: pd.DataFrame, random: dict[str, RandomPlay]) -> pd.DataFrame:
    """Per (game, simulators, label other than A2C) where both have final scores: each one's final score per seed
    ({seed: score}) and mean over seeds, and over the seeds both ran the label's score above random play as a share
    of A2C's, `ratio` = (label's mean - random) / (A2C's mean - random) (nan unless A2C's mean there is above random
    play), with its range seed by seed, (label's seed k - random) / (A2C's seed k - random) over the `seed_ratios`
    seeds where A2C's scored above random play (`seed_low`, `seed_high`; the ratio of the means lies between them
    when that is every seed both ran)."""
    finals = {key: dict(zip(runs["seed"], runs["final"])) for key, runs in
              scored.groupby(["game", "simulators", "label"], sort=False)}
    rows = []
    for (game, simulators, label), per_seed in finals.items():
        a2c = finals.get((game, simulators, A2C))
        if label == A2C or a2c is None:
            continue
        r, above = random[game].score, random[game].above
        both = [k for k in per_seed if k in a2c]
        mine, reference = (np.mean([finals[k] for k in both]) if both else math.nan for finals in (per_seed, a2c))
        ratios = [float(normalised(per_seed[k], r, a2c[k])) for k in both if a2c[k] > above]
        rows.append({"game": game, "simulators": simulators, "label": label, "random": r, "a2c_finals": a2c,
                     "a2c_mean": np.mean(list(a2c.values())), "finals": per_seed,
                     "mean": np.mean(list(per_seed.values())), "both": len(both),
                     "ratio": float(normalised(mine, r, reference)) if reference > above else math.nan,
                     "seed_ratios": len(ratios), "seed_low": min(ratios, default=math.nan),
                     "seed_high": max(ratios, default=math.nan)})
    return pd.DataFrame(rows, columns=["game", "simulators", "label", "random", "a2c_finals", "a2c_mean", "finals",
                                       "mean", "both", "ratio", "seed_ratios", "seed_low", "seed_high"])


@dataclass
class AcrossGames:
    """One score of the runs at one simulator count, compared over games x seeds as Agarwal et al. 2021 do: on each
    game normalised by A2C's mean there, (score - random play) / (A2C's mean - random play), so that A2C's mean is
    1 on every game and random play 0."""

    score: str
    """the runs_table column: final, eval_argmax or eval_sampled"""
    simulators: int
    games: list[str]
    """the games of the matrices: those where A2C's mean is above random play"""
    left_out: list[str]
    """the games and labels left out, each with why"""
    normalised: dict[str, np.ndarray]
    """label -> (seeds x games) of its normalised scores, over its seeds that ran every game"""
    aggregates: dict[str, dict[str, tuple]]
    """label -> {"IQM": (point, low, high), "mean": (point, low, high)} (aggregates_with_ci)"""
    improvement: dict[str, tuple]
    """label -> P(label > A2C) (point, low, high), for every label but A2C (probability_of_improvement)"""


def across_games(scored: pd.DataFrame, score: str, simulators: int, random: dict[str, RandomPlay], reps: int,
                 seed: int) -> Optional[AcrossGames]:
    """The comparison over games x seeds of SCORE (a runs_table column) at SIMULATORS; None without an A2C run
    there or without a game where A2C's mean is above random play."""
    runs = scored[(scored["simulators"] == simulators) & scored[score].notna()]
    a2c = runs[runs["label"] == A2C].groupby("game")[score].mean()
    games = [g for g, mean in a2c.items() if mean > random[g].above]
    left_out = [f"{g} (A2C's mean {mean:.2f} is not above random play, {random[g].score:.2f}{above_said(random[g])})"
                for g, mean in a2c.items() if g not in games]
    left_out += [f"{g} (no A2C score)" for g in sorted(set(runs["game"]) - set(a2c.index))]
    if not games:
        return None
    matrices = {}
    for label in label_order(runs["label"]):
        wide = runs[runs["label"] == label].pivot_table(index="seed", columns="game", values=score)
        wide = wide.reindex(columns=games).dropna()
        if len(wide):
            matrices[label] = np.column_stack([normalised(wide[g], random[g].score, a2c[g]) for g in games])
        else:
            left_out.append(f"{label} (no seed with a score on every one of these games)")
    if A2C not in matrices:
        return None
    improvement = {label: probability_of_improvement(m, matrices[A2C], reps, seed)
                   for label, m in matrices.items() if label != A2C}
    return AcrossGames(score, simulators, games, left_out, matrices, aggregates_with_ci(matrices, reps, seed),
                       improvement)


PROFILE_TAUS = 201
"""points of the performance profiles' normalised-score axis"""


def profiles_of(across: AcrossGames, reps: int, seed: int) -> tuple[np.ndarray, dict, dict]:
    """The performance profiles of ACROSS's normalised scores (performance_profiles) on a grid of normalised scores
    from min(0, the lowest) to max(1, the highest): (taus, label -> shares, label -> CIs)."""
    values = np.concatenate([m.ravel() for m in across.normalised.values()])
    taus = np.linspace(min(0.0, values.min()), max(1.0, values.max()), PROFILE_TAUS)
    return (taus, *performance_profiles(across.normalised, taus, reps, seed))


@dataclass
class ReportData:
    """What report.md says, computed from the runs table (compute_report) before it is written (format_report)."""

    table: pd.DataFrame
    """runs_table with `at_time`"""
    times: dict[tuple[str, int], float]
    """(game, seed) -> the common wall-clock seconds at which `at_time` is read (the shortest run's)"""
    scores: pd.DataFrame
    """per (game, label, simulators): n, mean, std and `iqm` (IQM, low, high) of the final scores"""
    normalised: pd.DataFrame
    """per (game, label, simulators): n, `per_step` and `per_second`: (IQM, low, high) of (score - random) /
    (A2C's mean - random) of the final scores and of the scores at equal time (None without a score at time)"""
    nominal: pd.DataFrame
    """per game: the nominal score, where it came from, the random-play score and the success threshold"""
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
    random: dict[str, RandomPlay]
    """game -> the random-play score every normalisation and success threshold counts from, and its source"""
    against_a2c: pd.DataFrame
    """per game, simulators and label: final scores per seed beside A2C's, and the share of A2C's score above
    random play (against_a2c)"""
    across: list[AcrossGames]
    """the comparisons over games x seeds: per simulator count with A2C runs, of the final score and of the
    evaluations (argmax, sampled) where runs have them"""
    profiles: dict[int, tuple[np.ndarray, dict, dict]]
    """simulators -> performance profiles of the A2C-normalised final scores (profiles_of)"""


def compute_report(records: list[RunRecord], cfg: Config) -> ReportData:
    """Every number of report.md, from the runs table."""
    table = runs_table(records, dict(parse_game_scores(cfg.target)), cfg.smooth)
    ok = table[table["status"] == "ok"]
    scored = ok[ok["final"].notna()]
    by_name = {r.name: r for r in records}

    # At equal wall-clock time: the shortest run of each game and seed sets the time at which that game's and seed's
    # runs are read. Per seed, not per game: a seed's arms run one after the other on one machine, and seeds may
    # run on machines of different speeds (a game's shortest run on a faster machine would read the slower
    # machine's runs long before their end).
    times = {(game, int(seed)): float(runs["seconds"].min()) for (game, seed), runs in scored.groupby(["game", "seed"])}
    table["at_time"] = [score_at(by_name[n].returns.wall, by_name[n].returns.value, times[g, int(seed)],
                                 cfg.final_window)
                        if s == "ok" and (g, int(seed)) in times else math.nan
                        for n, g, seed, s in zip(table["name"], table["game"], table["seed"], table["status"])]
    # The score at every `every_steps` steps: step -> score, read as the final score is, at each mark
    table["at_steps"] = [{mark: score_up_to(by_name[n].returns, mark, cfg.final_window)
                          for mark in range(cfg.every_steps, int(total) + 1, cfg.every_steps)}
                         if cfg.every_steps and s == "ok" else {}
                         for n, s, total in zip(table["name"], table["status"], table["steps"].fillna(0))]
    ok, scored = table[table["status"] == "ok"], table[(table["status"] == "ok") & table["final"].notna()]
    measured = read_random_play(cfg.random_play)
    random_plays = {game: random_play(game, measured) for game in sorted(table["game"].unique())}

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
        random, ref = random_plays[game].score, reference.get((game, simulators))
        if ref is None or ref <= random_plays[game].above:
            continue
        ci = {column: iqm_with_ci({"x": normalised(rs[column].dropna(), random, ref)}, cfg.bootstrap_reps,
                                  cfg.seed).get("x") for column in ("final", "at_time")}
        rows.append({"game": game, "label": label, "simulators": simulators, "n": len(rs),
                     "per_step": ci["final"], "per_second": ci["at_time"]})
    normalised_scores = pd.DataFrame(rows, columns=["game", "label", "simulators", "n", "per_step", "per_second"])

    # Nominal scores, success, aggregate
    nominal = nominal_scores(scored, dict(parse_game_scores(cfg.nominal)))
    nominal_rows = []
    for game in sorted(scored["game"].unique()):
        random = random_plays[game].score
        if game not in nominal:
            nominal_rows.append({"game": game, "nominal": math.nan, "nominal from": "no A2C run and no --nominal",
                                 "random": random, "success threshold": math.nan})
            continue
        value, where = nominal[game]
        warn = (f" (not above random play{above_said(random_plays[game])}: no success share, no normalised score)"
                if value <= random_plays[game].above else "")
        nominal_rows.append({"game": game, "nominal": value, "nominal from": where + warn, "random": random,
                             "success threshold": success_threshold(value, random, cfg.success_fraction)})
    usable = [g for g, (v, _) in nominal.items() if v > random_plays[g].above]
    shares = {(g, lab, s): (success_share(rs["final"], nominal[g][0], random_plays[g].score,
                                          cfg.success_fraction), len(rs))
              for (g, lab, s), rs in cells if g in usable}
    matrices = {}
    for (label, simulators), rs in scored[scored["game"].isin(usable)].groupby(["label", "simulators"]):
        wide = rs.pivot_table(index="seed", columns="game", values="final").dropna()
        if len(wide):
            games = list(wide.columns)
            norm = np.column_stack([normalised(wide[g], random_plays[g].score, nominal[g][0]) for g in games])
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

    # Across games: GALA (and any other label) against A2C, per game and over games x seeds
    across = [a for simulators in sorted(scored.loc[scored["label"] == A2C, "simulators"].unique())
              for score in ("final", "eval_argmax", "eval_sampled") if scored[score].notna().any()
              for a in [across_games(scored, score, simulators, random_plays, cfg.bootstrap_reps, cfg.seed)] if a]
    profiles = {a.simulators: profiles_of(a, cfg.bootstrap_reps, cfg.seed) for a in across if a.score == "final"}
    return ReportData(table, times, scores, normalised_scores, pd.DataFrame(nominal_rows), shares, aggregate,
                      ttest_shares, paired(scored, "final"), paired(ok, "at_time"),
                      throughput.sort_values("simulators", kind="stable"), random_plays,
                      against_a2c(scored, random_plays), across, profiles)
