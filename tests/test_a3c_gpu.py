import copy
import json
import subprocess

import numpy as np
import pytest
import torch
from batch import fixed_batch, reference_loss
from conftest import DEVICES, assert_devices, config_error, interrupt_then_resume, ok, ranks_of, read_ckpt, run_ok

import a3c_gpu_atari as a3c
from benchmark.common import command

SCRIPT = "a3c_gpu_atari.py"
FAST = ["--num-envs", "8", "--print-every", "1", "--log-every", "5"]


# --- the central store -----------------------------------------------------------------------------
def store(tmp_path, mode: str, np_: int) -> tuple[dict, dict]:
    out = tmp_path / "store.json"
    ok(subprocess.run(command("tests/a3c_store_worker.py", str(out), mode, np=np_), capture_output=True, text=True,
                      timeout=120))
    return json.loads(out.read_text()), dict(np.load(str(out) + ".npz"))


def test_one_update_equals_torch_rmsprop(tmp_path):
    summary, state = store(tmp_path, "rmsprop", 2)
    param = torch.nn.Parameter(torch.from_numpy(state["initial"]).clone())
    optimizer = torch.optim.RMSprop([param], lr=1e-3, alpha=0.99, eps=1e-5)
    param.grad = torch.from_numpy(state["gradients"][0][0]).clone()
    optimizer.step()
    assert summary["count"] == 1
    np.testing.assert_allclose(state["params"], param.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(state["square_avg"], optimizer.state[param]["square_avg"].numpy(), rtol=1e-6)


def test_an_update_is_not_held_up_by_a_computing_rank(tmp_path):
    """Rank 1 computes for 3 s without calling MPI; rank 2's update and read of the store (hosted by
    the serving rank 0) take well under a second (MPICH would make it wait on a busy host)."""
    summary, _ = store(tmp_path, "held_up", 3)
    assert summary["workers"][1]["update_seconds"] < 1.0


def test_no_update_is_lost_by_concurrent_workers(tmp_path):
    summary, state = store(tmp_path, "sum", 5)
    assert summary["count"] == 80
    expected = state["initial"].astype(np.float64) - state["gradients"].astype(np.float64).sum(axis=(0, 1))
    np.testing.assert_allclose(state["params"], expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("world_size, num_envs, lr", [(5, 16, 7e-4), (3, 64, 1.4e-3), (1, 16, 7e-4)])
def test_default_learning_rate_follows_the_simulators_of_one_update(world_size, num_envs, lr):
    """Each central update applies one worker's batch: the default lr is 7e-4 x sqrt(num_envs / 16),
    whatever the number of workers (store + 4 workers x 16 envs: 7e-4, not 1.4e-3)."""
    args = a3c.Args(num_envs=num_envs)
    assert a3c.finalize_args(args, world_size) is None
    assert args.learning_rate == pytest.approx(lr)


@pytest.mark.parametrize("device", DEVICES)
def test_a_workers_gradient_and_losses_are_those_of_the_mean_loss(device):
    """a2c_gradient on DEVICE (one copy to the host carries both) against plain autograd on the CPU: the clipped
    gradient of the mean loss over the valid samples, and the mean losses."""
    args = a3c.Args()
    agent, batch = fixed_batch()
    reference = copy.deepcopy(agent)
    grad, means = a3c.a2c_gradient(agent.to(device), *(x.to(device) for x in batch), args)
    reference_loss(reference, *batch, args).backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), args.max_grad_norm)
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()]).numpy()
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6 if device == "cpu" else 1e-5)
    sums = a3c.a2c_loss_sums(reference, *batch)
    np.testing.assert_allclose(means, [float(x) / float(batch[3].sum()) for x in sums], rtol=1e-4)


# --- the script end to end -------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_end_to_end_store_and_two_workers_tracked_offline(workdir, device):
    """The workers learn on DEVICE; the store rank, which only serves, stays on the CPU."""
    total = 120 * 40  # 120 central updates of 8 envs x 5 steps
    proc, run_dir, tags = run_ok(SCRIPT, "--env-id", "Breakout-v5", "--total-timesteps", str(total), "--track",
                                 "--save-model", *FAST, cwd=workdir, np=3, device=device)
    assert "store rank + 2 worker(s)" in proc.stdout
    assert_devices(run_dir, device, gpu_ranks=[1, 2])
    ranks = ranks_of(run_dir)
    updates = {r: c["updates"] for r, c in ranks.items() if r > 0}
    assert sorted(updates) == [1, 2] and 120 <= sum(updates.values()) <= 121  # at most workers - 1 over
    assert ranks[0]["central_updates"] == sum(updates.values())  # no update lost
    assert all(c["slept"] == 0 for r, c in ranks.items() if r > 0)  # nobody slowed (--debug-slow-factor 1)
    for tag in ("charts/SPS", "charts/episodic_return", "losses/policy_loss", "async/staleness",
                "async/lock_wait_ms", "async/updates_per_s", "network/dead_units_conv3"):
        assert tag in tags, tag
    assert any(v > 0 for _, v in tags["async/staleness"])  # the other worker updated in between
    saved = read_ckpt(run_dir / "checkpoint.pt")
    assert saved["update"] == sum(updates.values()) and saved["square_avg"].max() > 0
    assert len(list((workdir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


def test_one_process_is_plain_a2c(workdir):
    proc, run_dir, _ = run_ok(SCRIPT, "--total-timesteps", "800", "--eval-episodes", "1", *FAST, cwd=workdir)
    assert "one process: plain A2C with RMSprop" in proc.stdout and "eval argmax" in proc.stdout
    assert ranks_of(run_dir)[0]["updates"] == 20


def test_a_slow_worker_holds_nobody_up(workdir):
    """Worker 1 as a device 4 times slower (--debug-slow-factor 4): it sleeps 3 x each update's time, and worker 2,
    which never waits for it, makes more than twice its updates."""
    _, run_dir, _ = run_ok(SCRIPT, "--total-timesteps", str(60 * 40), "--debug-slow-rank", "1", "--debug-slow-factor",
                           "4", *FAST, cwd=workdir, np=3)
    workers = ranks_of(run_dir)
    slow = workers[1]
    assert slow["slept"] == pytest.approx(3 * (slow["seconds"] - slow["slept"]), rel=0.15)
    assert workers[2]["slept"] == 0 and workers[2]["updates"] > 2 * slow["updates"]


def test_sigterm_checkpoint_then_resume(workdir):
    saved, final, proc, _ = interrupt_then_resume(SCRIPT, 60 * 40, 60, *FAST, cwd=workdir, np=3)
    assert f"at global_step {saved['global_step']}" in proc.stdout
    assert 60 <= final["update"] <= 61 and final["square_avg"].max() > 0


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--update-chunks", "0"], "--update-chunks must be at least 1"),
        (["--log-every", "0"], "--log-every must be at least 1"),
        (["--num-envs", "0"], "--num-envs must be at least 1"),
        (["--env-id", "Pongg-v5"], "unknown env id 'Pongg-v5'"),
        (["--total-timesteps", "10"], "is below one update"),
        (["--resume", "missing.pt"], "'missing.pt' does not exist"),
    ],
)
def test_bad_input_is_refused_by_the_argument_checks(workdir, monkeypatch, args, message):
    monkeypatch.chdir(workdir)
    assert message in config_error(a3c, args)

