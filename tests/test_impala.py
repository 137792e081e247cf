import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import DEVICES, assert_devices, config_error, interrupt_then_resume, ranks_of, run_ok

import impala_atari as impala

SCRIPT = "impala_atari.py"
FAST = ["--num-envs", "4", "--batch-size", "8", "--unroll-length", "10", "--print-every", "1"]


# --- V-trace -----------------------------------------------------------------------------------------
def naive_vtrace(log_rhos, rewards, discounts, values, bootstrap, rho_bar, c_bar):
    """Eq. (1) of the paper, summed term by term for every s (per-step discounts in place of gamma):
    v_s = V(x_s) + sum_{t>=s} (prod_{s<=i<t} discount_i c_i) rho_t (r_t + discount_t V(x_{t+1}) - V(x_t))."""
    T, B = rewards.shape
    rhos = np.exp(log_rhos)
    values_ext = np.concatenate([values, bootstrap[None]])
    vs = np.zeros((T, B))
    for b in range(B):
        for s in range(T):
            total, trace = values[s, b], 1.0
            for t in range(s, T):
                td = rewards[t, b] + discounts[t, b] * values_ext[t + 1, b] - values[t, b]
                delta = min(rho_bar, rhos[t, b]) * td
                total += trace * delta
                trace *= discounts[t, b] * min(c_bar, rhos[t, b])
            vs[s, b] = total
    vs_ext = np.concatenate([vs, bootstrap[None]])
    pg = np.minimum(rho_bar, rhos) * (rewards + discounts * vs_ext[1:] - values)
    return vs, pg


def random_inputs(seed, T=7, B=5):
    rng = np.random.default_rng(seed)
    # log ratios in [-2.5, 2.5]: importance ratios from ~0.08 to ~12, as the reference test.
    log_rhos = rng.uniform(-2.5, 2.5, size=(T, B))
    behaviour = rng.normal(size=(T, B)) - 1.0
    discounts = 0.9 * (rng.random((T, B)) > 0.2)  # some episode ends
    return {"behaviour": behaviour, "target": behaviour + log_rhos, "log_rhos": log_rhos,
            "rewards": rng.normal(size=(T, B)), "discounts": discounts, "values": rng.normal(size=(T, B)),
            "bootstrap": rng.normal(size=B)}


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("rho_bar, c_bar", [(3.7, 2.2), (1.0, 1.0), (float("inf"), float("inf"))])
def test_vtrace_matches_naive_evaluation_of_eq_1(seed, rho_bar, c_bar):
    x = random_inputs(seed)
    t = {k: torch.tensor(v) for k, v in x.items()}
    vs, pg = impala.vtrace(t["behaviour"], t["target"], t["rewards"], t["discounts"], t["values"], t["bootstrap"],
                           rho_bar, c_bar)
    exp_vs, exp_pg = naive_vtrace(x["log_rhos"], x["rewards"], x["discounts"], x["values"], x["bootstrap"],
                                  rho_bar, c_bar)
    np.testing.assert_allclose(vs.numpy(), exp_vs, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(pg.numpy(), exp_pg, rtol=1e-10, atol=1e-10)


def test_vtrace_on_policy_is_the_n_step_bootstrapped_return():
    x = random_inputs(7)
    t = {k: torch.tensor(v) for k, v in x.items()}
    vs, pg = impala.vtrace(t["behaviour"], t["behaviour"], t["rewards"], t["discounts"], t["values"], t["bootstrap"])
    returns, ret = np.zeros_like(x["rewards"]), x["bootstrap"]
    for s in reversed(range(len(returns))):
        ret = x["rewards"][s] + x["discounts"][s] * ret
        returns[s] = ret
    np.testing.assert_allclose(vs.numpy(), returns, rtol=1e-10)
    next_returns = np.concatenate([returns[1:], x["bootstrap"][None]])
    np.testing.assert_allclose(pg.numpy(), x["rewards"] + x["discounts"] * next_returns - x["values"], rtol=1e-10)


def test_unroll_fields_do_not_overlap():
    u = impala.Unroll(T=3, N=2, num_actions=4)
    fields = ["obs", "actions", "logits", "rewards", "discounts", "valid", "version"]
    for i, name in enumerate(fields):
        getattr(u, name)[...] = i + 1
    for i, name in enumerate(fields):
        assert (getattr(u, name) == i + 1).all(), name
    # (T+1) x N observations; actions, rewards, discounts, valid: T x N each; logits T x N x 4; version
    assert u.buf.nbytes == (3 + 1) * 2 * 4 * 84 * 84 + 4 * (4 * 3 * 2 + 3 * 2 * 4 + 1)


# --- the learner's step ------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_logged_losses_are_means_over_valid_samples_and_the_gradient_is_of_the_sums(device):
    """Checked against a direct computation on a small batch (naive V-trace, entropy from the softmax), on the
    CPU: the gradient is that of the losses summed over T x B (Table G.1's scale), the logged values the means;
    the learner's step on DEVICE."""
    T, B, A = 3, 2, 4
    rng = np.random.default_rng(0)
    f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    batch = {"obs": torch.from_numpy(rng.integers(0, 256, (T + 1, B, 4, 84, 84), dtype=np.uint8)),
             "actions": f32(rng.integers(0, A, (T, B))), "logits": f32(rng.normal(size=(T, B, A))),
             "rewards": f32(rng.normal(size=(T, B))), "discounts": f32(0.99 * (rng.random((T, B)) > 0.3)),
             "valid": f32([[1, 1], [0, 1], [1, 0]])}
    args = impala.Args(max_grad_norm=float("inf"))  # no clipping: compare the raw gradient
    torch.manual_seed(0)
    agent = impala.Agent(A)
    reference = copy.deepcopy(agent)
    agent = agent.to(device)
    on_device = {name: x.to(device) for name, x in batch.items()}
    metrics = impala.impala_update(agent, torch.optim.SGD(agent.parameters(), lr=0.0), on_device, args)
    metrics = dict(zip(impala.METRICS, metrics.tolist()))

    logits, values = reference(batch["obs"].reshape(-1, 4, 84, 84))
    log_pi = torch.log_softmax(logits.reshape(T + 1, B, A)[:-1], -1)
    values = values.reshape(T + 1, B)
    actions = batch["actions"].long()[..., None]
    logp = log_pi.gather(-1, actions)[..., 0]
    log_rhos = logp - torch.log_softmax(batch["logits"], -1).gather(-1, actions)[..., 0]
    v = values.detach().double().numpy()
    vs, pg = naive_vtrace(log_rhos.detach().double().numpy(), batch["rewards"].double().numpy(),
                          batch["discounts"].double().numpy(), v[:-1], v[-1], args.rho_bar, args.c_bar)
    valid = batch["valid"].bool()
    terms = {"policy_loss": (-f32(pg) * logp)[valid], "value_loss": (0.5 * (f32(vs) - values[:-1]) ** 2)[valid],
             "entropy": (-(log_pi.exp() * log_pi).sum(-1))[valid]}
    for name, term in terms.items():
        assert metrics[f"losses/{name}"] == pytest.approx(term.mean().item(), rel=1e-4, abs=1e-6), name
    sums = {name: term.sum() for name, term in terms.items()}
    (sums["policy_loss"] + args.vf_coef * sums["value_loss"] - args.ent_coef * sums["entropy"]).backward()
    for p, q in zip(agent.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=1e-4, atol=1e-6 if device == "cpu" else 1e-5)


class InstantComm:
    """Stands in for MPI on the learner, with one actor: an unroll lands in a receive the moment it is
    posted; the k-th unroll has observations k and version k (the buffer's last float32)."""

    def __init__(self):
        self.arrived = 0

    def Get_size(self):
        return 2

    def Irecv(self, buf, source, tag):
        self.arrived += 1
        buf[:-4] = self.arrived
        buf[-4:].view(np.float32)[0] = self.arrived
        return SimpleNamespace(Test=lambda: True)


def test_the_batch_and_its_policy_lag_are_read_before_its_buffers_are_released():
    """With the queue full (every buffer holds an unroll and the actor waits for one), releasing a batch
    re-posts the actor's receive into one of its buffers at once, and the next unroll may land there
    during the update: the lag read after the release was that unroll's (10 - (1 + 6) / 2, not 8.5)."""
    learner = impala.Learner(InstantComm(), impala.Args(num_envs=4, batch_size=8, unroll_length=3), torch.zeros(5), 4)
    while learner.pool or learner.posted:  # fill the queue: unrolls 1..5
        learner.poll()
    unrolls, depth = learner.next_batch(2)
    assert depth == 5 and [u.version[0] for u in unrolls] == [1, 2]
    batch, lag = impala.read_batch(unrolls, 10, torch.device("cpu"), learner.release)
    assert learner.comm.arrived == 6 and unrolls[1].version[0] == 6  # unroll 6 landed in the batch's buffer
    assert lag == 10 - (1 + 2) / 2
    assert (batch["obs"][:, :4] == 1).all() and (batch["obs"][:, 4:] == 2).all()


# --- the script end to end -------------------------------------------------------------------------
@pytest.mark.parametrize("device, actor_device", [("cpu", "cpu"), pytest.param("cuda", "cpu", marks=pytest.mark.gpu),
                                                   pytest.param("cuda", "cuda", marks=pytest.mark.gpu)])
def test_end_to_end_learner_and_two_actors_tracked_offline(workdir, device, actor_device):
    """The learner on DEVICE, the actors on the CPU (the default) or with --actor-device cuda on GPUs after it."""
    proc, run_dir, tags = run_ok(SCRIPT, "--env-id", "Breakout-v5", "--total-timesteps", "8000", "--track",
                                 "--log-every", "2", "--actor-device", actor_device, *FAST, cwd=workdir, np=3,
                                 device=device)
    assert "1 learner + 2 actor(s)" in proc.stdout
    assert_devices(run_dir, device, gpu_ranks=[0, 1, 2] if actor_device == "cuda" else [0])
    for tag in ("charts/SPS", "charts/episodic_return", "losses/policy_loss", "vtrace/rho_mean",
                "vtrace/rho_clipped_frac", "impala/policy_lag", "impala/learner_idle_frac",
                "impala/queue_depth", "network/dead_units_conv3"):
        assert tag in tags, tag
    assert tags["charts/SPS"][-1][0] == 8000 // 80 * 80
    assert all(0.0 <= v <= 1.0 for _, v in tags["impala/learner_idle_frac"])
    assert any(v > 0 for _, v in tags["impala/policy_lag"])  # actors act with older parameters
    assert all(0 <= v < step / 80 for step, v in tags["impala/policy_lag"])  # at most the updates before it
    assert len(list((workdir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


def test_single_process_is_on_policy(workdir):
    proc, run_dir, tags = run_ok(SCRIPT, "--total-timesteps", "1600", "--log-every", "1", "--save-model",
                                 "--eval-episodes", "1", "--single-process", *FAST, cwd=workdir)
    assert "one process: actor and learner alternate" in proc.stdout
    assert all(v == 0 for _, v in tags["impala/policy_lag"])
    assert all(abs(v - 1.0) < 1e-5 for _, v in tags["vtrace/rho_mean"])  # pi = mu: every ratio is 1
    assert "eval argmax" in proc.stdout and (run_dir / "checkpoint.pt").exists()


def test_sigterm_checkpoint_then_resume(workdir):
    _, final, _, _ = interrupt_then_resume(SCRIPT, 60 * 80, 60, *FAST, cwd=workdir, np=3)
    assert final["update"] == 60 and final["global_step"] == 60 * 80
    assert {float(s["step"]) for s in final["optimizer"]["state"].values()} == {60.0}


def test_a_slow_actor_does_not_stop_the_learner(workdir):
    """Actor 2 as a device 6 times slower (--debug-slow-factor 6: it sleeps 5 x each unroll's time): the learner
    kept learning from the actor that kept up."""
    proc, run_dir, _ = run_ok(SCRIPT, "--total-timesteps", "4000", "--debug-slow-rank", "2", "--debug-slow-factor",
                              "6", *FAST, cwd=workdir, np=3, timeout=180)
    assert "global_step 4000/4000" in proc.stdout
    ranks = ranks_of(run_dir)
    slow = ranks[2]
    assert slow["slept"] == pytest.approx(5 * (slow["seconds"] - slow["slept"]), rel=0.15)
    assert ranks[0]["slept"] == ranks[1]["slept"] == 0
    assert ranks[0]["received"]["1"] > 2 * ranks[0]["received"]["2"]


def test_the_learner_queue_is_bounded_when_actors_outpace_it(workdir):
    """Three actors, one unroll per batch, a learner sleeping 0.2 s per update: unrolls arrive faster
    than they are learnt from. The queue stays within its pool (3 actors + 2 batches = 5 unrolls), so
    the actors wait instead of the learner's memory and the policy lag growing."""
    _, _, tags = run_ok(SCRIPT, "--total-timesteps", str(25 * 40), "--batch-size", "4", "--num-envs", "4",
                        "--unroll-length", "10", "--log-every", "1", "--debug-slow-rank", "0",
                        "--debug-slow-seconds", "0.2", "--print-every", "1", cwd=workdir, np=4)
    depths = [v for _, v in tags["impala/queue_depth"]]
    assert max(depths) <= 5 and max(depths) >= 2  # bounded, and the actors did outpace the learner
    # Lag is bounded too (unbounded, the queue reached 67 unrolls here): 5 queued + 3 actors x 2 in flight,
    # plus the age of the actor's parameters, up to two of its iterations (about 3 updates each with the
    # learner the bottleneck): it reads them before it waits for a free slot, and they were sent after
    # its previous read; plus a few. Measured over 40 updates: rises to 18-19 and stays there.
    assert max(v for _, v in tags["impala/policy_lag"]) <= 5 + 3 * 2 + 2 * 3 + 5


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "2", "--num-envs", "4"], "--batch-size 2 is below one unroll"),
        (["--batch-size", "6", "--num-envs", "4"], "must be a multiple of --num-envs 4"),
        (["--unroll-length", "0"], "--unroll-length must be at least 1"),
        (["--env-id", "Pongg-v5"], "unknown env id 'Pongg-v5'"),
        (["--total-timesteps", "10"], "is below one update"),
        (["--resume", "missing.pt"], "'missing.pt' does not exist"),
    ],
)
def test_bad_input_is_refused_by_the_argument_checks(workdir, monkeypatch, args, message):
    monkeypatch.chdir(workdir)
    assert message in config_error(impala, args)

