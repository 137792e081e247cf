"""What the benchmarks and the tests share: launching a script, reading a run's TensorBoard scalars."""

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mpirun() -> str:
    """The mpirun installed beside this Python (the project's MPI wheel), else the one on PATH."""
    beside = Path(sys.executable).parent / "mpirun"
    return str(beside) if beside.exists() else "mpirun"


def command(script: str, *args: str, np: int | None = None) -> list[str]:
    """`python SCRIPT ARGS`, or the same under `mpirun -np NP`."""
    cmd = [sys.executable, str(ROOT / script), *args]
    return cmd if np is None else [mpirun(), "-np", str(np), *cmd]


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars of a run: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def launch(where: Path, script: str, np: int, *args: str) -> Path:
    """Runs `mpirun -np NP python SCRIPT ARGS` to completion in `where` (created); returns the run
    directory it wrote under runs/."""
    where.mkdir(parents=True, exist_ok=True)
    began = time.time()
    subprocess.run(command(script, *args, np=np), cwd=where, check=True)
    print(f"  {script} -np {np} {' '.join(args)}: {time.time() - began:.0f} s wall", flush=True)
    return max((where / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
