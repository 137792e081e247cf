"""Faults, for every script: a rank killed mid-run, a kill during a checkpoint write, resume files
that cannot work, a world of one where IMPALA needs two ranks, a slow A2C rank.

SIGTERM -> checkpoint -> resume and the stragglers of GALA, A3C and IMPALA are tested beside each
script (test_<script>.py); this file holds what is the same for all four.
"""

import importlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import ENV, ROOT, assert_bad_input, config_error, ranks_of, read_ckpt, run_ok, start, wait_until_training

SCRIPTS = {
    "a2c_allreduce_atari.py": "a2c_allreduce",
    "gala_a2c_atari.py": "gala_a2c",
    "a3c_gpu_atari.py": "a3c_gpu",
    "impala_atari.py": "impala",
}
FAST = ["--num-envs", "4", "--log-every", "1", "--torch-threads", "1", "--env-threads", "1"]
IMPALA_FAST = ["--batch-size", "4", "--unroll-length", "10"]


def fast(script: str) -> list[str]:
    return FAST + (IMPALA_FAST if script == "impala_atari.py" else [])


# --- a rank killed with SIGKILL --------------------------------------------------------------------
def rank_process(family: list[psutil.Process], rank: int) -> psutil.Process:
    """The Python process of MPI rank `rank` among mpirun's descendants (Hydra sets PMI_RANK)."""
    for p in family:
        try:
            if p.environ().get("PMI_RANK") == str(rank) and "python" in p.name():
                return p
        except psutil.NoSuchProcess:
            continue
    raise AssertionError(f"no process of rank {rank} among {[p.cmdline() for p in family]}")


def assert_nothing_left(family: list[psutil.Process]) -> None:
    """Every process the job started (ranks, proxies, the W&B service) has ended (zombies aside)."""
    _, alive = psutil.wait_procs(family, timeout=5)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind: {[p.cmdline() for p in alive]}"


@pytest.mark.parametrize(
    "script, np_, rank, track",
    [
        ("a2c_allreduce_atari.py", 2, 1, False),  # the other rank is blocked in the Allreduce
        ("gala_a2c_atari.py", 3, 0, False),  # the others go on gossiping
        ("a3c_gpu_atari.py", 3, 2, False),  # a worker: the store and the other worker go on
        ("a3c_gpu_atari.py", 3, 0, False),  # the store rank: workers wait in a window lock
        ("impala_atari.py", 3, 2, False),  # an actor: the learner goes on with the other
        ("impala_atari.py", 3, 0, True),  # the learner, with a W&B service: actors wait for parameters
    ],
)
def test_a_killed_rank_ends_the_whole_job(workdir, script, np_, rank, track):
    """SIGKILL one rank mid-run: mpirun (Hydra) ends the job non-zero within 30 s, and every process
    it started (ranks, proxies, the W&B service) is gone."""
    proc = start(script, "--total-timesteps", "10000000", "--print-every", "0", *fast(script),
                 *(["--track"] if track else []), cwd=workdir, np=np_)
    wait_until_training(proc)
    family = psutil.Process(proc.pid).children(recursive=True)
    victim = rank_process(family, rank)
    began = time.monotonic()
    victim.kill()
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired as err:
        proc.kill()
        raise AssertionError(f"the job was still running 30 s after rank {rank} was killed") from err
    took = time.monotonic() - began
    assert proc.returncode != 0
    assert took < 30
    assert_nothing_left(family)
    print(f"{script} rank {rank} killed: job ended with {proc.returncode} after {took:.1f} s")


# --- a signal to one rank ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "script, np_, rank",
    [
        ("a2c_allreduce_atari.py", 2, 1),
        ("gala_a2c_atari.py", 3, 2),  # an agent
        ("gala_a2c_atari.py", 3, 0),
        ("a3c_gpu_atari.py", 3, 2),  # a worker
        ("a3c_gpu_atari.py", 3, 0),  # the store rank
        ("impala_atari.py", 3, 2),  # an actor
        ("impala_atari.py", 3, 0),  # the learner
    ],
)
def test_a_signal_to_one_rank_stops_the_whole_job_with_a_checkpoint(workdir, script, np_, rank):
    """SIGTERM to one rank only, as a preempted node's ranks get it: every rank finishes its step, the
    job writes one checkpoint (GALA: every agent and their average), says it was stopped and exits 0
    within 30 s, with nothing left running."""
    proc = start(script, "--total-timesteps", "10000000", "--save-model", "--print-every", "1", *fast(script),
                 cwd=workdir, np=np_)
    wait_until_training(proc)
    family = psutil.Process(proc.pid).children(recursive=True)
    began = time.monotonic()
    rank_process(family, rank).send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired as err:
        proc.kill()
        raise AssertionError(f"the job was still running 60 s after rank {rank} was signalled") from err
    took = time.monotonic() - began
    assert proc.returncode == 0, err
    assert "stopped by signal" in out and took < 30
    (run_dir,) = sorted((workdir / "runs").iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["stopped"] is True
    files = ["checkpoint.pt"]
    if script == "gala_a2c_atari.py":
        files = [f"checkpoint/agent{r}.pt" for r in range(np_)] + ["checkpoint/average.pt"]
    for name in files:
        assert read_ckpt(run_dir / name)["global_step"] > 0, name
    assert_nothing_left(family)
    print(f"{script} rank {rank} signalled: job stopped with a checkpoint after {took:.1f} s")


# --- a kill during a checkpoint write ---------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path, script):
    """The script's own save_checkpoint, killed halfway through writing: the previous checkpoint is
    untouched and loads with the script's own reader (read_checkpoint; GALA: load_checkpoint of its directory);
    the next save cleans up."""
    module = importlib.import_module(script[: -len(".py")])
    is_gala = script == "gala_a2c_atari.py"
    path = tmp_path / ("agent0.pt" if is_gala else "checkpoint.pt")

    def load() -> dict:
        args = module.Args(env_id="Pong-v5")
        return module.load_checkpoint(str(tmp_path), args, 0) if is_gala else module.read_checkpoint(path, args, "it")

    module.save_checkpoint(path, {"algorithm": module.ALGO, "env_id": "Pong-v5", "update": 1, "w": torch.zeros(3)})
    before = path.read_bytes()
    worker = subprocess.run([sys.executable, str(ROOT / "tests" / "checkpoint_kill_worker.py"), module.__name__,
                             str(path)], env=ENV, capture_output=True, text=True, timeout=60)
    assert worker.returncode == -9, worker.stderr  # killed, not finished
    (partial,) = tmp_path.glob(path.name + ".tmp*")  # the write was under way
    assert 0 < partial.stat().st_size
    assert path.read_bytes() == before
    assert load()["update"] == 1

    module.save_checkpoint(path, {"algorithm": module.ALGO, "env_id": "Pong-v5", "update": 3, "w": torch.zeros(3)})
    assert load()["update"] == 3
    assert not list(tmp_path.glob(path.name + ".tmp*"))


# --- resume files that cannot work -------------------------------------------------------------------
def resume_file(workdir: Path, script: str, kind: str) -> str:
    """A checkpoint in the script's layout (one file, or GALA's directory of agent files) that is
    corrupt or was written by another algorithm, for another game, or by another world size."""
    state = {"algorithm": SCRIPTS[script], "env_id": "Pong-v5", "world_size": 2, "num_envs": 4, "args": {}}
    if kind == "algorithm":
        state["algorithm"] = "impala" if script != "impala_atari.py" else "a2c_allreduce"
    elif kind == "env":
        state["env_id"] = "Breakout-v5"
    elif kind == "world":
        state["world_size"] = 3
    names = ["agent0.pt", "agent1.pt"] if script == "gala_a2c_atari.py" else ["checkpoint.pt"]
    folder = workdir / "old"
    folder.mkdir()
    for name in names:
        if kind == "corrupt":
            (folder / name).write_bytes(b"\x80\x02 half a checkpoint")
        else:
            torch.save(state, folder / name)
    return str(folder if script == "gala_a2c_atari.py" else folder / names[0])


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize(
    "kind, message",
    [
        ("corrupt", "cannot be read"),
        ("algorithm", "is from '"),
        ("env", "is for Breakout-v5, not --env-id Pong-v5"),
        ("world", "was written by 3 ranks x 4 envs, this run has 2 x 4"),
    ],
)
def test_a_resume_file_that_cannot_work_is_refused(workdir, script, kind, message):
    """In-process through the script's argument checks (every script's launch test checks that such a
    refusal is one message and exit 2 from every rank)."""
    path = resume_file(workdir, script, kind)
    module = importlib.import_module(script[: -len(".py")])
    assert message in config_error(module, ["--resume", path, *fast(script)], world_size=2)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_input_exits_2_on_every_rank_with_one_message(workdir, script):
    """What every script's argument checks refuse (each test file checks them in-process) is, launched, one
    message from rank 0 and exit 2 from every rank, nothing written."""
    assert_bad_input(script, ["--env-id", "Pongg-v5"], "unknown env id 'Pongg-v5'", workdir)


def test_impala_refuses_a_world_of_one():
    module = importlib.import_module("impala_atari")
    assert "IMPALA needs at least 2 ranks" in config_error(module, fast("impala_atari.py"), world_size=1)


# --- a slow rank ------------------------------------------------------------------------------------
def test_a2c_waits_for_a_slow_rank_and_ends_cleanly(workdir):
    """A2C is synchronous by design: every update waits for the slowest rank. Rank 1 as a device 3 times slower
    (--debug-slow-factor 3) sleeps 2 x each of its updates' time; rank 0 waits in the Allreduce instead of
    sleeping; the run still ends normally."""
    proc, run_dir, _ = run_ok("a2c_allreduce_atari.py", "--total-timesteps", str(12 * 5 * 8), "--debug-slow-rank",
                              "1", "--debug-slow-factor", "3", *FAST, cwd=workdir, np=2)
    assert "global_step 480/480" in proc.stdout
    ranks = ranks_of(run_dir)
    assert ranks[1]["slept"] == pytest.approx(2 * (ranks[1]["seconds"] - ranks[1]["slept"]), rel=0.15)
    assert ranks[0]["slept"] == 0 and ranks[0]["updates"] == ranks[1]["updates"] == 12


# --- a wall-clock budget -----------------------------------------------------------------------------
def test_a_wall_clock_budget_ends_the_run_as_its_end_does_and_a_continuation_spends_the_rest(workdir):
    """GALA (the budget is the plumbing's StopSignal, the same in the four scripts; GALA's agents stop at different
    updates), --max-seconds 4: the job stops on its own after 4 s of training, exits 0, says it ran out of time
    (not stopped: nothing to continue) and writes its checkpoints with the seconds spent; a run that continues
    from them with --max-seconds 6 has 2 s left, and starts from the first's seconds and steps."""
    script, checkpoint = "gala_a2c_atari.py", "checkpoint/agent0.pt"
    where = [workdir / "first", workdir / "second"]
    where[0].mkdir()
    budget = ["--total-timesteps", "10000000", "--save-model", *fast(script)]
    _, first, _ = run_ok(script, *budget, "--max-seconds", "4", cwd=where[0], np=2)
    result = json.loads((first / "summary.json").read_text())
    assert (result["out_of_time"], result["stopped"]) == (True, False)
    assert 3.5 < result["seconds"] < 15 and 0 < result["global_step"] < 10_000_000  # from the first update on
    saved = read_ckpt(first / checkpoint)
    assert 3.5 < saved["seconds"] < 15
    where[1].mkdir()
    _, second, _ = run_ok(script, *budget, "--max-seconds", "6", "--resume", str(first / checkpoint.split("/")[0]),
                          cwd=where[1], np=2)
    config, result = (json.loads((second / name).read_text()) for name in ("config.json", "summary.json"))
    assert (config["start_seconds"], config["start_step"]) == (saved["seconds"], saved["global_step"])
    assert result["out_of_time"] and result["seconds"] < 6 - saved["seconds"] + 5
