"""Random play on the GALA paper's six games with this project's envpool settings: the score from which the
report's normalised scores, (score - random play) / (reference - random play), count.

Plays `--games` full games of each game with uniformly random actions (at every step each of the game's legal
actions with the same probability, independently of the screen), in the environment of the scripts' own
evaluation: `make_env(env_id, num_envs, seed, threads, train=False)` of a2c_allreduce_atari.py (84x84 gray,
4-frame stack, frame skip 4, up to 30 no-ops and the fire press at reset, no episodic life, no reward clipping,
at most 27,000 steps = 108,000 frames a game), one game per simulator as the scripts' `evaluate` plays them, so
that short games are not over-counted. A game's score is its raw return summed over all its lives. The commonly
tabulated random scores (Mnih et al. 2015, Extended Data Table 2) were measured under other emulator settings;
the report takes them only for a game this file does not hold, and says which it used.

Writes `--out` (default results/random_play.json), {"Breakout-v5": {"mean", "std", "median", "games", "returns",
"steps", "what", "command", "commit", "envpool", "seed"}, ...}, keeping the entries of games it did not play, and
beside it the same as a text table (random_play.txt) with the tabulated score of each game.

    python -m studies.random_play --games 30                     # all six games, a few CPU minutes
    python -m studies.random_play --games 1 --env-ids Pong-v5 --out /tmp/random_play.json
"""

import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from benchmark.common import script_module
from benchmark.report.games import RANDOM_SCORES, game_of
from benchmark.run import GAMES, git_commit

WHAT = ("mean raw score (all lives) of full games with uniformly random actions, envpool with the scripts' "
        "evaluation settings: make_env(env_id, num_envs, seed, threads, train=False) of a2c_allreduce_atari.py")


@dataclass
class Config:
    """Random play on each game, in the scripts' evaluation environment: the mean score of full games with uniformly
    random actions, which the report's normalised scores count from (results/random_play.json)."""

    games: int = 30
    """full games played per game (all at once, one per simulator)"""
    env_ids: tuple[str, ...] = GAMES
    """the games: the GALA paper's six by default"""
    seed: int = 1
    """seed of the simulators (simulator i gets seed + i) and of the random actions"""
    threads: int = 1
    """envpool threads"""
    out: Path = Path("results/random_play.json")
    """the JSON to write (entries of other games in it are kept); the text table goes beside it (.txt)"""


def play(env_id: str, games: int, seed: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """(score, steps) of GAMES full games of ENV_ID with uniformly random actions, one per simulator: each simulator's
    raw rewards summed until its first game over (or the time limit), as the scripts' `evaluate` does."""
    envs = script_module("a2c_allreduce_atari.py").make_env(env_id, games, seed, threads, train=False)
    rng = np.random.default_rng(seed)
    envs.reset()
    scores, steps, done = np.zeros(games), np.zeros(games, dtype=np.int64), np.zeros(games, dtype=bool)
    running, length = np.zeros(games), np.zeros(games, dtype=np.int64)
    while not done.all():
        _, _, _, truncated, info = envs.step(rng.integers(envs.action_space.n, size=games))
        running += info["reward"]
        length += 1
        ended = (info["terminated"].astype(bool) | truncated) & ~done
        scores[ended], steps[ended] = running[ended], length[ended]
        done |= ended
    envs.close()
    return scores, steps


def entry(scores: np.ndarray, steps: np.ndarray, command: str, commit: str, seed: int, envpool: str) -> dict:
    """One game's entry of the JSON: the mean (what the report counts from), std, median and every game's score and
    length in steps, with what was measured and how."""
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
            "median": float(np.median(scores)), "games": len(scores), "returns": [float(s) for s in scores],
            "steps": [int(n) for n in steps], "what": WHAT, "command": command, "commit": commit, "seed": seed,
            "envpool": envpool}


def table(results: dict[str, dict]) -> list[str]:
    """The text table of RESULTS (env id -> entry), beside the tabulated random scores."""
    lines = [f"# {WHAT}", "| game | random play (mean ± std) | median | games | mean length (steps) | tabulated "
             "(Mnih et al. 2015) |", "| --- | --- | --- | --- | --- | --- |"]
    for env_id, e in sorted(results.items()):
        std = f" ± {e['std']:.1f}" if e.get("std") is not None else ""
        tabulated = RANDOM_SCORES.get(game_of(env_id))
        lines.append(f"| {env_id} | {e['mean']:.1f}{std} | {e['median']:.1f} | {e['games']} | "
                     f"{np.mean(e['steps']):.0f} | {'n/a' if tabulated is None else tabulated} |")
    return lines


def main(cfg: Config) -> None:
    import envpool

    command = shlex.join(["python", "-m", "studies.random_play", *sys.argv[1:]])
    results = json.loads(cfg.out.read_text()) if cfg.out.exists() else {}
    for env_id in cfg.env_ids:
        began = time.time()
        scores, steps = play(env_id, cfg.games, cfg.seed, cfg.threads)
        results[env_id] = entry(scores, steps, command, git_commit(), cfg.seed, envpool.__version__)
        print(f"{env_id}: {np.mean(scores):.1f} over {cfg.games} games ({time.time() - began:.0f} s)", flush=True)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(results, indent=1) + "\n")
    text = "\n".join(table(results)) + "\n"
    cfg.out.with_suffix(".txt").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main(tyro.cli(Config))
