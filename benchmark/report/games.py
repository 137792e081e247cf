"""What the report knows of each game: its key (`Pong-v5` -> `Pong`), its random-play score (measured with this
project's envpool settings by `python -m studies.random_play`, else the commonly tabulated one), and the GAME=SCORE
arguments of --nominal and --target."""

import json
import math
from pathlib import Path
from typing import NamedTuple, Optional

from scipy import stats

from benchmark.common import ROOT

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
Dopamine/rliable (checked against google-research/reincarnating_rl, atari_scores.py). They were measured
under other emulator settings than this project's; the report takes them only for a game that
RANDOM_PLAY_FILE does not hold. A game in neither counts as 0."""

RANDOM_PLAY_FILE = ROOT / "results" / "random_play.json"
"""random play measured with this project's envpool settings (studies/random_play.py writes it):
{env id: {"mean": ..., "games": n, "command": ..., ...}}; the report's default --random-play"""


class RandomPlay(NamedTuple):
    """The random-play score the report counts a game's normalised scores from, where it came from, and the score
    a mean must beat to count as above random play (an A2C mean at or below it is no reference to normalise by:
    a dead A2C a hair above random play would turn every other score into a huge ratio)."""

    score: float
    source: str
    above: float
    """measured: the upper end of the 95% CI of random play's mean (Student's t), mean + t(0.975, games - 1) std /
    sqrt(games); tabulated or unknown (no spread known): the score itself"""


def game_of(env_id: str) -> str:
    """`Pong-v5` -> `Pong`: the key of RANDOM_SCORES and of --nominal."""
    return env_id.split("-")[0]


def parse_game_scores(items: tuple[str, ...]) -> list[tuple[str, float]]:
    """--nominal and --target: `Pong=18` or `Pong-v5=18` -> ("Pong", 18.0)."""
    out = []
    for item in items:
        game, sep, score = item.partition("=")
        if not sep:
            raise ValueError(f"--nominal and --target take GAME=SCORE, got {item!r}")
        out.append((game_of(game), float(score)))
    return out


def read_random_play(path: Optional[Path]) -> dict[str, dict]:
    """The measured random play in PATH (studies/random_play.py's JSON), keyed by game: game -> its entry, with
    "file" added (the path it was read from). PATH None: RANDOM_PLAY_FILE if it exists, else {} (nothing measured).
    Raises ValueError for a PATH that does not exist or an entry without a numeric "mean" and "games"."""
    if path is None:
        if not RANDOM_PLAY_FILE.exists():
            return {}
        path = RANDOM_PLAY_FILE
    if not path.exists():
        raise ValueError(f"--random-play: no file {path}")
    out = {}
    for env_id, entry in json.loads(path.read_text()).items():
        if not isinstance(entry.get("mean"), (int, float)) or not isinstance(entry.get("games"), int):
            raise ValueError(f"--random-play {path}: {env_id} has no numeric 'mean' and 'games'")
        out[game_of(env_id)] = {**entry, "file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)}
    return out


def random_play(game: str, measured: dict[str, dict]) -> RandomPlay:
    """The random-play score of GAME: measured (read_random_play's entry) if there is one, else the tabulated
    RANDOM_SCORES, else 0; with its source said in words and the score a mean must beat to be above it."""
    if game in measured:
        entry = measured[game]
        mean, spread, games = float(entry["mean"]), entry.get("std") or 0.0, entry["games"]
        half_width = float(stats.t.ppf(0.975, games - 1)) * spread / math.sqrt(games) if games > 1 else 0.0
        return RandomPlay(mean, f"measured: {games} games ({entry['file']})", mean + half_width)
    if game in RANDOM_SCORES:
        return RandomPlay(RANDOM_SCORES[game], "tabulated: Mnih et al. 2015 (other emulator settings)",
                          RANDOM_SCORES[game])
    return RandomPlay(0.0, "none known: 0", 0.0)
