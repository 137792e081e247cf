"""What the report knows of each game: its key (`Pong-v5` -> `Pong`), its random-play score, and the
GAME=SCORE arguments of --nominal and --target."""

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
