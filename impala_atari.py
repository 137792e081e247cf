"""IMPALA on Atari: actors send unrolls over MPI, one learner corrects them with V-trace.

`mpirun -np N` (N >= 2): rank 0 is the learner, ranks 1..N-1 are actors. Each actor steps
`num_envs` envpool simulators with the newest parameters it has received and sends unrolls of
`unroll_length` steps (observations, actions, the behaviour policy's logits, rewards, discounts)
without waiting for the learner, up to `max_inflight` in flight. The learner batches unrolls as they
arrive, corrects for the policy lag with V-trace, takes an RMSprop step and publishes the new
parameters without blocking. Espeholt et al., "IMPALA", ICML 2018 (arXiv 1802.01561), Table G.1.

    mpirun -np 3 python impala_atari.py --env-id Pong-v5

Simplifications and choices, stated so nobody has to find them:
- The official GALA network (the Nature CNN with 32 filters in its third conv, 0.87M parameters),
  the same as the A2C-family scripts here, not the IMPALA paper's deep ResNet.
- `python impala_atari.py --single-process` runs actor and learner in turn in one process: on-policy,
  no lag (for debugging and tests). Without the flag, a world of one is refused: IMPALA needs a
  learner and at least one actor.
- Losses are sums over T x B as in the reference implementation (the baseline loss is 0.5 x sum of
  squares, times --vf-coef); Table G.1's learning rate (6e-4, annealed to 0) belongs to that scale.
  The logged losses/* are those sums divided by the number of valid samples in the batch: means, as in
  the A2C scripts and README's table (the gradient is still that of the sums).
- envpool resets on the step *after* an episode (or a life) ends, ignoring the action: that
  transition is masked out of the loss. Discounts are 0 at every episode end, time limits included
  (no truncation bootstrap, unlike the A2C scripts).
- `global_step` counts the steps the learner has learnt from (updates x batch x unroll); steps of
  unrolls that arrive after the last update are dropped. The learner stamps the episodes it receives
  with its current global_step.
- A resumed run restores the learner's parameters, optimizer, step count and RNG; actors start new
  games with the restored parameters.
- torch's RMSprop, not TF's: Table G.1's epsilon 0.01 sits outside the square root here (inside in
  the reference), and the square average starts at 0 (1 in TF), so early steps are larger.
- The learner's queue is bounded by a pool of (actors + 2 batches) unroll buffers; when it is full,
  actors' sends wait, and an actor with --max-inflight sends waiting waits too.
"""

import os

# Before torch loads OpenMP: its threads sleep between parallel regions instead of spinning, which
# would take the cores from envpool's threads (results/throughput_levers.txt, section 6:
# A2C 1 x 16 +3-12% on 2 cores; ranks of one torch thread never spin). A value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import random
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import envpool
import numpy as np
import torch
import torch.nn as nn
import tyro
from mpi4py import MPI
from torch.distributions.categorical import Categorical


def default_is(text: str):
    """What --help says a flag's default is, for an Optional one whose None means TEXT (not "None")."""
    return tyro.conf.arg(help_behavior_hint=f"(default: {text})")


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment (ranks derive their own simulator and sampling seeds from it)"""
    torch_deterministic: bool = False
    """`torch.backends.cudnn.deterministic`: on a GPU, the same numbers from the same seed (on by default only in
    the synchronous A2C: the asynchronous scripts' runs vary with the timing of their ranks anyway)"""
    cuda: bool = True
    """use CUDA when it is present: every rank that learns on its own GPU while there are enough, cuda:{i %
    device_count} for the i-th such rank of a node (A3C's store rank on the CPU, IMPALA's actors by default)"""
    track: bool = False
    """send the run to Weights & Biases (WANDB_MODE=offline writes it locally for `wandb sync`)"""
    wandb_project_name: str = "gala-rl"
    """the W&B project"""
    wandb_entity: Optional[str] = None
    """the W&B entity (team or user)"""
    wandb_group: Optional[str] = None
    """the W&B group (an experiment: one group, many seeds)"""
    wandb_tags: tuple[str, ...] = ()
    """extra W&B tags (the algorithm and the total simulators are always added)"""
    env_id: str = "Pong-v5"
    """the envpool Atari id (`-v5`: NoFrameskip-v4 with the DeepMind wrappers, no sticky actions)"""
    total_timesteps: int = 40_000_000
    """environment steps summed over every simulator of every rank (one step = 4 frames)"""
    max_seconds: Optional[float] = None
    """stop after this many seconds of training, as at the end (checkpoint with --save-model, evaluation): a
    wall-clock budget"""
    num_envs: int = 16
    """simulators per actor"""
    env_threads: Annotated[Optional[int], default_is("this rank's share of its node's cores")] = None
    """envpool threads per rank"""
    torch_threads: Annotated[Optional[int], default_is("this rank's share of its node's cores")] = None
    """torch threads per rank"""
    learning_rate: Annotated[Optional[float], default_is("6e-4, Table G.1")] = None
    """RMSprop learning rate (not scaled with the number of actors)"""
    anneal_lr: bool = True
    """anneal the learning rate linearly to 0 over total_timesteps (Table G.1)"""
    gamma: float = 0.99
    """the discount factor"""
    ent_coef: float = 0.01
    """coefficient of the entropy bonus"""
    vf_coef: float = 0.5
    """coefficient of the baseline loss (0.5 x sum of squared errors)"""
    max_grad_norm: float = 40.0
    """clip of the global gradient norm"""
    rmsprop_alpha: float = 0.99
    """RMSprop smoothing constant"""
    rmsprop_eps: float = 0.01
    """RMSprop epsilon (Table G.1's value, but torch puts it outside the square root and starts the
    average at 0, where the reference TF RMSProp puts it inside and starts at 1)"""
    log_every: int = 5
    """updates between scalar logs"""
    print_every: float = 10.0
    """seconds between progress lines on rank 0"""
    save_model: bool = False
    """write a checkpoint at the end (and every --checkpoint-every steps) to runs/{run_name}"""
    checkpoint_every: int = 0
    """global steps between checkpoints when --save-model (0: only at the end)"""
    resume: Optional[str] = None
    """checkpoint to continue from (same algorithm, env id, world size and num_envs)"""
    eval_episodes: int = 0
    """after training, play this many full games with the argmax and with the sampled policy"""
    eval_checkpoint: Optional[str] = None
    """evaluate this checkpoint for --eval-episodes games (10 if it is 0) and exit, without training"""

    # Algorithm specific arguments
    unroll_length: int = 20
    """steps per unroll (T)"""
    batch_size: int = 32
    """trajectories per learner batch (B, a multiple of --num-envs: whole unrolls)"""
    rho_bar: float = 1.0
    """V-trace clip of the importance ratio in the targets and the policy gradient"""
    c_bar: float = 1.0
    """V-trace clip of the trace-cutting coefficients"""
    max_inflight: int = 2
    """unrolls an actor may have in flight before it waits for the learner"""
    actor_device: Literal["cpu", "cuda"] = "cpu"
    """where the actors run their policy (cuda: on GPUs of their own after the learner's, with --cuda); the CPU, as
    the IMPALA paper's actors, leaves the GPU to the learner"""
    single_process: bool = False
    """run without MPI: one process alternates acting and learning (on-policy; for debugging)"""
    debug_slow_rank: Optional[int] = None
    """a straggler (studies/stragglers.py): this rank pauses once per update (an IMPALA actor: per unroll) for
    --debug-slow-seconds plus (--debug-slow-factor - 1) x the time since its previous pause; no other rank pauses"""
    debug_slow_seconds: float = 0.0
    """the slow rank's fixed pause, seconds per update (an IMPALA actor: per unroll)"""
    debug_slow_factor: float = 1.0
    """F: the slow rank runs as a device F times slower (its pause adds F - 1 times the time its work took)"""

    # filled in at runtime (not flags: --help lists none of them, and the parser refuses them)
    world_size: tyro.conf.Suppress[int] = 0
    """number of MPI ranks"""
    num_actors: tyro.conf.Suppress[int] = 0
    """actor ranks (world_size - 1; 1 in a world of one)"""
    total_envs: tyro.conf.Suppress[int] = 0
    """simulators over all actors"""
    num_updates: tyro.conf.Suppress[int] = 0
    """learner updates in the whole run"""
    start_step: tyro.conf.Suppress[int] = 0
    """global step this run starts from: its --resume checkpoint's, else 0"""
    start_seconds: tyro.conf.Suppress[float] = 0.0
    """seconds of training before this run: its --resume checkpoint's (what --max-seconds counts on from)"""


ALGO = "impala"


class ConfigError(Exception):
    """Bad input: reported once by rank 0, then every rank exits with status 2."""


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------
def make_env(env_id: str, num_envs: int, seed: int, threads: int, train: bool = True):
    """envpool Atari with the DeepMind settings: 84x84 gray, 4-frame stack, frame skip 4, up to 30
    no-ops; for training also episodic life and reward clipping (evaluation plays the real game)."""
    return envpool.make(
        env_id,
        env_type="gymnasium",
        num_envs=num_envs,
        batch_size=num_envs,
        num_threads=threads,
        seed=seed,
        episodic_life=train,
        reward_clip=train,
        noop_max=30,
        stack_num=4,
        img_height=84,
        img_width=84,
    )


class EpisodeStats:
    """Raw (unclipped) return and length of the real game, summed across lives until game over."""

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def update(self, info: dict, truncated: np.ndarray, valid: np.ndarray) -> list[tuple[float, int]]:
        self.returns += info["reward"]
        self.lengths += valid  # the reset step after a done is not a step of the game
        game_over = info["terminated"].astype(bool) | truncated
        finished = [(float(self.returns[i]), int(self.lengths[i])) for i in np.flatnonzero(game_over)]
        self.returns[game_over] = 0.0
        self.lengths[game_over] = 0
        return finished


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def layer_init(layer, std=np.sqrt(2), bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


HIDDEN = ("conv1", "conv2", "conv3", "fc")
"""the Agent's hidden layers, in order (their ReLU outputs)"""


class Agent(nn.Module):
    """The official GALA network: the Nature CNN (Mnih et al. 2015) with 32 filters in its third conv
    (0.87M parameters, as in facebookresearch/gala), then a policy and a value head."""

    def __init__(self, num_actions: int):
        super().__init__()
        self.network = nn.Sequential(
            layer_init(nn.Conv2d(4, 32, 8, stride=4)),
            nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.Conv2d(64, 32, 3, stride=1)),
            nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(32 * 7 * 7, 512)),
            nn.ReLU(),
        )
        self.actor = layer_init(nn.Linear(512, num_actions), std=0.01)
        self.critic = layer_init(nn.Linear(512, 1), std=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Channels-last input (the weights stay contiguous): the convolutions' train step runs 1.2-1.5x
        # faster on a CPU (results/throughput_levers.txt, section 1), the same values to float rounding
        # (float32 on a GPU too: set_up turns TF32 off).
        hidden = self.network((x.float() / 255.0).contiguous(memory_format=torch.channels_last))
        return self.actor(hidden), self.critic(hidden).squeeze(-1)

    def dead_units(self, x: torch.Tensor) -> dict[str, float]:
        """The share of each hidden layer's units (a conv's channels, the linear layer's units) that no
        observation of the batch X activates anywhere: a unit whose ReLU output is 0 on the whole batch gets
        no gradient from it, and one that stays so is dead ("the network died" measured, not guessed)."""
        with torch.no_grad():
            hidden, shares = (x.float() / 255.0).contiguous(memory_format=torch.channels_last), []
            for layer in self.network:
                hidden = layer(hidden)
                if isinstance(layer, nn.ReLU):  # [B, C, H, W] -> per channel; [B, units] -> per unit
                    active = (hidden > 0).flatten(2).any(2) if hidden.dim() == 4 else hidden > 0
                    shares.append(1.0 - active.any(0).float().mean())
        return {f"network/dead_units_{name}": share for name, share in zip(HIDDEN, torch.stack(shares).tolist())}


# ---------------------------------------------------------------------------------------------
# The distinctive part: V-trace (Espeholt et al. 2018, eq. 1 and Remark 1)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def vtrace(behaviour_logprobs, target_logprobs, rewards, discounts, values, bootstrap_value, rho_bar=1.0, c_bar=1.0):
    """V-trace targets and policy-gradient advantages. Tensors are [T, B] (bootstrap_value [B]);
    discounts[t] is gamma, or 0 where the episode ended at step t.

        rho_t = min(rho_bar, pi/mu), c_t = min(c_bar, pi/mu)
        v_s = V(x_s) + delta_s + discount_s c_s (v_{s+1} - V(x_{s+1})),
        delta_s = rho_s (r_s + discount_s V(x_{s+1}) - V(x_s)),
        pg_advantage_s = rho_s (r_s + discount_s v_{s+1} - V(x_s)).
    """
    ratios = torch.exp(target_logprobs - behaviour_logprobs)
    rhos, cs = ratios.clamp(max=rho_bar), ratios.clamp(max=c_bar)
    next_values = torch.cat([values[1:], bootstrap_value[None]])
    deltas = rhos * (rewards + discounts * next_values - values)
    vs_minus_v = torch.zeros_like(values)
    acc = torch.zeros_like(bootstrap_value)
    for t in reversed(range(values.shape[0])):
        acc = deltas[t] + discounts[t] * cs[t] * acc
        vs_minus_v[t] = acc
    vs = vs_minus_v + values
    next_vs = torch.cat([vs[1:], bootstrap_value[None]])
    return vs, rhos * (rewards + discounts * next_vs - values)


class Unroll:
    """One unroll of `num_envs` trajectories in one pre-allocated byte buffer, sent as one message:
    observations [T+1, N, 4, 84, 84] (the last is the bootstrap observation), then float32 fields
    actions, behaviour logits, rewards, discounts (gamma, 0 where an episode ended), valid (0 for
    envpool's reset transition) and the version (learner update) of the parameters that acted."""

    def __init__(self, T: int, N: int, num_actions: int):
        obs_bytes = (T + 1) * N * 4 * 84 * 84
        sizes = {"actions": T * N, "logits": T * N * num_actions, "rewards": T * N, "discounts": T * N,
                 "valid": T * N, "version": 1}
        self.buf = np.zeros(obs_bytes + 4 * sum(sizes.values()), dtype=np.uint8)
        self.obs = self.buf[:obs_bytes].reshape(T + 1, N, 4, 84, 84)
        floats, offset = self.buf[obs_bytes:].view(np.float32), 0
        for name, size in sizes.items():
            view = floats[offset : offset + size]
            setattr(self, name, view.reshape(T, N, num_actions) if name == "logits"
                    else view.reshape(T, N) if size > 1 else view)
            offset += size


class Actor:
    """Steps `num_envs` simulators with the agent's current parameters and fills Unrolls."""

    def __init__(self, args: Args, agent: nn.Module, seed: int, threads: int, device: torch.device):
        self.args, self.agent, self.device = args, agent, device
        self.envs = make_env(args.env_id, args.num_envs, seed, threads, train=True)
        self.next_obs = self.envs.reset()[0]
        self.next_done = np.zeros(args.num_envs, dtype=bool)
        self.stats = EpisodeStats(args.num_envs)

    def unroll(self, u: Unroll, version: int, progress=lambda: None) -> list[tuple[float, int]]:
        """Fills `u`; returns the games that ended. `progress` is called after every env step."""
        finished = []
        for t in range(self.args.unroll_length):
            u.obs[t] = self.next_obs
            with torch.no_grad():
                logits, _ = self.agent(torch.from_numpy(self.next_obs).to(self.device))
            action = Categorical(logits=logits).sample()
            host = torch.cat([action[:, None].float(), logits], 1).cpu().numpy()  # one copy from the device
            u.actions[t], u.logits[t] = host[:, 0], host[:, 1:]
            valid = ~self.next_done
            self.next_obs, u.rewards[t], terminated, truncated, info = self.envs.step(u.actions[t].astype(np.int64))
            self.next_done = terminated | truncated
            # No bootstrapping across an episode end, nor from envpool's reset transition.
            u.discounts[t] = self.args.gamma * (~self.next_done & valid)
            u.valid[t] = valid
            finished += self.stats.update(info, truncated, valid)
            progress()
        u.obs[-1] = self.next_obs
        u.version[0] = version
        return finished


METRICS = ("losses/policy_loss", "losses/value_loss", "losses/entropy", "vtrace/rho_mean", "vtrace/rho_clipped_frac")
"""what impala_update returns, on the device (copied to the host at log points)"""


def impala_update(agent, optimizer, batch: dict, args: Args) -> torch.Tensor:
    """One learner step on [T, B] trajectories; the losses are sums over T x B, as in the reference
    implementation (scalable_agent), for which the learning rate 6e-4 of Table G.1 was tuned.
    Returns METRICS: the losses as means over the valid samples (the sums / their count), for logging."""
    T, B = batch["rewards"].shape
    logits, values = agent(batch["obs"].reshape((T + 1) * B, 4, 84, 84))
    logits, values = logits.reshape(T + 1, B, -1)[:-1], values.reshape(T + 1, B)
    actions = batch["actions"].long().unsqueeze(-1)
    target_logprobs = torch.log_softmax(logits, -1).gather(-1, actions).squeeze(-1)
    behaviour_logprobs = torch.log_softmax(batch["logits"], -1).gather(-1, actions).squeeze(-1)
    vs, pg_advantages = vtrace(
        behaviour_logprobs, target_logprobs.detach(), batch["rewards"], batch["discounts"], values[:-1].detach(),
        values[-1].detach(), args.rho_bar, args.c_bar,
    )
    valid = batch["valid"]
    policy = -(valid * pg_advantages * target_logprobs).sum()
    baseline = 0.5 * (valid * (vs - values[:-1]) ** 2).sum()
    entropy = (valid * Categorical(logits=logits).entropy()).sum()
    optimizer.zero_grad()
    (policy + args.vf_coef * baseline - args.ent_coef * entropy).backward()
    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    with torch.no_grad():  # ratios of the valid samples, without indexing (which would wait for the device)
        ratios = torch.exp(target_logprobs - behaviour_logprobs)
        n = valid.sum().clamp(min=1.0)  # logged as means over the valid samples; the step above used the sums
        rho = [(valid * ratios).sum() / n, (valid * (ratios > args.rho_bar)).sum() / n]
        return torch.stack([policy / n, baseline / n, entropy / n, *rho])


def to_batch(unrolls: list[Unroll], device: torch.device) -> dict:
    """Concatenates unrolls along the batch axis into device tensors."""
    cat = lambda name: torch.from_numpy(np.concatenate([getattr(u, name) for u in unrolls], axis=1)).to(device)  # noqa: E731
    return {name: cat(name) for name in ("obs", "actions", "logits", "rewards", "discounts", "valid")}


def read_batch(unrolls: list[Unroll], update: int, device: torch.device, release=None) -> tuple[dict, float]:
    """The batch tensors (copies) and the mean policy lag (updates since the parameters that acted),
    all read before `release` hands the buffers back: a released buffer may at once receive the next unroll."""
    batch = to_batch(unrolls, device)
    lag = update - float(np.mean([u.version[0] for u in unrolls]))
    if release is not None:
        release(unrolls)
    return batch, lag


TAG_UNROLL, TAG_PARAMS, TAG_STOP, TAG_DONE, TAG_EPISODES = 1, 2, 3, 4, 5


def wait_any(requests: list, poll_seconds: float = 1e-3) -> int:
    """MPI.Request.Waitany that sleeps between tests instead of spinning: MPICH's blocking calls
    busy-poll a core, and an actor waiting for a free slot then takes that core from the learner it
    waits for (1 learner + 2 actors on 2 cores: 977 SPS spinning, 1,112 polling every 1 ms; 0.1 ms and
    sched_yield measured no better: results/throughput_levers.txt)."""
    while True:
        index, done = MPI.Request.Testany(requests)
        if done:
            return index
        time.sleep(poll_seconds)


def run_actor(comm, args: Args, agent: nn.Module, flat: torch.Tensor, actor: Actor, version: int, signalled) -> dict:
    """An actor rank: act with the newest parameters received, send unrolls from `max_inflight`
    pre-allocated slots without waiting (except when all are in flight), until the learner says stop
    (a signal to this actor is passed on to the learner, which stops the job); then take the parameter
    messages it announced, report its counts and complete every send."""
    num_actions = envpool.make_spec(args.env_id).action_space.n
    slots = [Unroll(args.unroll_length, args.num_envs, num_actions) for _ in range(args.max_inflight)]
    sends = [MPI.REQUEST_NULL] * args.max_inflight
    params = torch.zeros(flat.numel() + 1, pin_memory=flat.device.type == "cuda").numpy()  # parameters, version
    params_req = comm.Irecv(params, source=0, tag=TAG_PARAMS)
    stop_buf = np.zeros(1, dtype=np.int64)
    stop_req = comm.Irecv(stop_buf, source=0, tag=TAG_STOP)
    got, unrolls, episode_msgs, episode_sends = 0, 0, 0, []
    slow, began = SlowDown(comm, args), time.time()

    def progress():
        MPI.Request.Testall(sends)

    while not stop_req.Test():
        bool(signalled)  # pass a signal to this rank on
        if params_req.Test():
            flat.copy_(torch.from_numpy(params[:-1]))
            version, got = int(params[-1]), got + 1
            params_req = comm.Irecv(params, source=0, tag=TAG_PARAMS)
        free = [i for i, req in enumerate(sends) if req.Test()]
        i = free[0] if free else wait_any(sends)  # the --max-inflight bound
        slow()
        finished = actor.unroll(slots[i], version, progress)
        sends[i] = comm.Isend(slots[i].buf, dest=0, tag=TAG_UNROLL)
        unrolls += 1
        if finished:
            episode_sends.append(comm.isend(finished, dest=0, tag=TAG_EPISODES))
            episode_msgs += 1
        episode_sends = [req for req in episode_sends if not req.Test()]
    announced = int(stop_buf[0])  # parameter messages the learner sent to this actor
    while got < announced:
        params_req.Wait()
        got += 1
        if got < announced:
            params_req = comm.Irecv(params, source=0, tag=TAG_PARAMS)
        else:
            params_req = MPI.REQUEST_NULL
    if params_req != MPI.REQUEST_NULL:
        params_req.Cancel()
        params_req.Wait()
    counts = np.array([unrolls, episode_msgs], dtype=np.int64)
    MPI.Request.Waitall([comm.Isend(counts, dest=0, tag=TAG_DONE), *sends, *episode_sends])
    actor.envs.close()
    return {"unrolls": unrolls, "seconds": time.time() - began, "slept": slow.slept}


class Learner:
    """Rank 0 under MPI. Unrolls land straight in a fixed pool of buffers: each actor has at most one
    receive posted, re-posted only while a buffer is free, so the queue is bounded (a full queue holds
    the actors' sends and, through --max-inflight, the actors). Batches are taken in arrival order.
    Parameters go to each actor with a synchronous-mode send that is skipped while the actor has not
    taken the previous one (so actors get the newest)."""

    def __init__(self, comm, args: Args, flat: torch.Tensor, num_actions: int):
        self.comm, self.args, self.flat = comm, args, flat
        self.actors = list(range(1, comm.Get_size()))
        per_batch = args.batch_size // args.num_envs
        pool_size = len(self.actors) + 2 * per_batch
        self.pool = [Unroll(args.unroll_length, args.num_envs, num_actions) for _ in range(pool_size)]
        self.posted: dict[int, Unroll] = {}  # actor -> the buffer its posted receive writes into
        self.reqs = {a: MPI.REQUEST_NULL for a in self.actors}
        self.waiting: deque = deque(self.actors)  # actors with no receive posted
        self.ready: deque = deque()  # received unrolls, oldest first
        self.received = dict.fromkeys(self.actors, 0)
        pinned = flat.device.type == "cuda"  # a message is copied from the device straight into its buffer
        self.param_bufs = {a: torch.zeros(flat.numel() + 1, pin_memory=pinned) for a in self.actors}
        self.param_msg = {a: buf.numpy() for a, buf in self.param_bufs.items()}  # parameters, then their version
        self.param_reqs = {a: MPI.REQUEST_NULL for a in self.actors}
        self.param_msgs = dict.fromkeys(self.actors, 0)
        self.episode_msgs = dict.fromkeys(self.actors, 0)
        self.idle = 0.0
        self._post()

    def _post(self) -> None:
        while self.waiting and self.pool:
            a = self.waiting.popleft()
            self.posted[a] = self.pool.pop()
            self.reqs[a] = self.comm.Irecv(self.posted[a].buf, source=a, tag=TAG_UNROLL)

    def _collect(self, actor: int) -> None:
        self.ready.append(self.posted.pop(actor))
        self.received[actor] += 1
        self.waiting.append(actor)
        self._post()

    def poll(self) -> None:
        for a in list(self.posted):
            if self.reqs[a].Test():
                self._collect(a)

    def next_batch(self, unrolls: int) -> tuple[list[Unroll], int]:
        """The oldest `unrolls` unrolls, waiting (inside MPI, counted as idle) until they are there;
        also returns how many were waiting (the queue depth). Give them back with release()."""
        self.poll()
        depth = len(self.ready)
        while len(self.ready) < unrolls:  # some receive is posted: the pool outnumbers actors + a batch
            began = time.time()
            actors = list(self.posted)
            index = wait_any([self.reqs[a] for a in actors])
            self.idle += time.time() - began
            self._collect(actors[index])
            self.poll()
        return [self.ready.popleft() for _ in range(unrolls)], depth

    def release(self, unrolls: list[Unroll]) -> None:
        self.pool.extend(unrolls)
        self._post()

    def publish(self, version: int) -> None:
        """The parameters of VERSION to every actor that took the previous message: one copy per message sent."""
        for a in self.actors:
            if self.param_reqs[a].Test():
                self.param_bufs[a][:-1].copy_(self.flat.detach())
                self.param_msg[a][-1] = version
                self.param_reqs[a] = self.comm.Issend(self.param_msg[a], dest=a, tag=TAG_PARAMS)
                self.param_msgs[a] += 1

    def receive_episodes(self) -> list[tuple[float, int]]:
        found, status = [], MPI.Status()
        while self.comm.iprobe(source=MPI.ANY_SOURCE, tag=TAG_EPISODES, status=status):
            found += self.comm.recv(source=status.Get_source(), tag=TAG_EPISODES)
            self.episode_msgs[status.Get_source()] += 1
        return found

    def stop_actors(self) -> list[tuple[float, int]]:
        """Tell every actor to stop (with the number of parameter messages sent to it), read and drop
        the unrolls still coming, exactly as many as each actor reports, and complete every request."""
        announced = {a: np.array([self.param_msgs[a]], dtype=np.int64) for a in self.actors}
        stops = [self.comm.Isend(announced[a], dest=a, tag=TAG_STOP) for a in self.actors]
        done_bufs = {a: np.zeros(2, dtype=np.int64) for a in self.actors}
        done_reqs = {a: self.comm.Irecv(done_bufs[a], source=a, tag=TAG_DONE) for a in self.actors}
        reported, episodes = {}, []
        self.pool.extend(self.ready)  # unrolls not learnt from are dropped
        self.ready.clear()
        self.waiting.clear()
        while True:
            for a in self.actors:
                if a not in reported and done_reqs[a].Test():
                    reported[a] = done_bufs[a]
                if a in self.posted and self.reqs[a].Test():
                    self.received[a] += 1  # arrived after the last update: dropped
                    self.pool.append(self.posted.pop(a))
                finished = a in reported and self.received[a] == reported[a][0]
                if a not in self.posted and not finished:
                    self.posted[a] = self.pool.pop()
                    self.reqs[a] = self.comm.Irecv(self.posted[a].buf, source=a, tag=TAG_UNROLL)
                elif a in self.posted and finished:
                    self.reqs[a].Cancel()
                    self.reqs[a].Wait()
                    self.pool.append(self.posted.pop(a))
            episodes += self.receive_episodes()
            if len(reported) == len(self.actors) and all(
                self.received[a] == reported[a][0] and self.episode_msgs[a] == reported[a][1] for a in self.actors
            ):
                break
            time.sleep(1e-3)
        MPI.Request.Waitall(stops)
        MPI.Request.Waitall(list(self.param_reqs.values()))
        return episodes


def flatten_parameters(agent: nn.Module) -> torch.Tensor:
    """Make the parameters views into one flat tensor (so that an actor loads new ones in place)."""
    flat = nn.utils.parameters_to_vector(agent.parameters()).detach().clone()
    offset = 0
    for p in agent.parameters():
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def broadcast_parameters(comm, agent) -> None:
    """Every rank starts from rank 0's initial parameters."""
    flat = nn.utils.parameters_to_vector(agent.parameters()).detach().cpu().numpy()
    comm.Bcast(flat, root=0)
    nn.utils.vector_to_parameters(torch.from_numpy(flat).to(next(agent.parameters()).device), agent.parameters())

# ---------------------------------------------------------------------------------------------
# Arguments and the checkpoint to start from
# ---------------------------------------------------------------------------------------------
def finalize_args(args: Args, world_size: int) -> None:
    """Checks the input (ConfigError) and fills the runtime fields."""
    check_env_id(args.env_id)
    if args.num_envs < 1:
        raise ConfigError(f"--num-envs must be at least 1, got {args.num_envs}")
    if args.log_every < 1:
        raise ConfigError(f"--log-every must be at least 1, got {args.log_every}")
    if args.unroll_length < 1:
        raise ConfigError(f"--unroll-length must be at least 1, got {args.unroll_length}")
    if args.max_inflight < 1:
        raise ConfigError(f"--max-inflight must be at least 1, got {args.max_inflight}")
    if args.batch_size < args.num_envs:
        raise ConfigError(
            f"--batch-size {args.batch_size} is below one unroll ({args.num_envs} trajectories, --num-envs)"
        )
    if args.batch_size % args.num_envs:
        raise ConfigError(
            f"--batch-size {args.batch_size} must be a multiple of --num-envs {args.num_envs} (whole unrolls)"
        )
    if world_size == 1 and not args.single_process and args.eval_checkpoint is None:
        raise ConfigError(
            "IMPALA needs at least 2 ranks, a learner (rank 0) and an actor: `mpirun -np 3 python impala_atari.py`; "
            "--single-process alternates acting and learning in one process"
        )
    if world_size > 1 and args.single_process:
        raise ConfigError(f"--single-process runs without mpirun, not on {world_size} ranks")
    args.world_size = world_size
    args.num_actors = max(world_size - 1, 1)
    args.total_envs = args.num_actors * args.num_envs
    if args.learning_rate is None:
        args.learning_rate = 6e-4
    if args.eval_checkpoint is not None:
        args.eval_episodes = args.eval_episodes or 10
        return
    args.num_updates = args.total_timesteps // (args.batch_size * args.unroll_length)
    if args.num_updates < 1:
        raise ConfigError(
            f"--total-timesteps {args.total_timesteps} is below one update "
            f"({args.batch_size} trajectories x {args.unroll_length} steps = {args.batch_size * args.unroll_length})"
        )


def start_checkpoint(args: Args, world_size: int, rank: int) -> Optional[dict]:
    """The checkpoint to evaluate (--eval-checkpoint) or to resume (--resume, written by this world
    size, --num-envs, --batch-size and --unroll-length), or None."""
    if args.eval_checkpoint is not None:
        return read_checkpoint(Path(args.eval_checkpoint), args, args.eval_checkpoint)
    if args.resume is None:
        return None
    ckpt = read_checkpoint(Path(args.resume), args, args.resume)
    if (ckpt["world_size"], ckpt["num_envs"]) != (world_size, args.num_envs):
        raise ConfigError(
            f"checkpoint {args.resume!r} was written by {ckpt['world_size']} ranks x {ckpt['num_envs']} envs, "
            f"this run has {world_size} x {args.num_envs}"
        )
    saved = (ckpt["args"]["batch_size"], ckpt["args"]["unroll_length"])
    if saved != (args.batch_size, args.unroll_length):
        raise ConfigError(
            f"checkpoint {args.resume!r} counts updates of {saved[0]} x {saved[1]} steps, "
            f"this run has --batch-size {args.batch_size} --unroll-length {args.unroll_length}"
        )
    return ckpt


def resume(ckpt: dict, optimizer, device: torch.device, args: Args) -> None:
    """The learner: restores the optimizer and the RNG from a --resume checkpoint."""
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"], device)
    print(f"resumed from {args.resume} at global_step {ckpt['global_step']}", flush=True)


def rng_state(device: torch.device) -> dict:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    """The torch RNG, and on a GPU the CUDA one: as saved by a GPU run, else seeded from the restored torch RNG
    (a CPU checkpoint resumed on a GPU draws new numbers, not again those of the run's start)."""
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "cuda":
        torch.cuda.manual_seed(int(torch.randint(2**62, (1,))))


# ---------------------------------------------------------------------------------------------
# Training: set-up, the actors or the learner's loop, teardown
# ---------------------------------------------------------------------------------------------
def train(args: Args) -> dict:
    comm = MPI.COMM_WORLD
    rank, world_size = comm.Get_rank(), comm.Get_size()
    ckpt = checked_input(comm, args)
    uses_gpu = rank == 0 or args.actor_device == "cuda"  # the learner, and the actors only if asked
    device, torch_threads, env_threads, run_name, run_dir = set_up(comm, args, uses_gpu)
    if rank == 0:
        print(
            f"{ALGO}: " + (f"1 learner + {args.num_actors} actor(s)" if world_size > 1 else
                           "one process: actor and learner alternate (no MPI)")
            + f" x {args.num_envs} envs on {device} ({torch_threads} torch / {env_threads} env threads per rank), "
            f"lr {args.learning_rate:.3g}, batch {args.batch_size} x {args.unroll_length}",
            flush=True,
        )
    num_actions = envpool.make_spec(args.env_id).action_space.n
    agent = Agent(num_actions).to(device)
    if ckpt is not None:
        agent.load_state_dict(ckpt["model"])
    broadcast_parameters(comm, agent)
    flat = flatten_parameters(agent)
    if args.eval_checkpoint is not None:  # evaluation only
        results = evaluate_all_ranks(comm, agent, args, ckpt["global_step"], env_threads, device)
        if rank == 0:
            report_eval(results, args, run_dir)
        return {"eval": results}

    signalled = StopSignal(comm, budget(args))  # a signal to any rank reaches the learner, which stops the job
    start_update = ckpt["update"] if ckpt else 0
    env_seed = int(np.random.SeedSequence([args.seed, rank, start_update]).generate_state(1)[0] >> 1)
    actor = Actor(args, agent, env_seed, env_threads, device) if world_size == 1 or rank > 0 else None
    if rank > 0:
        mine = run_actor(comm, args, agent, flat, actor, start_update, signalled)
        signalled.finish()
        return finish_ranks(comm, args, agent, None, run_dir, env_threads, device, {}, mine)

    # The learner (rank 0), or actor and learner in turn in a world of one.
    optimizer = torch.optim.RMSprop(
        agent.parameters(), lr=args.learning_rate, alpha=args.rmsprop_alpha, eps=args.rmsprop_eps, momentum=0.0
    )
    if ckpt is not None:
        resume(ckpt, optimizer, device, args)
    writer = open_writer(args, run_name, run_dir)
    steps_per_update = args.batch_size * args.unroll_length
    ckpt_path = run_dir / "checkpoint.pt"

    def checkpoint(update: int) -> None:
        save_checkpoint(ckpt_path, {
            "algorithm": ALGO, "env_id": args.env_id, "world_size": world_size, "num_envs": args.num_envs,
            "update": update, "global_step": update * steps_per_update, "model": agent.state_dict(),
            "seconds": args.start_seconds + time.time() - progress.start_time,
            "optimizer": optimizer.state_dict(), "args": asdict(args), "rng": rng_state(device),
        })

    learner = Learner(comm, args, flat, num_actions) if world_size > 1 else None
    local = [Unroll(args.unroll_length, args.num_envs, num_actions) for _ in range(args.batch_size // args.num_envs)]
    progress = Progress(start_update * steps_per_update, args.num_updates * steps_per_update, args.print_every, True)
    slow = SlowDown(comm, args)

    update, stop = start_update, False
    global_step = update * steps_per_update
    while update < args.num_updates and not stop:
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - update / args.num_updates)
        if learner is None:
            found = [e for u in local for e in actor.unroll(u, update)]
            unrolls, depth = local, 0
        else:
            unrolls, depth = learner.next_batch(len(local))
            found = learner.receive_episodes()
        batch, lag = read_batch(unrolls, update, device, learner.release if learner else None)
        metrics = impala_update(agent, optimizer, batch, args)
        slow()
        update += 1
        global_step = update * steps_per_update
        if learner is not None:
            learner.publish(update)
        log_episodes(writer, [(global_step, ret, length) for ret, length in found], progress.recent_returns)
        stop = bool(signalled)
        if update % args.log_every == 0 or update == args.num_updates or stop:
            idle = (learner.idle if learner else 0.0) / (time.time() - progress.start_time)
            log_scalars(writer, global_step, {
                "charts/SPS": progress.sps(global_step), "charts/learning_rate": optimizer.param_groups[0]["lr"],
                **dict(zip(METRICS, metrics.tolist())), "impala/policy_lag": lag, "impala/queue_depth": depth,
                "impala/learner_idle_frac": idle, **agent.dead_units(batch["obs"][:-1].flatten(0, 1)),
            })
        if checkpoint_due(args, global_step, steps_per_update):
            checkpoint(update)
        progress.update(global_step, last=update == args.num_updates)

    # Teardown: the actors stopped (every message read), the final checkpoint (at the end with
    # --save-model, or when stopped), the final parameters to every rank, evaluation.
    end_time = time.time()
    idle = (learner.idle if learner else 0.0) / (end_time - progress.start_time)
    mine = {"updates": update - start_update, "seconds": end_time - progress.start_time, "idle_frac": idle,
            "slept": slow.slept}
    if learner is not None:
        found = learner.stop_actors()
        log_episodes(writer, [(global_step, ret, length) for ret, length in found], progress.recent_returns)
        print("learner: unrolls received per actor " + ", ".join(f"{a}: {n}" for a, n in learner.received.items())
              + f"; idle {idle:.0%} of the time", flush=True)
        mine["received"] = {str(a): n for a, n in learner.received.items()}
    if actor is not None:
        actor.envs.close()
    out_of_time = signalled.finish()
    stopped = stop and not out_of_time  # by a signal: no evaluation, the run is to be continued
    if args.save_model or stop:
        checkpoint(update)
        print(f"{'stopped by signal at ' if stopped else ''}global_step {global_step}: checkpoint {ckpt_path}",
              flush=True)
    summary = {**progress.result(global_step, end_time, stopped, out_of_time), "idle_frac": idle}
    return finish_ranks(comm, args, agent, writer, run_dir, env_threads, device, summary, mine)


def finish_ranks(comm, args, agent, writer, run_dir, env_threads, device, summary: dict, mine: dict) -> dict:
    """Collective teardown: the learner's final parameters reach every rank, which all evaluate (unless the
    run was stopped by a signal); the learner (which holds the writer) writes summary.json with every rank's
    counters (MINE)."""
    stopped = comm.bcast(summary.get("stopped"), root=0)
    broadcast_parameters(comm, agent)
    if args.eval_episodes and not stopped:
        summary["eval"] = evaluate_all_ranks(comm, agent, args, args.num_updates, env_threads, device)
        if comm.Get_rank() == 0:
            report_eval(summary["eval"], args, run_dir, writer, summary["global_step"])
    summary = write_summary(comm, run_dir, summary, mine, device)
    if writer is not None:
        close_writer(writer, args)
    return summary


# ---------------------------------------------------------------------------------------------
# Plumbing, identical in the four scripts (tests/test_scripts.py keeps it so): input checks, set-up,
# logging, progress, the stop signal, checkpoint files, evaluation, the entry point
# ---------------------------------------------------------------------------------------------
def checked_input(comm, args: Args) -> Optional[dict]:
    """Collective: finalize_args, then the checkpoint to start from (--resume or --eval-checkpoint).
    Bad input on any rank: rank 0 says it once and every rank exits with 2, before anything is written."""
    problem, ckpt = None, None
    try:
        if args.debug_slow_factor < 1 or (args.max_seconds is not None and args.max_seconds <= 0):
            raise ConfigError("--debug-slow-factor must be at least 1 and --max-seconds positive")
        finalize_args(args, comm.Get_size())
        ckpt = start_checkpoint(args, comm.Get_size(), comm.Get_rank())
        if args.resume is not None:
            args.start_step, args.start_seconds = ckpt["global_step"], ckpt["seconds"]
    except ConfigError as e:
        problem = str(e)
    fail_together(comm, problem)
    return ckpt


def fail_together(comm, problem: Optional[str]) -> None:
    """Collective: if any rank found bad input, rank 0 says it once and every rank exits with 2."""
    problems = comm.allgather(problem)
    found = sorted({p for p in problems if p})
    if found:
        if comm.Get_rank() == 0:
            for p in found:
                ranks = [r for r, q in enumerate(problems) if q == p]
                where = "" if len(ranks) == comm.Get_size() else f" (rank {', '.join(map(str, ranks))})"
                print(f"error: {p}{where}", file=sys.stderr, flush=True)
        sys.exit(2)


def check_env_id(env_id: str) -> None:
    if env_id not in envpool.list_all_envs():
        raise ConfigError(f"unknown env id {env_id!r}: envpool.list_all_envs() lists the valid ones")
    if type(envpool.make_spec(env_id)).__name__ != "AtariEnvSpec":
        raise ConfigError(f"env id {env_id!r} is not an Atari game; these scripts train on Atari")


def threads_per_rank(mine: set, node: list[set]) -> int:
    """A rank's share of its CPU affinity MINE among the affinities NODE of its node's ranks: divided by
    the ranks that share any of its cores (mpirun without binding: all of them), kept whole where the
    launcher bound each rank to its own cores (srun --cpus-per-task); at least 1."""
    return max(1, len(mine) // sum(1 for other in node if other & mine))


def node_threads(comm, uses_gpu: bool = False) -> tuple[int, int]:
    """Collective: this rank's default threads (threads_per_rank), and its index among the ranks of this
    node that use a GPU (USES_GPU), which picks its device."""
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    mine = set(os.sched_getaffinity(0))
    threads = threads_per_rank(mine, local.allgather(mine))
    gpu_ranks = local.Split(int(uses_gpu), local.Get_rank())
    gpu_index = gpu_ranks.Get_rank()
    gpu_ranks.Free()
    local.Free()
    return threads, gpu_index


def set_up(comm, args: Args, uses_gpu: bool = True) -> tuple[torch.device, int, int, str, Path]:
    """Threads (by default this rank's share of its node's cores), seeds, the device, and the run's name and
    directory (made by rank 0). A rank that USES_GPU takes, with --cuda and CUDA present, the GPU
    cuda:{i % device_count} where i is its index among the GPU-using ranks of its node (one GPU each while
    there are enough; a rank that only serves or only acts stays on the CPU). Float32 everywhere: TF32 is
    off, so a GPU computes what the CPU does, to float rounding. Returns (device, torch threads, env
    threads, run name, run directory)."""
    rank = comm.Get_rank()
    default_threads, gpu_index = node_threads(comm, uses_gpu and args.cuda and torch.cuda.is_available())
    torch_threads = args.torch_threads or default_threads
    env_threads = args.env_threads or default_threads
    torch.set_num_threads(torch_threads)
    random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    torch.manual_seed(args.seed + rank)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.distributions.Distribution.set_default_validate_args(False)  # no per-call checks in the hot loop
    device = torch.device("cpu")
    if uses_gpu and args.cuda and torch.cuda.is_available():
        device = torch.device(f"cuda:{gpu_index % torch.cuda.device_count()}")
        torch.cuda.set_device(device)
    run_name = comm.bcast(f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}", root=0)
    run_dir = Path("runs") / run_name
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    return device, torch_threads, env_threads, run_name, run_dir


def open_writer(args: Args, run_name: str, run_dir: Path):
    """Rank 0: TensorBoard events in run_dir (mirrored to W&B with --track), the arguments as text
    and in config.json (which the benchmark report reads)."""
    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            group=args.wandb_group,
            tags=[ALGO, f"sims{args.total_envs}", *args.wandb_tags],
            sync_tensorboard=True,
            config=asdict(args),
            name=run_name,
            save_code=True,
        )
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    table = "\n".join(f"|{k}|{v}|" for k, v in asdict(args).items())
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
    (run_dir / "config.json").write_text(json.dumps({"algorithm": ALGO, **asdict(args)}, indent=1))
    return writer


def log_scalars(writer, global_step: int, scalars: dict) -> None:
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, global_step)


def log_episodes(writer, episodes: list, recent_returns: deque) -> None:
    """Episodes as (global step at its end, raw return, length), in the order of their steps."""
    for step_at, ret, length in sorted(episodes):
        writer.add_scalar("charts/episodic_return", ret, step_at)
        writer.add_scalar("charts/episodic_length", length, step_at)
        recent_returns.append(ret)


def close_writer(writer, args: Args) -> None:
    writer.close()
    if args.track:
        import wandb

        wandb.finish()


class Progress:
    """Rank 0's progress line every --print-every seconds (steps, share done, SPS, ETA, recent
    return), and the run's one SPS: from its 10th update on (start-up excluded)."""

    def __init__(self, start_step: int, total_steps: int, print_every: float, prints: bool):
        self.start_step, self.total_steps, self.print_every, self.prints = start_step, total_steps, print_every, prints
        self.start_time = self.last_print = time.time()
        self.recent_returns: deque = deque(maxlen=20)
        self.updates, self.warm = 0, None

    def sps(self, global_step: int, now: Optional[float] = None) -> float:
        """Global steps per second from the 10th update on (before it, since the start): what charts/SPS, the
        progress line and summary.json say."""
        now = time.time() if now is None else now
        since, step = self.warm if self.warm is not None and now > self.warm[0] else (self.start_time, self.start_step)
        return (global_step - step) / max(now - since, 1e-9)

    def update(self, global_step: int, last: bool = False) -> None:
        self.updates += 1
        if self.updates == 10:
            self.warm = (time.time(), global_step)
        if self.prints and (last or time.time() - self.last_print >= self.print_every):
            self.last_print = time.time()
            sps = int(self.sps(global_step))
            left = int((self.total_steps - global_step) / sps) if sps else 0
            eta = f"{left // 3600}h{left % 3600 // 60:02d}m" if left >= 3600 else f"{left // 60}m{left % 60:02d}s"
            share = 100 * global_step / self.total_steps
            recent = f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "n/a"
            print(f"global_step {global_step}/{self.total_steps} ({share:.1f}%)  SPS {sps}  ETA {eta}  "
                  f"recent return {recent}", flush=True)

    def result(self, global_step: int, end_time: float, stopped: bool, out_of_time: bool) -> dict:
        """The fields of summary.json that the four scripts share (README, "What a run writes")."""
        return {"global_step": int(global_step), "start_step": self.start_step, "stopped": bool(stopped),
                "out_of_time": bool(out_of_time), "sps": self.sps(global_step, end_time),
                "seconds": end_time - self.start_time}


class StopSignal:
    """SIGTERM or SIGINT (what SLURM sends before preemption, or Ctrl-C) to any one rank stops the whole
    job: truthy once a signal reached this rank or word of one reached it from another rank. The first
    look after its own signal tells every other rank (a one-byte non-blocking send on a communicator of
    its own), so a preempted node's ranks stop the job instead of vanishing from it. The job then stops
    at the end of an update with a checkpoint and exits 0. finish() (collective) reads every word sent.
    With MAX_SECONDS, the first rank past that many seconds from now tells the others the same way."""

    def __init__(self, comm, max_seconds: Optional[float] = None):
        self.deadline = None if max_seconds is None else time.time() + max_seconds
        self.out_of_time = False
        self.comm = comm.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.received, self.told, self.heard = False, False, 0
        self.word, self.sends = np.zeros(1, dtype=np.int8), []
        self.listen = self.comm.Irecv(self.word, source=MPI.ANY_SOURCE, tag=0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.handle)

    def handle(self, signum, frame) -> None:
        self.received = True

    def __bool__(self) -> bool:
        if self.deadline is not None and not self.received and time.time() > self.deadline:
            self.received = self.out_of_time = True
        if self.received and not self.told:
            self.told = True
            word = np.ones(1, dtype=np.int8)
            self.sends = [self.comm.Isend(word, dest=r, tag=0) for r in range(self.size) if r != self.rank]
        if self.listen.Test():
            self.heard += 1
            self.listen = self.comm.Irecv(self.word, source=MPI.ANY_SOURCE, tag=0)
        return self.received or self.heard > 0

    def finish(self) -> bool:
        """Collective, once training is over: every word sent is read (a signal from now on is not
        passed on). Returns whether the time ran out (on any rank): the run ended as planned."""
        bool(self)
        told = self.comm.allgather((self.told, self.out_of_time))
        tellers = sum(t for t, _ in told)
        while self.heard < tellers - self.told:
            self.listen.Wait()
            self.heard += 1
            self.listen = self.comm.Irecv(self.word, source=MPI.ANY_SOURCE, tag=0)
        self.listen.Cancel()
        self.listen.Wait()
        MPI.Request.Waitall(self.sends)
        self.comm.Free()
        return any(out for _, out in told)


def budget(args) -> Optional[float]:
    """The seconds of training this run may take: --max-seconds less those of the runs it continues."""
    return None if args.max_seconds is None else args.max_seconds - args.start_seconds


class SlowDown:
    """--debug-slow-rank R: rank R pauses once per update for --debug-slow-seconds S plus (--debug-slow-factor
    F - 1) x the time since its previous pause ended (its update), so that it runs as a device F times slower;
    the other ranks never pause. `slept` totals the pauses."""

    def __init__(self, comm, args):
        self.mine = comm.Get_rank() == args.debug_slow_rank
        self.seconds, self.factor = args.debug_slow_seconds, args.debug_slow_factor
        self.slept, self.since = 0.0, time.perf_counter()

    def __call__(self) -> None:
        if self.mine:
            pause = self.seconds + (self.factor - 1.0) * (time.perf_counter() - self.since)
            time.sleep(pause)
            self.slept += pause
        self.since = time.perf_counter()


def write_summary(comm, run_dir: Path, summary: dict, mine: dict, device: torch.device) -> dict:
    """Collective: the run's result, SUMMARY with every rank's own counters (MINE, with its DEVICE, in rank order
    under "ranks"), which rank 0 writes to runs/<run_name>/summary.json (what the benchmark tools and the tests
    read); returns it on rank 0 (None elsewhere)."""
    ranks = comm.gather({"rank": comm.Get_rank(), "device": str(device), **mine}, root=0)
    if comm.Get_rank() != 0:
        return None
    summary = {"algorithm": ALGO, **summary, "ranks": ranks}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=lambda x: x.item()))  # numpy scalars
    return summary


def on_cpu(state):
    """STATE (nested dicts, lists, tuples) with every tensor copied to the CPU."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {key: on_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(on_cpu(value) for value in state)
    return state


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: write a temporary file beside the target, flush it to disk, then rename it over the
    target. A kill at any point leaves either the previous checkpoint or the new one, never a mix;
    the next save removes a temporary file left by a killed writer. Every tensor is saved on the CPU,
    so that any torch.load reads it, with or without a GPU."""
    for stale in path.parent.glob(path.name + ".tmp*"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(on_cpu(state), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def checkpoint_due(args: Args, global_step: int, steps: int) -> bool:
    """--save-model with --checkpoint-every N: the last `steps` steps crossed a multiple of N."""
    every = args.checkpoint_every
    return args.save_model and every > 0 and global_step // every != (global_step - steps) // every


def read_checkpoint(path: Path, args: Args, name: str) -> dict:
    """A checkpoint file of this algorithm for this game, or ConfigError (`name` is how messages call it)."""
    if not path.is_file():
        raise ConfigError(f"checkpoint {name!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ConfigError(f"checkpoint {name!r} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("algorithm") != ALGO:
        found = ckpt.get("algorithm") if isinstance(ckpt, dict) else None
        raise ConfigError(f"checkpoint {name!r} is from {found!r}, not {ALGO!r}")
    if ckpt["env_id"] != args.env_id:
        raise ConfigError(f"checkpoint {name!r} is for {ckpt['env_id']}, not --env-id {args.env_id}")
    return ckpt


def evaluate(agent, env_id, episodes, greedy, seed, threads, device) -> np.ndarray:
    """Raw returns of `episodes` full games (no episodic life, no reward clipping), one per simulator,
    so that short games are not over-counted."""
    envs = make_env(env_id, episodes, seed, threads, train=False)
    obs, _ = envs.reset()
    returns, done = np.zeros(episodes), np.zeros(episodes, dtype=bool)
    running = np.zeros(episodes)
    while not done.all():
        with torch.no_grad():
            logits, _ = agent(torch.from_numpy(obs).to(device))
        action = logits.argmax(1) if greedy else Categorical(logits=logits).sample()
        obs, _, _, truncated, info = envs.step(action.cpu().numpy())
        running += info["reward"]
        ended = (info["terminated"].astype(bool) | truncated) & ~done
        returns[ended] = running[ended]
        done |= ended
    envs.close()
    return returns


def evaluate_all_ranks(comm, agent, args, seed_base, threads, device) -> dict:
    """Rank r plays games r, r + world, ...; rank 0 gathers and summarises (argmax and sampled)."""
    results = {}
    mine = len(range(comm.Get_rank(), args.eval_episodes, comm.Get_size()))
    for mode in ("argmax", "sampled"):
        seed = int(np.random.SeedSequence([args.seed, comm.Get_rank(), seed_base]).generate_state(1)[0] >> 1)
        local = evaluate(agent, args.env_id, mine, mode == "argmax", seed, threads, device) if mine else np.zeros(0)
        gathered = comm.gather(local, root=0)
        if comm.Get_rank() == 0:
            returns = np.concatenate(gathered)
            results[mode] = {
                "mean": float(returns.mean()), "median": float(np.median(returns)), "returns": returns.tolist()
            }
    return results


def report_eval(results: dict, args: Args, run_dir: Path, writer=None, global_step: int = 0) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "eval.json").write_text(json.dumps({"env_id": args.env_id, **results}, indent=1))
    for mode, r in results.items():
        games = len(r["returns"])
        print(f"eval {mode}: mean {r['mean']:.2f} median {r['median']:.2f} over {games} games", flush=True)
        if writer is not None:
            writer.add_scalar(f"eval/{mode}_return_mean", r["mean"], global_step)
            writer.add_scalar(f"eval/{mode}_return_median", r["median"], global_step)


def main(args: Args) -> None:
    """The entry point: train; an exception on any rank is printed with the rank and aborts the whole
    MPI job (a rank never waits for one that died)."""
    try:
        train(args)
    except Exception:
        import traceback

        rank = MPI.COMM_WORLD.Get_rank()
        print(f"[rank {rank}] {traceback.format_exc()}", file=sys.stderr, flush=True)
        MPI.COMM_WORLD.Abort(1)


if __name__ == "__main__":
    main(tyro.cli(Args))
