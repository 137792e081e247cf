"""The flags of `python -m benchmark report` (tyro turns the docstrings into --help): where the runs are, where
the report goes, and the choices its statistics make."""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class Config:
    """Figures and report.md from an experiment's runs (local manifest + TensorBoard, or W&B)."""

    experiment: tuple[Path, ...] = ()
    """experiment directories (each with a manifest.json); default: the newest one under bench_runs/"""
    labels: tuple[str, ...] = ()
    """only the runs of these labels (algorithms or variants); default: every label"""
    seeds: tuple[int, ...] = ()
    """only the runs of these seeds; default: every seed (e.g. a study that borrows seeds 1-2 of another
    experiment: --experiment A B --seeds 1 2)"""
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
    random_play: Optional[Path] = None
    """measured random play (the JSON of `python -m studies.random_play`); default: results/random_play.json
    if it exists. Other games count from the tabulated scores (Mnih et al. 2015); report.md says which"""
    bootstrap_reps: int = 2000
    """stratified-bootstrap replications of the confidence intervals (IQM, mean, probability of improvement,
    performance profiles)"""
    seed: int = 0
    """seed of the bootstrap"""
    final_window: float = 0.1
    """final score: mean of the episodes in this last fraction of a run's global steps"""
    smooth: int = 10
    """return curves and the time to a target: trailing mean over this many games"""
    every_steps: Optional[int] = None
    """also the score at every this many global steps (e.g. 1000000): the mean return of the games that ended in
    the last `final_window` of those steps, as a final score is of all of them"""
    target: tuple[str, ...] = ()
    """target scores GAME=SCORE (e.g. Breakout=10): the time and steps at which each run first reaches it"""
    grid_points: int = 200
    """return curves: points of the common grid the seeds are interpolated on"""
