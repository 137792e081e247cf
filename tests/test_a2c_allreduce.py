import json
import subprocess

import numpy as np
import pytest
import torch
from batch import CLIP, fixed_batch, reference_loss, rmsprop
from conftest import DEVICES, assert_devices, config_error, interrupt_then_resume, ok, run, run_dirs, run_ok

import a2c_allreduce_atari as a2c
from benchmark.common import command, scalars

SCRIPT = "a2c_allreduce_atari.py"
FAST = ["--num-envs", "8", "--print-every", "1"]


# --- targets and the autoreset mask --------------------------------------------------------------
def naive_targets(rewards, values, next_value, terms, truncs, prev_done, gamma):
    """One sample at a time: walk forward from t, discounting, until a termination (stop), a
    truncation (add the value of the next observation) or the end of the rollout (bootstrap)."""
    T, N = rewards.shape
    returns, valid = np.zeros((T, N)), np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            valid[t, n] = 0.0 if (prev_done[n] if t == 0 else terms[t - 1, n] or truncs[t - 1, n]) else 1.0
            ret, discount = 0.0, 1.0
            for k in range(t, T):
                ret += discount * rewards[k, n]
                discount *= gamma
                if terms[k, n]:
                    break
                if truncs[k, n]:
                    ret += discount * (values[k + 1, n] if k + 1 < T else next_value[n])
                    break
            else:
                ret += discount * next_value[n]
            returns[t, n] = ret
    return returns, valid


@pytest.mark.parametrize("seed", range(5))
def test_targets_match_naive_loop(seed):
    rng = np.random.default_rng(seed)
    T, N = 9, 6
    rewards = rng.normal(size=(T, N))
    values, next_value = rng.normal(size=(T, N)), rng.normal(size=N)
    terms = rng.random((T, N)) < 0.2
    truncs = (rng.random((T, N)) < 0.15) & ~terms
    truncs[3, 0] = terms[3, 0] = True  # both at once: a termination wins
    prev_done = rng.random(N) < 0.5

    def as_t(x):
        return torch.tensor(np.asarray(x, dtype=np.float64))

    returns, valid = a2c.a2c_targets(
        as_t(rewards), as_t(terms), as_t(truncs), as_t(values), as_t(next_value), as_t(prev_done), 0.9
    )
    exp_returns, exp_valid = naive_targets(rewards, values, next_value, terms, truncs, prev_done, 0.9)
    np.testing.assert_allclose(valid.numpy(), exp_valid)
    np.testing.assert_allclose(returns.numpy(), exp_returns, rtol=1e-12)
    assert 0 < exp_valid.sum() < T * N  # the mask is exercised


def test_envpool_reset_step_is_what_the_mask_assumes():
    """After every done (life loss or game over) envpool's next step is a reset: reward 0 and no
    emulator step (elapsed_step does not advance). EpisodeStats sums a game across lives: its length
    equals envpool's own elapsed_step at game over, and its return is the raw, unclipped score."""
    envs = a2c.make_env("MsPacman-v5", 4, seed=3, threads=1, train=True)
    envs.reset()
    rng = np.random.default_rng(0)
    stats = a2c.EpisodeStats(4)
    prev_done, prev_elapsed = np.zeros(4, bool), np.zeros(4, int)
    clipped, games, reset_steps = np.zeros(4), [], 0
    while len(games) < 3:
        valid = ~prev_done
        _, reward, term, trunc, info = envs.step(rng.integers(0, 9, 4))
        clipped += reward
        for i in np.flatnonzero(prev_done):
            reset_steps += 1
            assert reward[i] == 0 and info["reward"][i] == 0
            assert info["elapsed_step"][i] in (0, prev_elapsed[i])
        for (ret, length), i in zip(stats.update(info, trunc, valid), np.flatnonzero(info["terminated"] | trunc)):
            assert length == info["elapsed_step"][i]
            assert ret > clipped[i] and ret % 10 == 0  # MsPacman scores 10 a pellet: raw, not clipped
            games.append(ret)
            clipped[i] = 0
        prev_done, prev_elapsed = term | trunc, info["elapsed_step"]
    assert reset_steps > len(games)  # life losses happened inside the games


# --- exact averaging -------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_allreduce_update_equals_one_process_with_the_whole_batch(tmp_path, device):
    """Two ranks with 8 samples each (5 and 8 valid) take the same steps as one process with 16, and
    both equal plain autograd on the mean loss over the valid samples (the ground truth, on the CPU): the raw
    averaged gradient (an SGD step of size 1, no clipping) and three RMSprop steps with clipping. On a GPU
    (the gradient through device buffers) to the rounding of its own convolutions."""
    for np_, out in ((None, "one.pt"), (2, "two.pt")):
        cmd = command("tests/exact_average_worker.py", str(tmp_path / out), device, np=np_)
        ok(subprocess.run(cmd, capture_output=True, text=True, timeout=120))

    # One thread, as in the worker: conv backward sums in a thread-dependent order, and RMSprop's
    # first steps (g / sqrt(v)) turn those 1e-7 differences into 1e-4 ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    args = a2c.Args()
    agent, batch = fixed_batch()
    start_params = torch.nn.utils.parameters_to_vector(agent.parameters()).detach().clone()
    reference_loss(agent, *batch, args).backward()
    expected = {"sgd": start_params - torch.cat([p.grad.reshape(-1) for p in agent.parameters()])}
    agent, batch = fixed_batch()
    optimizer = rmsprop(agent, args)
    for _ in range(3):
        optimizer.zero_grad()
        reference_loss(agent, *batch, args).backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
        optimizer.step()
    expected["rmsprop"] = torch.nn.utils.parameters_to_vector(agent.parameters()).detach()
    # --debug-clip-per-rank: each shard's mean gradient clipped on its own, then averaged by valid samples
    # (two ranks: 5 and 8 valid), against the whole batch's gradient clipped (one process).
    clipped = {}
    for name, shards in (("one", [slice(0, 16)]), ("two", [slice(0, 8), slice(8, 16)])):
        step, total = 0.0, 0.0
        for shard in shards:
            agent, batch = fixed_batch()
            reference_loss(agent, *(x[shard] for x in batch), args).backward()
            grad = torch.cat([p.grad.reshape(-1) for p in agent.parameters()])
            n = batch[3][shard].sum()
            step, total = step + n * grad * min(1.0, CLIP / (grad.norm().item() + 1e-6)), total + n
        clipped[name] = start_params - step / total
    torch.set_num_threads(threads)

    one, two = (torch.load(tmp_path / name, map_location="cpu") for name in ("one.pt", "two.pt"))
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if device == "cpu" else {"rtol": 1e-3, "atol": 1e-4}
    for phase in ("sgd", "rmsprop"):
        assert (expected[phase] - start_params).abs().max() > 1e-3  # the steps moved the parameters
        torch.testing.assert_close(one[phase], expected[phase], **tolerance)
        torch.testing.assert_close(two[phase], expected[phase], **tolerance)
    torch.testing.assert_close(one["clip_per_rank"], clipped["one"], **tolerance)
    torch.testing.assert_close(two["clip_per_rank"], clipped["two"], **tolerance)
    assert (clipped["one"] - clipped["two"]).abs().max() > 1e-4  # clipping per rank is not clipping the average


def test_dead_units_are_the_units_no_observation_activates():
    """Agent.dead_units (the same in the four scripts) against the ReLU outputs of an ordinary forward pass, kept
    by hooks: a unit is dead where its largest output over the batch (and a conv's positions) is 0. Units killed by
    hand (zero weights, bias -1: 8 of conv1's 32 channels, 100 of the 512 fc units) are among them."""
    torch.manual_seed(0)
    agent = a2c.Agent(4)
    with torch.no_grad():
        for layer, killed in ((agent.network[0], 8), (agent.network[7], 100)):
            layer.weight[:killed], layer.bias[:killed] = 0.0, -1.0
    obs = torch.randint(0, 256, (40, 4, 84, 84), dtype=torch.uint8)
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, out: outputs.append(out)) for m in agent.network
             if isinstance(m, torch.nn.ReLU)]
    agent(obs)
    for hook in hooks:
        hook.remove()
    expected = {f"network/dead_units_{name}": (out.transpose(0, 1).flatten(1).max(1).values == 0).float().mean().item()
                for name, out in zip(a2c.HIDDEN, outputs)}
    assert agent.dead_units(obs) == pytest.approx(expected)
    assert expected["network/dead_units_conv1"] >= 8 / 32 and expected["network/dead_units_fc"] >= 100 / 512


# --- the script end to end -------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("np_, track", [(None, False), (2, True)])
def test_end_to_end_tracked_offline(workdir, np_, track, device):
    """Breakout with random-ish play ends games within a few hundred steps, so returns get logged.
    W&B is tracked in one of the two (its offline shutdown holds a short run for ~10 s). Every rank learns on
    DEVICE, and the ranks' parameters stay identical (checked every 5 updates). The learning rate warms up over
    100 updates, more than the run's 80."""
    world = np_ or 1
    total = 400 * 8 * world  # 400 steps per simulator
    proc, run_dir, tags = run_ok(SCRIPT, "--env-id", "Breakout-v5", "--total-timesteps", str(total), "--log-every",
                                 "5", "--check-sync-every", "5", "--lr-warmup-updates", "100", *FAST,
                                 *(["--track"] if track else []),
                                 cwd=workdir, np=np_, device=device)
    assert_devices(run_dir, device, gpu_ranks=list(range(world)))
    for tag in ("charts/SPS", "charts/learning_rate", "losses/policy_loss", "losses/value_loss", "losses/entropy",
                "charts/episodic_return", "charts/episodic_length", *(f"network/dead_units_{h}" for h in a2c.HIDDEN)):
        assert tag in tags, tag
    assert tags["charts/SPS"][-1][0] == total // (5 * 8 * world) * (5 * 8 * world)
    # The rate logged after update u (global step (u + 1) x the batch) is the default rate times (u + 1) / 100.
    base, batch = 7e-4 * (8 * world / 16) ** 0.5, 5 * 8 * world
    logged = tags["charts/learning_rate"]
    assert [lr for _, lr in logged] == pytest.approx([base * step / batch / 100 for step, _ in logged], rel=1e-5)
    # Every rank's games reach rank 0: at least one per simulator of each rank ran out of lives.
    assert len(tags["charts/episodic_return"]) >= 8 * world
    assert all(length > 0 for _, length in tags["charts/episodic_length"])
    offline = list((workdir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == int(track) and all(f.stat().st_size > 0 for f in offline)
    assert f"{world} rank(s) x 8 envs" in proc.stdout


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """2 ranks x 8 simulators on Pong stopped by SIGTERM once training, then resumed to 40 updates with
    --save-model and --eval-episodes 2 (one launch of each, for the resume and the evaluation tests)."""
    workdir = tmp_path_factory.mktemp("resumed")
    total = 40 * 2 * 8 * 5  # 40 updates of 2 ranks x 8 envs x 5 steps
    return total, *interrupt_then_resume(SCRIPT, total, 40, "--eval-episodes", "2", *FAST, cwd=workdir, np=2)


def test_sigterm_checkpoint_then_resume_to_the_same_total(resumed):
    total, saved, final, proc, second = resumed
    assert saved["global_step"] == saved["update"] * 80 and len(saved["rng"]) == 2
    assert f"at global_step {saved['global_step']}" in proc.stdout
    assert final["global_step"] == total and final["update"] == 40
    # The optimizer state carried over: RMSprop counted every update of both runs.
    steps = {float(s["step"]) for s in final["optimizer"]["state"].values()}
    assert steps == {40.0}
    first_logged = min(step for step, _ in scalars(second)["charts/SPS"])
    assert first_logged > saved["global_step"]


def test_eval_after_training_and_from_checkpoint(resumed, workdir):
    """The resumed run evaluated itself after training (2 episodes over its 2 ranks); its checkpoint is then
    evaluated alone (3 episodes)."""
    _, _, _, proc, run_dir = resumed
    assert "eval argmax" in proc.stdout and "eval sampled" in proc.stdout
    trained = json.loads((run_dir / "eval.json").read_text())
    assert len(trained["argmax"]["returns"]) == 2 and len(trained["sampled"]["returns"]) == 2
    assert all(-21 <= r <= 21 for r in trained["argmax"]["returns"])  # whole games of Pong, raw score

    proc = run(SCRIPT, "--eval-checkpoint", str(run_dir / "checkpoint.pt"), "--eval-episodes", "3", cwd=workdir, np=2)
    ok(proc)
    (evaluated,) = run_dirs(workdir)
    result = json.loads((evaluated / "eval.json").read_text())
    assert len(result["argmax"]["returns"]) == 3  # split over the two ranks, gathered on rank 0
    assert not (evaluated / "checkpoint.pt").exists()  # no training happened


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--env-id", "Pongg-v5"], "unknown env id 'Pongg-v5'"),
        (["--env-id", "CartPole-v1"], "is not an Atari game"),
        (["--num-envs", "0"], "--num-envs must be at least 1"),
        (["--total-timesteps", "10"], "is below one update"),
        (["--resume", "missing.pt"], "'missing.pt' does not exist"),
        (["--num-steps", "-1"], "--num-steps must be at least 1"),
        (["--lr-warmup-updates", "-1"], "--lr-warmup-updates must be 0 or more"),
    ],
)
def test_bad_input_is_refused_by_the_argument_checks(workdir, monkeypatch, args, message):
    monkeypatch.chdir(workdir)
    assert message in config_error(a2c, args)

