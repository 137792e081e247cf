"""Shared helpers: run a script for real (envpool, MPI, W&B offline) in a subprocess and read what it wrote."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmark.common import command, scalars  # noqa: E402

# The tests start up to 4 ranks on 2 cores: a rank waiting in a blocking MPICH call (an Allreduce, a Wait, a window
# lock) sleeps between polls instead of polling a core at 100% that the other ranks need (results/
# throughput_levers.txt, section 11). Set here, before any launch, so every test's children inherit it.
os.environ.setdefault("MPIR_CVAR_ENABLE_HEAVY_YIELD", "1")
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}


def cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
"""parametrize("device", DEVICES): a test that touches devices runs on the CPU always, on CUDA where present"""


def pytest_runtest_setup(item) -> None:
    if item.get_closest_marker("gpu") is not None and not cuda_present():
        pytest.skip("needs CUDA (the gpu marker): none here")


def device_flag(device: str) -> str:
    """A script's explicit device: its default (--cuda) would put a test on a GPU wherever one is present."""
    return "--cuda" if device == "cuda" else "--no-cuda"


def run(
    script: str, *args: str, cwd: Path, np: int | None = None, timeout: float = 120, device: str = "cpu"
) -> subprocess.CompletedProcess:
    """SCRIPT ARGS on DEVICE (the CPU unless said), in a subprocess under mpirun -np NP (None: plain python)."""
    return subprocess.run(command(script, device_flag(device), *args, np=np), cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def start(script: str, *args: str, cwd: Path, np: int | None = None, device: str = "cpu") -> subprocess.Popen:
    return subprocess.Popen(command(script, device_flag(device), *args, np=np), cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_dirs(cwd: Path) -> list[Path]:
    return sorted((cwd / "runs").iterdir())


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def run_ok(script: str, *args: str, cwd: Path, np: int | None = None, timeout: float = 240, device: str = "cpu"):
    """Runs the script, requires exit 0 and exactly one run directory; returns (process, run
    directory, its TensorBoard scalars)."""
    proc = run(script, *args, cwd=cwd, np=np, timeout=timeout, device=device)
    ok(proc)
    (run_dir,) = run_dirs(cwd)
    return proc, run_dir, scalars(run_dir)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def wait_until_training(proc: subprocess.Popen, within: float = 90) -> None:
    """Read the script's stdout until rank 0's first progress line (training has begun), or `within` s."""
    deadline = time.time() + within
    for line in proc.stdout:
        if line.startswith("global_step") or time.time() > deadline:
            break


def sigterm_once_training(script: str, *args: str, cwd: Path, np: int) -> tuple[int, str, str]:
    """Start the script, wait for its first progress line, send SIGTERM to mpirun (which forwards
    it to every rank, as SLURM's preemption does); returns (exit code, stdout, stderr)."""
    proc = start(script, *args, cwd=cwd, np=np)
    wait_until_training(proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def read_ckpt(path: Path) -> dict:
    """A checkpoint as any reader on any machine loads it: onto the CPU."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def interrupt_then_resume(script: str, total: int, updates: int, *args: str, cwd: Path, np: int):
    """SIGTERM a run of 100 x `total` steps once it trains: it must exit 0, say so, and leave a
    checkpoint.pt of fewer than `updates` updates; resume it to `total` with --save-model. Returns
    (interrupted checkpoint, final checkpoint, the resumed run's process)."""
    code, out, err = sigterm_once_training(script, "--total-timesteps", str(total * 100), *args, cwd=cwd, np=np)
    assert code == 0, err
    assert "stopped by signal" in out
    (first,) = run_dirs(cwd)
    saved = read_ckpt(first / "checkpoint.pt")
    assert 0 < saved["update"] < updates
    proc = run(script, "--total-timesteps", str(total), "--resume", str(first / "checkpoint.pt"), "--save-model",
               *args, cwd=cwd, np=np)
    ok(proc)
    (second,) = [d for d in run_dirs(cwd) if d != first]
    return saved, read_ckpt(second / "checkpoint.pt"), proc, second


def ranks_of(run_dir: Path) -> dict[int, dict]:
    """Every rank's own counters in the run's summary.json, by rank."""
    return {r["rank"]: r for r in json.loads((run_dir / "summary.json").read_text())["ranks"]}


def assert_devices(run_dir: Path, device: str, gpu_ranks: list[int]) -> None:
    """summary.json gives every rank its device: with DEVICE cuda the i-th of GPU_RANKS (one node) on cuda:{i %
    the GPUs here}, every other rank on the CPU; with cpu, all on the CPU."""
    devices = {r: entry["device"] for r, entry in ranks_of(run_dir).items()}
    gpus = cuda_device_count() if device == "cuda" else 0
    expected = {r: f"cuda:{gpu_ranks.index(r) % gpus}" if gpus and r in gpu_ranks else "cpu" for r in devices}
    assert devices == expected


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count()


def assert_bad_input(script: str, args: list[str], message: str, cwd: Path, np: int = 2) -> None:
    """Exit 2 from every rank (mpirun passes it on) within a minute, the message said exactly once,
    no traceback, nothing written."""
    proc = run(script, *args, cwd=cwd, np=np, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count(message) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (cwd / "runs").exists()


def config_error(module, args: list[str], world_size: int = 2) -> str:
    """In-process, what every rank of a `world_size` job checks before anything runs: the script's
    finalize_args and start_checkpoint on ARGS (parsed by tyro as on the command line). Returns the
    ConfigError's message, or "" if the input is accepted. (One launch per script checks that such an
    error gives one message and exit 2 from every rank: assert_bad_input.)"""
    import tyro

    parsed = tyro.cli(module.Args, args=args)
    try:
        module.finalize_args(parsed, world_size)
        module.start_checkpoint(parsed, world_size, 0)
    except module.ConfigError as e:
        return str(e)
    return ""


def runner(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m benchmark run ARGS` in a subprocess, as a user types it."""
    return subprocess.run([sys.executable, "-m", "benchmark", "run", *args], check=False, cwd=cwd,
                          env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=timeout)


def runner_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """What `runner(*args)` gives, from this process (without a new interpreter's 3 s of imports): for the runner's
    plans, dry runs and refusals. One refusal keeps the subprocess, as a user types it."""
    from benchmark.__main__ import main

    capsys.readouterr()
    code = main(["run", *args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["python", "-m", "benchmark", "run", *args], code, out, err)


def tiny_run(out: Path, *more: str, capsys=None) -> subprocess.CompletedProcess:
    """`python -m benchmark run` of the tiny experiment into OUT/tiny, with MORE flags after its own: an A2C and
    a GALA run (2 ranks x 1 simulator, Pong, 3000 steps, so every simulator finishes a game; side by side; W&B
    offline), and the same two on an unknown game, which fail. With CAPSYS, in this process (for dry runs)."""
    args = ("--name", "tiny", "--out", str(out), "--algorithms", "a2c_allreduce", "gala_a2c",
            "--env-ids", "Pong-v5", "Pongg-v5", "--seeds", "1", "--simulators", "2", "--workers", "2",
            "--total-timesteps", "3000", "--max-parallel", "2", "--extra=--no-cuda --eval-episodes 1 --log-every 5",
            *more)
    return runner_in_process(capsys, *args) if capsys else runner(*args, cwd=out, timeout=300)


@pytest.fixture(scope="session")
def tiny_experiment(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """bench_runs/tiny made by tiny_run. Returns the experiment directory and the runner's process."""
    out = tmp_path_factory.mktemp("bench_runs")
    return out / "tiny", tiny_run(out)
