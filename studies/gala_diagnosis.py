"""Why GALA can learn less per step than A2C (two effects, each measured against a ground truth), and what the
first updates do to the network.

1. Staleness (`consensus`). Two agents run the script's real `Gossip` on a linear toy objective:
   every update adds the same step a to each agent (x <- x + a), then gossips. The agents' average
   then advances by exactly a per update when every mixed message is fresh (`--sync-freq 0` in
   lockstep). Mixing the peer's message of one update earlier gives x(t+1) = (x(t) + x(t-1))/2 + a,
   which advances by 2a/3; two updates earlier, a/2. Measured: the advance per update over a, and the
   ages of the mixed messages, with the agents working `--work-ms` per update as the script's agents
   do (calling Gossip.progress() every millisecond, as the script does every environment step).

2. Normalise-then-average (`step`). One A2C learner trains on Breakout with `--simulators` envpool
   simulators (real rollouts, the script's own targets and loss). At every update the same batch is
   also split into N shards of simulators/N, as N GALA agents would see it: each shard's gradient is
   clipped and normalised by its own RMSprop state (one per shard, updated along this run), and the
   shard steps are averaged, which is the consensus step of N agents that agree. Both steps are
   projected on the descent direction of the whole batch's gradient; the ratio GALA / A2C is reported
   per window of updates, with the share of clipped gradients. N = 1 is A2C itself (ratio exactly 1:
   the check of the measurement). Simplification: the shard RMSprop states follow the A2C run's
   parameters, not each agent's own trajectory.

3. The first updates (`warmup`). One A2C learner's first updates on a game (Pong by default, whose bright,
   uniform background gives the first conv's gradient one sign over the whole frame), per learning rate and
   per RMSprop start: torch's square average starts at 0, so its first steps are about 10 x lr per parameter
   in the sign of the gradient; TF1's (OpenAI baselines' A2C) starts at 1, so its first steps are about lr x
   the gradient. Measured: the share of the first conv's units that no observation of the rollout batch
   activates, every --every updates, as the scripts log it (`network/dead_units_*`).

The study's own runs: `python -m benchmark report` gives each GALA run's gossip over all its agents (from
summary.json) and the mean return per quarter of the steps.

    python -m studies.gala_diagnosis consensus
    python -m studies.gala_diagnosis step --total-timesteps 200000
    python -m studies.gala_diagnosis warmup

Writes its table to --out (default results/gala_diagnosis_{consensus,step,warmup}.txt).
"""

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import tyro
from torch.distributions.categorical import Categorical

from benchmark.common import ROOT, mpirun, script_module


# ---------------------------------------------------------------------------------------------
# 1. Staleness on the real Gossip class
@dataclass
class Consensus:
    """Consensus speed of two agents on a linear objective, per --sync-freq, with the real Gossip."""

    updates: int = 400
    """updates of each agent"""
    work_ms: float = 20.0
    """time an agent works (acts and learns) per update, while calling Gossip.progress()"""
    jitter: float = 0.2
    """each update's work time varies uniformly by +- this fraction (agents drift apart as real ones do)"""
    out: Path = Path("results/gala_diagnosis_consensus.txt")


def consensus_worker(out: str, sync_freq: str, updates: int, work_ms: float, jitter: float) -> None:
    """Run under mpirun -np 2: x_i starts at 0 in 1,000 dimensions, every update adds a = 1 / sqrt(1000)
    along the diagonal (|a| = 1) as the agent's local step, works, gossips; rank 0 writes the advance per update
    of the agents' average and the distance between the two agents."""
    from mpi4py import MPI

    gala = script_module("gala_a2c_atari.py")
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    rng = np.random.default_rng(rank)
    flat = torch.zeros(1000)
    step = torch.full((1000,), 1 / np.sqrt(1000))
    gossip = gala.Gossip(comm.Dup(), flat, "ring", 1, None if sync_freq == "none" else int(sync_freq))
    comm.Barrier()
    start_time = time.time()
    for t in range(1, updates + 1):
        until = time.time() + work_ms / 1000 * (1 + jitter * rng.uniform(-1, 1))
        while time.time() < until:
            gossip.progress()
            time.sleep(0.001)
        flat += step
        gossip.exchange(t)
    elapsed = time.time() - start_time
    gossip.finish()
    positions = comm.gather(float(flat @ step), root=0)  # each agent's advance along the step direction
    ages = comm.gather(gossip.age_counts, root=0)
    mixes = comm.gather(gossip.mixes, root=0)
    if rank == 0:
        merged: dict[int, int] = {}
        for a in ages:
            for age, n in a.items():
                merged[age] = merged.get(age, 0) + n
        Path(out).write_text(json.dumps({
            "advance_per_update": float(np.mean(positions)) / updates, "ages": merged,
            "distance": abs(positions[0] - positions[1]),
            "mix_rate": float(np.mean(mixes)) / updates, "seconds": elapsed,
        }))


def run_consensus(cfg: Consensus) -> None:
    rows = []
    for sync_freq in ("0", "1", "none"):
        out = Path(tempfile.mkdtemp()) / "consensus.json"
        cmd = [mpirun(), "-np", "2", sys.executable, "-m", "studies.gala_diagnosis", "consensus-worker", str(out),
               sync_freq, str(cfg.updates), str(cfg.work_ms), str(cfg.jitter)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            sys.exit(f"consensus run with --sync-freq {sync_freq} failed:\n{proc.stderr[-2000:]}")
        r = json.loads(out.read_text())
        total = sum(r["ages"].values())
        ages = ", ".join(f"{age}: {n / total:.0%}" for age, n in sorted(r["ages"].items(), key=lambda kv: int(kv[0])))
        mean_age = sum(int(age) * n for age, n in r["ages"].items()) / max(total, 1)
        advance, mix_rate = r["advance_per_update"], r["mix_rate"]
        rows.append(f"| {sync_freq:>4} | {advance:.3f} | {r['distance']:.2f} | {mix_rate:.2f} | {mean_age:.2f} | "
                    f"{ages} |")
    table = "\n".join([
        f"# Consensus speed of 2 agents (real Gossip), linear objective, {cfg.updates} updates, "
        f"{cfg.work_ms:g} ms +- {cfg.jitter:.0%} of work per update",
        "# advance: the agents' average's advance per update / the local step (1 = fresh averaging; scalar model:",
        "# 2/3 with messages 1 update old, 1/2 with 2); distance: between the two agents at the end, in local steps.",
        "# age: my update count - the sender's at its write.",
        "| sync-freq | advance | distance | mix rate | mean age | ages |",
        "| --- | --- | --- | --- | --- | --- |", *rows,
    ])
    print(table)
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(f"{command_line()}\n{table}\n")


# ---------------------------------------------------------------------------------------------
# 2. Normalise-then-average on real Breakout batches
@dataclass
class Step:
    """The consensus step of N agents (shards of one batch, each RMSprop-normalised) against A2C's step."""

    env_id: str = "Breakout-v5"
    simulators: int = 32
    """simulators of the A2C learner; split into N shards for N agents"""
    agents: tuple[int, ...] = (1, 2, 4)
    """numbers of agents to compare (each must divide --simulators); 1 is the check (ratio 1)"""
    total_timesteps: int = 200_000
    window: int = 50_000
    """steps per reported window"""
    learning_rate: Optional[float] = None
    """A2C's (and every shard's) rate; default 7e-4 x sqrt(simulators / 16), the scripts' default"""
    seed: int = 1
    threads: int = 2
    out: Path = Path("results/gala_diagnosis_step.txt")


def flat_grad(agent) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in agent.parameters()])


class Rollout:
    """The script's rollout of T steps on S envpool simulators (its targets; envpool's reset steps masked)."""

    def __init__(self, a2c, envs, S: int, T: int, gamma: float):
        self.a2c, self.envs, self.T, self.gamma = a2c, envs, T, gamma
        self.obs = torch.zeros((T, S, 4, 84, 84), dtype=torch.uint8)
        self.actions, self.values = torch.zeros((T, S), dtype=torch.long), torch.zeros((T, S))
        self.rewards, self.terms, self.truncs = (np.zeros((T, S), dtype=np.float32) for _ in range(3))
        self.next_obs, self.next_done = torch.from_numpy(envs.reset()[0]), np.zeros(S, dtype=bool)
        self.stats, self.returns_seen = a2c.EpisodeStats(S), []

    def collect(self, agent):
        """T steps with AGENT's sampled actions: (obs, actions, n-step returns, valid mask)."""
        prev_done = torch.from_numpy(self.next_done.astype(np.float32))
        for t in range(self.T):
            self.obs[t] = self.next_obs
            with torch.no_grad():
                logits, self.values[t] = agent(self.next_obs)
            self.actions[t] = Categorical(logits=logits).sample()
            valid = ~self.next_done
            raw, self.rewards[t], terminated, truncated, info = self.envs.step(self.actions[t].numpy())
            self.terms[t], self.truncs[t], self.next_done = terminated, truncated, terminated | truncated
            self.next_obs = torch.from_numpy(raw)
            self.returns_seen += [r for r, _ in self.stats.update(info, truncated, valid)]
        with torch.no_grad():
            next_value = agent(self.next_obs)[1]
        returns, valid = self.a2c.a2c_targets(*(torch.from_numpy(x) for x in (self.rewards, self.terms, self.truncs)),
                                              self.values, next_value, prev_done, self.gamma)
        return self.obs, self.actions, returns, valid


def run_step(cfg: Step) -> None:
    a2c = script_module("a2c_allreduce_atari.py")

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    S, T, finest = cfg.simulators, a2c.Args().num_steps, max(cfg.agents)  # T: the script's rollout
    if any(S % n for n in cfg.agents):
        sys.exit(f"error: every --agents value must divide --simulators {S}")
    args = a2c.Args(env_id=cfg.env_id)
    lr = cfg.learning_rate or 7e-4 * float(np.sqrt(S / 16))
    envs = a2c.make_env(cfg.env_id, S, cfg.seed, cfg.threads)
    agent = a2c.Agent(envs.action_space.n)
    optimizer = torch.optim.RMSprop(agent.parameters(), lr=lr, alpha=args.rmsprop_alpha, eps=args.rmsprop_eps)
    numel = sum(p.numel() for p in agent.parameters())
    square_avg = {n: torch.zeros(n, numel) for n in cfg.agents}  # one RMSprop state per shard
    rollout = Rollout(a2c, envs, S, T, args.gamma)
    returns_seen = rollout.returns_seen  # the games' returns so far, grown by every collect
    window: dict[str, list] = {}
    rows, step = [], 0
    while step < cfg.total_timesteps:
        obs, actions, returns, valid = rollout.collect(agent)
        # The gradient of each of the finest shards' summed loss, and its count of valid samples.
        width, sums, counts = S // finest, [], []
        for k in range(finest):
            cols = slice(k * width, (k + 1) * width)
            agent.zero_grad()
            p, v, e = a2c.a2c_loss_sums(agent, obs[:, cols].reshape(-1, 4, 84, 84), actions[:, cols].reshape(-1),
                                        returns[:, cols].reshape(-1), valid[:, cols].reshape(-1))
            (p + args.vf_coef * v - args.ent_coef * e).backward()
            sums.append(flat_grad(agent).clone())
            counts.append(valid[:, cols].sum().item())
        full = sum(sums) / max(sum(counts), 1.0)  # A2C's gradient: the mean loss over all valid samples
        descent = -full / full.norm()
        # A2C: clip the whole batch's gradient, one RMSprop step (the real one, which trains the agent).
        before = torch.nn.utils.parameters_to_vector(agent.parameters()).detach().clone()
        offset = 0
        for param in agent.parameters():
            param.grad = full[offset : offset + param.numel()].view_as(param).clone()
            offset += param.numel()
        full_norm = torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm).item()
        optimizer.step()
        a2c_step = torch.nn.utils.parameters_to_vector(agent.parameters()).detach() - before
        record = window.setdefault("a2c", [])
        record.append((float(a2c_step @ descent), full_norm > args.max_grad_norm))
        # N agents: each clips and normalises its shard's gradient with its own RMSprop state; the mean.
        for n in cfg.agents:
            group = finest // n
            steps = []
            for i in range(n):
                g = sum(sums[i * group : (i + 1) * group]) / max(sum(counts[i * group : (i + 1) * group]), 1.0)
                norm = g.norm().item()
                g = g * min(1.0, args.max_grad_norm / (norm + 1e-6))
                square_avg[n][i].mul_(args.rmsprop_alpha).addcmul_(g, g, value=1 - args.rmsprop_alpha)
                steps.append(-lr * g / (square_avg[n][i].sqrt() + args.rmsprop_eps))
                window.setdefault(f"clip{n}", []).append(norm > args.max_grad_norm)
            window.setdefault(f"gala{n}", []).append(float(torch.stack(steps).mean(0) @ descent))
        step += T * S
        if step % cfg.window < T * S or step >= cfg.total_timesteps:
            a2c_along = np.array([a for a, _ in window["a2c"]])
            cells = [f"{step:>7}", f"{np.mean(returns_seen[-50:]) if returns_seen else float('nan'):5.1f}",
                     f"{np.mean([c for _, c in window['a2c']]):.2f}"]
            for n in cfg.agents:
                ratio = np.sum(window[f"gala{n}"]) / np.sum(a2c_along)
                cells += [f"{ratio:.3f}", f"{np.mean(window[f'clip{n}']):.2f}"]
            rows.append("| " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
            window = {}
    envs.close()
    head = ["steps", "return", "A2C clipped"] + [h for n in cfg.agents for h in (f"ratio N={n}", f"clipped N={n}")]
    table = "\n".join([
        f"# {cfg.env_id}, one A2C learner of {S} simulators (lr {lr:.3g}), seed {cfg.seed}; per window of {cfg.window}",
        "# steps: the consensus step of N agents along the batch's descent direction / A2C's (sums over the",
        "# window's updates), and the share of clipped gradients (A2C's batch; the N agents' shards).",
        "| " + " | ".join(head) + " |", "|" + " --- |" * len(head), *rows,
    ])
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(f"{command_line()}\n{table}\n")
    print(table)


# ---------------------------------------------------------------------------------------------
# 3. What the first updates do to the first conv
@dataclass
class Warmup:
    """The share of the first conv's units that the first A2C updates leave dead, per learning rate and per
    RMSprop start: torch's square average starting at 0 (the scripts' and the GALA authors' code), whose
    first steps are about 10 x lr per parameter in the sign of the gradient, or at 1 (TF1's RMSPropOptimizer,
    as in OpenAI baselines' A2C), whose first steps are about lr x the gradient."""

    env_id: str = "Pong-v5"
    simulators: int = 64
    """simulators of the one A2C learner (the paper's shape: 4 workers x 16 are one A2C of 64)"""
    updates: int = 60
    every: int = 10
    """updates between measurements"""
    learning_rates: tuple[float, ...] = (1.4e-3, 7e-4)
    starts: tuple[float, ...] = (0.0, 1.0)
    """RMSprop's square average at the start: 0 (torch's) or 1 (TF1's)"""
    seeds: tuple[int, ...] = (1, 2, 3)
    threads: int = 2
    out: Path = Path("results/gala_diagnosis_warmup.txt")


def rmsprop(params, lr: float, alpha: float, eps: float, start: float) -> torch.optim.RMSprop:
    """Torch's RMSprop whose square average starts at START (torch: 0; TF1's RMSPropOptimizer: 1). Torch takes
    a state already there as it is, so the first step is lr g / (sqrt(alpha START + (1 - alpha) g^2) + eps)."""
    params = list(params)
    optimizer = torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps)
    if start:
        for param in params:
            optimizer.state[param] = {"step": torch.tensor(0.0), "square_avg": torch.full_like(param, start)}
    return optimizer


def warmup_run(a2c, cfg: Warmup, seed: int, lr: float, start: float) -> list[dict[str, float]]:
    """One A2C learner's first --updates updates, the script's loss, clip and RMSprop; the dead units on each
    measured update's rollout batch (before its step), as the scripts log them."""
    torch.manual_seed(seed)
    args = a2c.Args(env_id=cfg.env_id)
    envs = a2c.make_env(cfg.env_id, cfg.simulators, seed, cfg.threads)
    agent = a2c.Agent(envs.action_space.n)
    optimizer = rmsprop(agent.parameters(), lr, args.rmsprop_alpha, args.rmsprop_eps, start)
    rollout, seen = Rollout(a2c, envs, cfg.simulators, args.num_steps, args.gamma), []
    for update in range(cfg.updates + 1):
        obs, actions, returns, valid = rollout.collect(agent)
        batch = obs.reshape(-1, 4, 84, 84)
        if update % cfg.every == 0:
            seen.append({"update": update, **agent.dead_units(batch)})
        if update == cfg.updates:
            break
        p, v, e = a2c.a2c_loss_sums(agent, batch, actions.reshape(-1), returns.reshape(-1), valid.reshape(-1))
        optimizer.zero_grad()
        ((p + args.vf_coef * v - args.ent_coef * e) / max(valid.sum().item(), 1.0)).backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
        optimizer.step()
    envs.close()
    return seen


def run_warmup(cfg: Warmup) -> None:
    a2c = script_module("a2c_allreduce_atari.py")
    torch.set_num_threads(cfg.threads)
    points = list(range(0, cfg.updates + 1, cfg.every))
    head = ["lr", "square avg starts at", "seed"] + [f"conv1 dead, update {u}" for u in points] + \
        [f"{layer} at {points[-1]}" for layer in a2c.HIDDEN[1:]]
    rows = []
    for lr in cfg.learning_rates:
        for start in cfg.starts:
            for seed in cfg.seeds:
                seen = warmup_run(a2c, cfg, seed, lr, start)
                cells = [f"{lr:.2g}", f"{start:g}", str(seed)] + [f"{s['network/dead_units_conv1']:.2f}" for s in seen]
                cells += [f"{seen[-1][f'network/dead_units_{layer}']:.2f}" for layer in a2c.HIDDEN[1:]]
                rows.append("| " + " | ".join(cells) + " |")
                print(rows[-1], flush=True)
    table = "\n".join([
        f"# {cfg.env_id}, one A2C learner of {cfg.simulators} simulators, its first {cfg.updates} updates: the share",
        "# of each layer's units that no observation of the update's rollout batch activates (before its step).",
        "| " + " | ".join(head) + " |", "|" + " --- |" * len(head), *rows,
    ])
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(f"{command_line()}\n{table}\n")
    print(table)


# ---------------------------------------------------------------------------------------------
def command_line() -> str:
    """The command as it was run: the first line of a result file."""
    return " ".join(["python -m studies.gala_diagnosis", *sys.argv[1:]])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "consensus-worker":
        out, sync_freq, updates, work_ms, jitter = sys.argv[2:7]
        consensus_worker(out, sync_freq, int(updates), float(work_ms), float(jitter))
        return
    cfg = tyro.extras.subcommand_cli_from_dict({"consensus": Consensus, "step": Step, "warmup": Warmup})
    {Consensus: run_consensus, Step: run_step, Warmup: run_warmup}[type(cfg)](cfg)


if __name__ == "__main__":
    main()
