"""Shared helpers: run a script for real (envpool, MPI, W&B offline) in a subprocess and read what it wrote."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MPIRUN = Path(sys.executable).parent / "mpirun"


def command(script: str, *args: str, np: int | None = None) -> list[str]:
    """`python SCRIPT ARGS`, or under `mpirun -np NP` (the mpirun beside this Python, else PATH's)."""
    cmd = [sys.executable, str(ROOT / script), *args]
    if np is None:
        return cmd
    return [str(MPIRUN) if MPIRUN.exists() else "mpirun", "-np", str(np), *cmd]


def run(script: str, *args: str, cwd: Path, np: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command(script, *args, np=np), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def start(script: str, *args: str, cwd: Path, np: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command(script, *args, np=np), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_dirs(cwd: Path) -> list[Path]:
    return sorted((cwd / "runs").iterdir())


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars of a run: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
