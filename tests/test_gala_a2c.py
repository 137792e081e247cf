import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    DEVICES,
    assert_devices,
    config_error,
    ok,
    ranks_of,
    read_ckpt,
    run,
    run_dirs,
    run_ok,
    sigterm_once_training,
    start,
)

import gala_a2c_atari as gala
from benchmark.common import command

SCRIPT = "gala_a2c_atari.py"
FAST = ["--num-envs", "8", "--print-every", "1"]


# --- the peer schedule ------------------------------------------------------------------------------
@pytest.mark.parametrize("graph", ["ring", "exponential"])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_in_peers_are_exactly_the_senders(graph, n):
    most = n - 1 if graph == "ring" else len(gala.exponential_offsets(n))
    for k in range(1, max(most, 1) + 1):
        for step in range(6):
            peers = [gala.gossip_peers(r, n, step, graph, k) for r in range(n)]
            for r, (out_peers, in_peers) in enumerate(peers):
                senders = sorted(j for j in range(n) if r in peers[j][0])
                assert sorted(in_peers) == senders
                assert r not in out_peers and len(set(out_peers)) == len(out_peers) == (k if n > 1 else 0)


def test_exponential_graph_rotates_through_powers_of_two():
    outs = [gala.gossip_peers(0, 8, step, "exponential", 1)[0] for step in range(4)]
    assert outs == [[1], [2], [4], [1]]


# --- gossip alone: consensus, exact average when synchronous, every message accounted for -----------
def config(graph, num_peers, sync_freq, rounds, sleep, slow_rank=None, **options) -> str:
    """A configuration of tests/gossip_worker.py."""
    fields = (graph, num_peers, str(sync_freq).lower(), rounds, sleep) + (() if slow_rank is None else (slow_rank,))
    return ",".join([*map(str, fields), *(f"{key}={value}" for key, value in options.items())])


def gossip(tmp_path, configs: list[str], np: int) -> dict:
    """One launch of tests/gossip_worker.py on NP ranks running CONFIGS one after the other; their summaries."""
    out = tmp_path / "gossip.json"
    ok(subprocess.run(command("tests/gossip_worker.py", str(out), *configs, np=np), capture_output=True, text=True,
                      timeout=120))
    return json.loads(out.read_text())


def accounted(result: dict) -> dict:
    counts = result["counts"]
    assert sum(c["sent"] for c in counts) == sum(c["received"] for c in counts)  # none lost, none left over
    return result


GRAPHS = [("ring", 1), ("ring", 2), ("exponential", 1), ("exponential", 2)]
LOCKSTEP = {(g, k): config(g, k, 0, 40, "lockstep") for g, k in GRAPHS}
FREE = {g: config(g, 1, None, 60, 0.002) for g in ("ring", "exponential")}
SLOW_PEER = {k: config("ring", 1, k, 24, 0.05, slow_rank=1) for k in (0, 1, 2, None)}
ROUNDS_OF_1 = 12
ALTERNATE = config("ring", 1, None, ROUNDS_OF_1, "alternate")
"""two agents in turns: agent 0 makes two updates, then agent 1 one, 12 times"""
STEP = 0.01
"""the local step every agent takes per round in the configurations that step (every coordinate)"""
# The controlled-staleness mode: lockstep, messages exactly `a` updates old.
AGED = {(g, k, a): config(g, k, None, 30, 0.001, lockstep=a, step=STEP)
        for g, k in (("ring", 1), ("exponential", 2)) for a in (0, 1, 2)}


@pytest.fixture(scope="module")
def four_agents(tmp_path_factory) -> dict:
    """Four agents, every graph: in lockstep, asynchronously and with messages of a set age (one launch for the
    tests that read it)."""
    configs = [*LOCKSTEP.values(), *FREE.values(), *AGED.values()]
    return gossip(tmp_path_factory.mktemp("gossip4"), configs, np=4)


@pytest.fixture(scope="module")
def two_agents(tmp_path_factory) -> dict:
    """Two agents on a ring, agent 1 slow, for each --sync-freq, and in turns (one launch)."""
    return gossip(tmp_path_factory.mktemp("gossip2"), [*SLOW_PEER.values(), ALTERNATE], np=2)


@pytest.mark.parametrize("graph, num_peers", GRAPHS)
def test_synchronous_gossip_reaches_the_exact_initial_average(four_agents, graph, num_peers):
    """--sync-freq 0 blocks every update for that update's in-peers. A sender still never waits (the
    official rule), so the exact average needs every send to go out: the rounds are in lockstep (a
    barrier before each), so every peer has read the previous message before the next is written."""
    result = accounted(four_agents[LOCKSTEP[graph, num_peers]])
    assert all(c["skipped"] == 0 for c in result["counts"])
    assert result["final_spread"] < 1e-3 * result["initial_spread"]
    assert result["average_error"] < 1e-4  # entries are ~N(0, 1): float32 rounding only
    assert all(c["mixes"] == 40 for c in result["counts"])


@pytest.mark.parametrize("graph", ["ring", "exponential"])
def test_asynchronous_gossip_reaches_consensus(four_agents, graph):
    result = accounted(four_agents[FREE[graph]])
    assert result["final_spread"] < 1e-3 * result["initial_spread"]
    # The disagreement and gradient-cosine metrics of the starting point equal numpy's.
    for name in ("disagreement", "relative", "cosine"):
        assert result["metrics"][name] == pytest.approx(result["numpy"][name], rel=1e-6)


@pytest.mark.parametrize("sync_freq", [0, 1, 2, None])
def test_sync_freq_blocks_after_k_updates_without_a_mix_and_senders_never_wait(two_agents, sync_freq):
    """Two agents, agent 1 sleeping 50 ms per update, agent 0 not at all. The official rule: agent 0
    tolerates K updates in a row without a mix and then blocks for agent 1's message, so its longest
    run without a mix is exactly K (K = 0: it mixes at every update); without K it never waits. Agent 0
    also sends at every update but never waits for agent 1 to read: the sends it skipped show it."""
    rounds = 24
    result = accounted(two_agents[SLOW_PEER[sync_freq]])
    fast, slow = result["counts"]
    if sync_freq is None:
        assert fast["mixes"] < rounds // 3 and fast["longest_without_mix"] > rounds // 2
    else:
        assert fast["longest_without_mix"] == sync_freq
        assert fast["mixes"] >= rounds // (sync_freq + 1) - 1
    if sync_freq != 0:  # K = 0 paces agent 0 to agent 1, so it has nothing to skip
        assert fast["skipped"] > 0 and fast["sent"] + fast["skipped"] == rounds


def test_a_sender_writes_only_after_its_peer_read_the_previous_message(two_agents):
    """The official code's write-after-read, under controlled timing: agent 0 makes two updates to each of agent
    1's, in turns. Agent 0 writes at its update 1; at 2 agent 1 has not read it: skipped; agent 1 reads it (its
    update 1) and says so; agent 0 writes again at 3, skips 4, ... So agent 1 mixes the messages of agent 0's
    updates 1, 3, 5, ...: each written after agent 1's previous read, the newest one agent 0 could write. (Had
    agent 0 queued its next message as soon as the previous one was delivered, not read, agent 1 would mix those
    of updates 1, 2, 4, 6, ...: a message taken before its previous read, one update older.) Agent 1 writes at
    each of its updates; agent 0 mixes message v at its update 2v + 1, the last one only read at the end."""
    result = accounted(two_agents[ALTERNATE])
    fast, slow = result["counts"]
    to_fast, to_slow = result["mixed"]
    assert to_slow == [2 * v - 1 for v in range(1, ROUNDS_OF_1 + 1)]
    assert to_fast == list(range(1, ROUNDS_OF_1))
    assert (fast["sent"], fast["skipped"]) == (ROUNDS_OF_1, ROUNDS_OF_1)
    assert (slow["sent"], slow["skipped"]) == (ROUNDS_OF_1, 0)


@pytest.mark.parametrize("agents, config", [("two_agents", SLOW_PEER[None]), ("four_agents", FREE["ring"])])
def test_rank_0_logs_the_agents_total_steps(request, agents, config):
    """EpisodeMail: rank 0's global step at each of its log points is the agents' true total at that moment (from
    every rank's round end times) less what it has not heard yet: never more, and less by at most two log intervals
    of each other agent (its last message possibly still in flight); after finish() it is the exact total. A game is
    stamped with its agent's own steps plus the others' as rank 0 knew them: between the others' true steps when
    the game ended, less the same allowance, and the true total at the end. Two agents, agent 1 sleeping 50 ms per
    round and agent 0 not at all (rank 0's own steps x the agents would be about twice the total), and four agents
    sleeping 2 ms per round."""
    result = request.getfixturevalue(agents)[config]
    mail, world = result["mail"], len(result["counts"])
    done_at, steps, every = [np.array(times) for times in mail["done_at"]], mail["steps"], mail["every"]

    def true_steps(at: float, ranks=range(world)) -> int:
        return sum(int(np.sum(done_at[r] <= at)) for r in ranks) * steps

    allowance = 2 * every * steps * (world - 1)
    for at, logged in mail["logged"]:
        assert true_steps(at) - allowance <= logged <= true_steps(at)
    rounds = len(done_at[0])
    assert mail["final"] == world * rounds * steps
    assert len(mail["games"]) == world * rounds  # every game reached rank 0 once
    for stamp, source, round_ in mail["games"]:
        source, ended = int(source), done_at[int(source)][round_ - 1]
        others = stamp - round_ * steps
        assert true_steps(ended, [r for r in range(world) if r != source]) - allowance <= others
        assert others <= (world - 1) * rounds * steps


def lockstep_advance(age: int, num_peers: int, rounds: int) -> float:
    """The agents' mean advance per round over the local step, as a scalar recursion (the ground truth of the
    lockstep mode): u(t) = x(t-1) + 1, x(t) = (u(t) + k u(t-a)) / (k+1) once t > a (every
    agent mixes k messages of a rounds earlier; on a regular graph their mean is the agents' mean)."""
    x, u = [0.0], [None]
    for t in range(1, rounds + 1):
        u.append(x[-1] + 1)
        x.append((u[t] + num_peers * u[t - age]) / (num_peers + 1) if t > age else u[t])
    return x[-1] / rounds


@pytest.mark.parametrize("graph, num_peers", [("ring", 1), ("exponential", 2)])
@pytest.mark.parametrize("age", [0, 1, 2])
def test_lockstep_mixes_messages_of_exactly_the_age_asked(four_agents, graph, num_peers, age):
    """--debug-lockstep-age a: every mixed message is exactly a updates old, nothing is skipped, and under a
    constant step the agents' mean advances as the averaging recursion with that age says (a = 0:
    one full step per round, synchronous gossip; 1: about 2/3; 2: about 1/2)."""
    result = accounted(four_agents[AGED[graph, num_peers, age]])
    assert all(c["skipped"] == 0 and c["mixes"] == 30 - age for c in result["counts"])
    assert result["ages"] == {str(age): 4 * num_peers * (30 - age)}
    assert result["advance"] == pytest.approx(lockstep_advance(age, num_peers, 30), rel=1e-4)


@pytest.mark.parametrize("agents", [8, pytest.param(32, marks=pytest.mark.scale)])
def test_gossip_alone_at_many_agents_on_both_graphs(tmp_path, agents):
    """The Gossip class at a cluster's size, 2 peers on both graphs: synchronous rounds in lockstep keep
    the exact average (float32 rounding only); synchronous and asynchronous rounds (agents working
    unevenly) contract the agents towards consensus (the exponential graph reaches it); blocking rounds of
    agents working unevenly (senders skipping peers that have not read, receivers waiting) end, without a
    hang, and contract too; every message is accounted for. One launch of 8 ranks in the default suite; of
    32 with the scale tests (a minute on 2 cores: 32 Python processes that import torch)."""
    out = tmp_path / "scale.json"
    ok(subprocess.run(command("tests/gossip_scale_worker.py", str(out), "60", np=agents), capture_output=True,
                      text=True, timeout=280))
    for graph, r in json.loads(out.read_text()).items():
        sync, free = r["synchronous"], r["asynchronous"]
        assert sync["skipped"] == 0 and max(abs(a - b) for a, b in zip(sync["mean"], r["initial_mean"])) < 1e-4, graph
        # A ring of 32 with 2 peers contracts by (1 + 2 cos(2 pi / 32)) / 3 = 0.987 per round at worst: it needs
        # ~500 rounds to reach 1e-3, so in 60 it must only have shrunk (measured: to 0.12 synchronously). The
        # exponential graph mixes in a few rounds. (A ring of 8 contracts by 0.80 per round: the same bound holds.)
        bound = 0.5 if graph == "ring" else 1e-3
        assert sync["spread"] < bound * r["initial_spread"], graph
        assert free["spread"] < bound * r["initial_spread"], graph
        assert r["blocking"]["spread"] < bound * r["initial_spread"], graph
        assert all(m["sent"] == m["received"] for m in (sync, free, r["blocking"])), graph


@pytest.mark.parametrize("device", DEVICES)
def test_gossip_of_parameters_on_a_device_reaches_the_exact_average(tmp_path, device):
    """Synchronous gossip of two agents whose parameters are on DEVICE (on a GPU, through pinned host buffers)
    reaches the exact initial average, every message accounted for."""
    setup = config("ring", 1, 0, 30, "lockstep", device=device)
    result = accounted(gossip(tmp_path, [setup], np=2)[setup])
    assert result["average_error"] < 1e-4 and result["final_spread"] < 1e-3 * result["initial_spread"]


# --- the script end to end -------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("np_, envs, track", [(2, 8, True), (4, 4, False)])
def test_end_to_end_tracked_offline(workdir, np_, envs, track, device):
    """W&B is tracked in one of the two (its offline shutdown holds a short run for ~5 s). Every agent on DEVICE.
    The learning rate warms up over 100 updates, more than the run's 60."""
    updates = 60  # 300 steps per simulator: random Breakout games end within that
    proc, run_dir, tags = run_ok(SCRIPT, "--env-id", "Breakout-v5", "--total-timesteps", str(updates * np_ * envs * 5),
                                 *(["--track"] if track else []), "--save-model", "--log-every", "5",
                                 "--disagreement-every", "5", "--lr-warmup-updates", "100", *FAST,
                                 "--num-envs", str(envs), cwd=workdir,
                                 np=np_, device=device)
    assert_devices(run_dir, device, gpu_ranks=list(range(np_)))
    agents = ranks_of(run_dir)
    assert sorted(agents) == list(range(np_)) and all(a["updates"] == updates for a in agents.values())
    assert all(a["slept"] == 0 for a in agents.values())  # nobody slowed (--debug-slow-factor 1)
    assert f"[agent {np_ - 1}] {updates} updates in " in proc.stdout.splitlines()[-1]  # printed whole, by rank 0
    assert sum(a["sent"] for a in agents.values()) == sum(a["received"] for a in agents.values()) > 0
    for tag in ("charts/SPS", "losses/policy_loss", "charts/episodic_return", "gossip/disagreement",
                "gossip/disagreement_relative", "gossip/grad_cosine", "gossip/mix_rate", "gossip/sent",
                "gossip/skipped_sends", "gossip/staleness", "network/dead_units_conv3"):
        assert tag in tags, tag
    assert len(tags["gossip/disagreement"]) == updates // 5  # every measurement completed and was logged
    # Agent 0 logs after its updates 4, 9, ..., 59: the default rate (7e-4 at 16 simulators) times 5k / 100.
    logged = [lr for _, lr in tags["charts/learning_rate"]]
    assert logged == pytest.approx([7e-4 * 5 * k / 100 for k in range(1, updates // 5 + 1)], rel=1e-5)
    assert len(tags["charts/episodic_return"]) >= envs * np_  # games of every agent reached rank 0
    assert len(list((workdir / "wandb").glob("offline-run-*/run-*.wandb"))) == int(track)
    # The average checkpoint is the exact mean of the agents' own checkpoints.
    agent_states = [read_ckpt(run_dir / "checkpoint" / f"agent{r}.pt") for r in range(np_)]
    average = read_ckpt(run_dir / "checkpoint" / "average.pt")
    assert average["global_step"] == updates * np_ * envs * 5
    for name, value in average["model"].items():
        mean = sum(s["model"][name].double() for s in agent_states) / np_
        torch.testing.assert_close(value.double(), mean, rtol=0, atol=1e-6)
    assert any(not torch.equal(agent_states[0]["model"][n], agent_states[1]["model"][n]) for n in average["model"])


def test_one_agent_is_plain_a2c_and_takes_exactly_a2cs_steps(workdir):
    """GALA with one agent has nobody to gossip with (it says so and sends nothing): from the same seed
    it must be A2C, update for update (same rollouts, same mean loss, same clipped RMSprop step). The two
    scripts compute the mean loss in a different order (A2C divides the summed gradient, GALA the loss),
    so they agree to float rounding; over many updates RMSprop's normalisation amplifies that rounding
    (measured: 1e-7 after 1 and 3 updates, 2e-3 after 20), hence 3 updates."""
    updates, envs = 3, 8
    common = ["--env-id", "Breakout-v5", "--total-timesteps", str(updates * envs * 5), "--num-envs", str(envs),
              "--save-model", "--torch-threads", "1", "--env-threads", "1"]
    for name, script in (("a2c", "a2c_allreduce_atari.py"), ("gala", SCRIPT)):
        (workdir / name).mkdir()
        proc = run(script, *common, cwd=workdir / name)
        ok(proc)
    assert "one agent: no gossip, this is plain A2C" in proc.stdout
    assert ranks_of(run_dirs(workdir / "gala")[0])[0]["sent"] == 0
    (a2c_run,), (gala_run,) = run_dirs(workdir / "a2c"), run_dirs(workdir / "gala")
    a2c_ckpt = read_ckpt(a2c_run / "checkpoint.pt")
    gala_ckpt = read_ckpt(gala_run / "checkpoint" / "agent0.pt")
    assert a2c_ckpt["update"] == gala_ckpt["update"] == updates
    torch.manual_seed(1)  # the parameters the scripts start from (seed 1, rank 0), Breakout's 4 actions
    initial = gala.Agent(4).state_dict()
    for name, value in a2c_ckpt["model"].items():
        torch.testing.assert_close(gala_ckpt["model"][name], value, rtol=1e-4, atol=1e-6)
    assert not torch.equal(a2c_ckpt["model"]["critic.weight"], initial["critic.weight"])  # they did learn


def test_a_slow_agent_holds_nobody_up(workdir):
    """Ring 0 -> 1 -> 2 -> 0 with agent 1 a device 4 times slower (--debug-slow-factor 4: it sleeps 3 x each
    update's time): it takes about 4 times as long for its updates, agent 0 skips sends that agent 1 has not
    read, agent 2 mixes only when agent 1's messages come; all end cleanly, nothing lost."""
    updates = 12
    _, run_dir, _ = run_ok(SCRIPT, "--total-timesteps", str(updates * 3 * 8 * 5), "--debug-slow-rank", "1",
                           "--debug-slow-factor", "4", *FAST, cwd=workdir, np=3, timeout=180)
    agents = ranks_of(run_dir)
    slow = agents[1]
    assert slow["slept"] == pytest.approx(3 * (slow["seconds"] - slow["slept"]), rel=0.15)
    assert agents[0]["slept"] == agents[2]["slept"] == 0
    assert slow["seconds"] > 2 * max(agents[0]["seconds"], agents[2]["seconds"])
    assert all(a["updates"] == updates for a in agents.values())
    assert agents[0]["skipped"] > 0  # agent 0 did not wait for the slow reader
    assert agents[2]["mixes"] < updates  # agent 2 did not wait for the slow writer
    assert agents[2]["mixes"] <= agents[1]["sent"]
    assert sum(a["sent"] for a in agents.values()) == sum(a["received"] for a in agents.values())


RESUMED_UPDATES = 30


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> tuple[Path, Path, list[dict], subprocess.CompletedProcess]:
    """Two agents on Pong stopped by SIGTERM once training, then resumed to 30 updates with --save-model (one
    launch of each, for the resume test and the evaluation of the average). Returns (workdir, first run
    directory, the agents' stopped checkpoints, the resumed run's process)."""
    workdir = tmp_path_factory.mktemp("resumed")
    total = RESUMED_UPDATES * 2 * 8 * 5
    code, out, err = sigterm_once_training(SCRIPT, "--total-timesteps", str(total * 100), *FAST, cwd=workdir, np=2)
    assert code == 0, err
    assert "stopped by signal" in out
    (first,) = run_dirs(workdir)
    saved = [read_ckpt(first / "checkpoint" / f"agent{r}.pt") for r in range(2)]
    proc = run(SCRIPT, "--total-timesteps", str(total), "--resume", str(first / "checkpoint"), "--save-model",
               *FAST, cwd=workdir, np=2)
    return workdir, first, saved, proc


def test_sigterm_checkpoint_then_resume(resumed):
    workdir, first, saved, proc = resumed
    assert all(0 < s["update"] < RESUMED_UPDATES for s in saved)
    ok(proc)
    for r in range(2):
        assert f"[agent {r}] resumed from {first / 'checkpoint'} at update {saved[r]['update']}" in proc.stdout
    (second,) = [d for d in run_dirs(workdir) if d != first]
    for r in range(2):
        final = read_ckpt(second / "checkpoint" / f"agent{r}.pt")
        assert final["update"] == RESUMED_UPDATES  # each agent continued from its own update count
        assert {float(s["step"]) for s in final["optimizer"]["state"].values()} == {float(RESUMED_UPDATES)}


def test_sigterm_after_some_agents_finished_still_ends_together(workdir):
    """Agent 0 has done all its updates (waiting in the teardown) when SIGTERM comes; the slow agent 1
    is still training. They must agree the run was stopped: both checkpoint, neither evaluates alone."""
    updates = 16
    total = updates * 2 * 8 * 5
    proc = start(SCRIPT, "--total-timesteps", str(total), "--debug-slow-rank", "1", "--debug-slow-seconds", "0.5",
                 "--eval-episodes", "1", *FAST, cwd=workdir, np=2)
    for line in proc.stdout:
        if line.startswith(f"[agent 0] all {updates} updates done"):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by signal" in out and "eval argmax" not in out
    (run_dir,) = run_dirs(workdir)
    saved = {r: read_ckpt(run_dir / "checkpoint" / f"agent{r}.pt")["update"] for r in range(2)}
    assert saved[0] == updates and saved[1] < updates


def test_eval_uses_the_average_checkpoint(resumed, tmp_path):
    """Evaluation of the resumed run's checkpoint directory (its agents and their average)."""
    workdir, first, _, resumed_proc = resumed
    ok(resumed_proc)
    (second,) = [d for d in run_dirs(workdir) if d != first]
    proc = run(SCRIPT, "--eval-checkpoint", str(second / "checkpoint"), "--eval-episodes", "2", cwd=tmp_path, np=2)
    ok(proc)
    assert "eval argmax" in proc.stdout and "eval sampled" in proc.stdout


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-peers", "0"], "--num-peers must be between 1 and 1"),
        (["--num-peers", "2"], "--num-peers must be between 1 and 1"),
        (["--env-id", "Pongg-v5"], "unknown env id 'Pongg-v5'"),
        (["--total-timesteps", "10"], "is below one update"),
        (["--resume", "missing"], "checkpoint directory 'missing' does not exist"),
        (["--lr-warmup-updates", "-1"], "--lr-warmup-updates must be 0 or more"),
    ],
)
def test_bad_input_is_refused_by_the_argument_checks(workdir, monkeypatch, args, message):
    monkeypatch.chdir(workdir)
    assert message in config_error(gala, args)


@pytest.mark.parametrize("warmup, anneal", [(0, False), (4, False), (0, True), (4, True)])
def test_learning_rate_warms_up_then_anneals(warmup, anneal):
    args = gala.Args(learning_rate=1.0, lr_warmup_updates=warmup, anneal_lr=anneal)
    args.num_updates = 10
    rise = [0.25, 0.5, 0.75] + [1.0] * 7 if warmup else [1.0] * 10
    fall = [1.0 - u / 10 for u in range(10)] if anneal else [1.0] * 10
    assert [gala.learning_rate(args, u) for u in range(10)] == pytest.approx([r * f for r, f in zip(rise, fall)])

