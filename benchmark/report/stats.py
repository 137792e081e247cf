"""The report's statistics: small pure functions of arrays (a run's returns, steps, wall seconds) and of a
run's counters in summary.json, which the tests call directly."""

import math
import warnings
from contextlib import contextmanager
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
import scipy.stats


def final_score(steps: np.ndarray, returns: np.ndarray, total_steps: int, window: float = 0.1) -> float:
    """Mean of the episodic returns logged in the last `window` of the run's global steps (steps >=
    (1 - window) x total); if none was, those of the last logged step. nan if no episode at all."""
    steps, returns = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    if len(returns) == 0:
        return math.nan
    late = steps >= (1 - window) * total_steps
    return float(returns[late].mean() if late.any() else returns[steps == steps.max()].mean())


@contextmanager
def seeded_bootstrap(seed: int):
    """The block's rliable bootstraps, made reproducible: rliable 1.2's bootstraps draw their resamples from numpy's
    global generator (np.random.choice), not from the random_state they are given, so that one is seeded too (and
    restored afterwards). Yields the random_state to pass; hushes arch's FutureWarning about it."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():  # arch >= 7 deprecates the random_state that rliable passes
            warnings.simplefilter("ignore", FutureWarning)
            yield np.random.RandomState(seed)
    finally:
        np.random.set_state(saved)


def iqm_with_ci(scores: dict[str, np.ndarray], reps: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """Interquartile mean and its 95% stratified-bootstrap confidence interval (rliable), per key:
    scores[key] is (runs x tasks), or 1-D for one task. Returns key -> (IQM, low, high)."""
    from rliable import library, metrics

    matrices = {k: np.asarray(v, dtype=float).reshape(len(v), -1) for k, v in scores.items() if len(v)}
    if not matrices:
        return {}
    with seeded_bootstrap(seed) as random_state:
        points, intervals = library.get_interval_estimates(
            matrices, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps, random_state=random_state)
    return {k: (float(points[k][0]), float(intervals[k][0, 0]), float(intervals[k][1, 0])) for k in matrices}


AGGREGATES = ("IQM", "mean")
"""the aggregates over games x runs that aggregates_with_ci computes, in its order"""


def aggregates_with_ci(scores: dict[str, np.ndarray], reps: int, seed: int) -> dict[str, dict[str, tuple]]:
    """The IQM (25% trimmed mean of all runs of all games: rliable's aggregate_iqm) and the mean (of each game's
    mean over runs: aggregate_mean) of scores[key], a (runs x games) matrix of normalised scores, with their 95%
    stratified-bootstrap CIs (runs resampled within each game). Returns key -> {"IQM": (point, low, high),
    "mean": (point, low, high)}."""
    from rliable import library, metrics

    with seeded_bootstrap(seed) as random_state:
        points, intervals = library.get_interval_estimates(
            scores, lambda x: np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)]), reps=reps,
            random_state=random_state)
    return {k: {name: (float(points[k][i]), float(intervals[k][0, i]), float(intervals[k][1, i]))
                for i, name in enumerate(AGGREGATES)} for k in scores}


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int, seed: int) -> tuple[float, float, float]:
    """P(X > Y) (rliable's probability_of_improvement) with its 95% CI: on each game, the chance that a run of X
    scores above a run of Y, ties counting half (the Mann-Whitney U of X over Y / (runs of X x runs of Y)), averaged
    over the games. x: (runs of X x games), y: (runs of Y x games), the games in the same order; the CI resamples
    each one's runs independently within each game. Returns (P, low, high)."""
    from rliable import library, metrics

    with seeded_bootstrap(seed) as random_state:
        points, intervals = library.get_interval_estimates(
            {"P(X > Y)": (np.asarray(x, dtype=float), np.asarray(y, dtype=float))},
            lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps=reps, random_state=random_state)
    return float(points["P(X > Y)"][0]), float(intervals["P(X > Y)"][0, 0]), float(intervals["P(X > Y)"][1, 0])


def performance_profiles(scores: dict[str, np.ndarray], taus: np.ndarray, reps: int, seed: int) -> tuple[dict, dict]:
    """Performance profiles (rliable's create_performance_profile, score distributions): for each key, the share of
    all its runs of all games whose score is above each tau of TAUS, and the 95% stratified-bootstrap CI of that
    share. scores[key]: (runs x games). Returns (key -> shares, key -> (2 x len(taus)): lows, highs)."""
    from rliable import library

    with seeded_bootstrap(seed):  # create_performance_profile passes no random_state: numpy's global generator
        return library.create_performance_profile(scores, np.asarray(taus, dtype=float), reps=reps)


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
