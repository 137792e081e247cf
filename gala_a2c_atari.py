"""GALA-A2C on Atari: A2C agents that never wait for each other and mix parameters by gossip.

Every rank is an agent: an A2C learner with its own `num_envs` envpool simulators and its own
RMSprop state. After every local update it sends its parameters, scaled by 1/(k+1), to its k
out-peers with non-blocking sends (skipping a peer whose previous message is still unread) and
mixes in whatever its in-peers' messages have arrived: theta <- theta/(k+1) + sum of messages.
Algorithm 1 of Assran et al., "Gossip-based Actor-Learner Architectures for Deep RL", NeurIPS 2019.

    mpirun -np 4 python gala_a2c_atari.py --env-id Pong-v5

Simplifications and choices, stated so nobody has to find them:
- The official GALA network: the Nature CNN with 32 filters in its third conv (0.87M parameters).
- envpool's DeepMind settings, kept rather than matched to the official code's baselines wrappers:
  after a life loss the 4-frame stack carries over (the official code zeros it at every done),
  games are cut at envpool's 27,000 steps (gym's limit, ~100k, in the official code), and a cut
  bootstraps from the value of its last observation (the official code treats every done as final).
- envpool resets on the step *after* an episode (or a life, under episodic life) ends and ignores
  that step's action: that transition is masked out of the loss. A time-limit truncation
  bootstraps from the value of the episode's last observation; a termination never bootstraps.
- The global budget is split evenly: every agent makes total_timesteps / (num_steps x num_envs x
  world_size) updates and then stops. The global step rank 0 logs is the agents' total: its own steps
  plus every other agent's as of that agent's last message to it (sent at its log points, so at most
  --log-every updates old); a game is stamped with its agent's own steps at its end plus the others'
  as rank 0 knows them. summary.json's `global_step` is the exact total, its SPS runs to the last agent's end.
- If fewer messages than k arrived (possible with k > 1 or the exponential graph), the mix is
  uniform over the agent and the messages that arrived, so the weights still sum to one.
- `--sync-freq K` means what it means in the official code: an agent mixes when every in-peer of
  the update has a message for it, tolerates K updates in a row without one and blocks on the next
  until they come; K = 0 blocks at every update (synchronous gossip). The sender never blocks: a
  send whose previous message the peer has not read yet is skipped. Without K (the default, as the
  paper's run with K = 1e8) nobody ever blocks and an agent mixes whatever has arrived.
- `--lr-warmup-updates K` (off by default; not in the paper) raises the learning rate linearly over the first K
  updates. It lets the agents take a larger learning rate, which without it kills units in torch RMSprop's first
  steps: on Breakout at 4 x 16, `--learning-rate 2.2e-3 --lr-warmup-updates 500` gave back a part of what agents
  that each normalise their own noisier gradient lose against A2C (docs/benchmark/paper-shape.md, the ladder); on
  BeamRider as much, on Qbert nothing (seed 1, docs/benchmark/six-games.md): it stays off by default.
- `--debug-lockstep-age A` is a diagnosis, not an algorithm: the agents wait for each other every update and
  mix messages exactly A updates old.
- A resumed run restores each agent's parameters, optimizer, update count and torch RNG, not the
  emulator states: its simulators start new games. Agents stopped by a signal may have saved at
  different updates: after such a resume, the exponential graph's schedule of each agent keeps its
  own phase, and a disagreement measurement pairs the agents' n-th measurements (labelled with rank
  0's update), as it does for the measurements topped up by agents that finished early.
- A game that ends exactly at the 27,000-step limit is reported by envpool as truncated and
  bootstrapped (rare).
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
    """simulators per rank"""
    env_threads: Annotated[Optional[int], default_is("this rank's share of its node's cores")] = None
    """envpool threads per rank"""
    torch_threads: Annotated[Optional[int], default_is("this rank's share of its node's cores")] = None
    """torch threads per rank"""
    learning_rate: Annotated[Optional[float], default_is("7e-4 x sqrt(total simulators / 16)")] = None
    """RMSprop learning rate"""
    anneal_lr: bool = False
    """anneal the learning rate linearly to 0 over total_timesteps"""
    lr_warmup_updates: int = 0
    """raise the learning rate linearly from lr / K to lr over the first K updates (0: none). Torch's RMSprop
    starts its square average at 0, so its first steps are about 10 x lr per parameter in the gradient's sign;
    a warm-up keeps a larger learning rate from killing units in them"""
    num_steps: int = 5
    """steps per simulator per update (the n of the n-step return)"""
    gamma: float = 0.99
    """the discount factor"""
    ent_coef: float = 0.01
    """coefficient of the entropy bonus"""
    vf_coef: float = 0.5
    """coefficient of the value loss (mean squared error)"""
    max_grad_norm: float = 0.5
    """clip of the global gradient norm (each agent clips its own gradient)"""
    rmsprop_alpha: float = 0.99
    """RMSprop smoothing constant"""
    rmsprop_eps: float = 1e-5
    """RMSprop epsilon (torch convention: outside the square root)"""
    log_every: int = 20
    """updates between scalar logs (and the sending of this agent's finished games to rank 0)"""
    print_every: float = 10.0
    """seconds between progress lines on rank 0"""
    save_model: bool = False
    """write a checkpoint at the end (and every --checkpoint-every steps) to runs/{run_name}/checkpoint"""
    checkpoint_every: int = 0
    """global steps between checkpoints when --save-model (0: only at the end)"""
    resume: Optional[str] = None
    """checkpoint directory to continue from (same algorithm, env id, world size and num_envs)"""
    eval_episodes: int = 0
    """after training, play this many full games with the argmax and with the sampled policy"""
    eval_checkpoint: Optional[str] = None
    """evaluate this checkpoint directory's average model for --eval-episodes games (10 if it is 0) and exit"""

    # Algorithm specific arguments
    gossip_graph: Literal["ring", "exponential"] = "ring"
    """ring: agent i sends to i+1, ..., i+k (the paper's experiments); exponential: at update t to
    i + 2^j for k consecutive j starting at t mod log2(world_size) (time-varying)"""
    num_peers: int = 1
    """k, the number of out-peers (and in-peers) per update"""
    sync_freq: Optional[int] = None
    """tolerate this many updates in a row without a mix, then block for the in-peers' messages
    (0: block at every update, synchronous gossip; None: never block)"""
    disagreement_every: int = 100
    """updates between measurements of the agents' disagreement and gradient cosine (0: never)"""
    debug_slow_rank: Optional[int] = None
    """a straggler (studies/stragglers.py): this rank pauses once per update (an IMPALA actor: per unroll) for
    --debug-slow-seconds plus (--debug-slow-factor - 1) x the time since its previous pause; no other rank pauses"""
    debug_slow_seconds: float = 0.0
    """the slow rank's fixed pause, seconds per update (an IMPALA actor: per unroll)"""
    debug_slow_factor: float = 1.0
    """F: the slow rank runs as a device F times slower (its pause adds F - 1 times the time its work took)"""
    debug_lockstep_age: Optional[int] = None
    """diagnosis: the agents step in lockstep (each blocks for its peers' messages of every update) and
    mix the messages of exactly this many updates earlier (0: synchronous gossip)"""

    # filled in at runtime (not flags: --help lists none of them, and the parser refuses them)
    world_size: tyro.conf.Suppress[int] = 0
    """number of MPI ranks"""
    total_envs: tyro.conf.Suppress[int] = 0
    """simulators over all ranks"""
    batch_size: tyro.conf.Suppress[int] = 0
    """samples per update over all ranks (num_steps x total_envs); each agent learns from its share"""
    num_updates: tyro.conf.Suppress[int] = 0
    """updates of each agent"""
    start_step: tyro.conf.Suppress[int] = 0
    """global step this run starts from: its --resume checkpoint's (this agent's own steps), else 0"""
    start_seconds: tyro.conf.Suppress[float] = 0.0
    """seconds of training before this run: its --resume checkpoint's (what --max-seconds counts on from)"""


ALGO = "gala_a2c"


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
# A2C targets and loss (shared by the A2C-family scripts)
# ---------------------------------------------------------------------------------------------
def a2c_targets(rewards, terminations, truncations, values, next_value, prev_done, gamma):
    """n-step bootstrapped returns and the mask of transitions that carry a learning signal.

    Tensors are [T, N]: rewards[t], terminations[t], truncations[t] come from the step taken from
    obs[t]; values[t] = V(obs[t]); next_value = V(obs[T]); prev_done[n] says whether the step
    before obs[0] ended an episode. envpool resets on the step after a done, ignoring the action:
    that transition is invalid. A termination stops the return; a truncation bootstraps from the
    value of the episode's last observation, obs[t+1] (next-step autoreset keeps it there).
    """
    dones = torch.maximum(terminations, truncations)
    valid = 1.0 - torch.cat([prev_done[None], dones[:-1]])
    next_values = torch.cat([values[1:], next_value[None]])
    bootstrap_truncated = truncations * (1.0 - terminations) * next_values
    returns = torch.zeros_like(rewards)
    ret = next_value
    for t in reversed(range(rewards.shape[0])):
        ret = rewards[t] + gamma * ((1.0 - dones[t]) * ret + bootstrap_truncated[t])
        returns[t] = ret
    return returns, valid


def a2c_loss_sums(agent, obs, actions, returns, valid):
    """Policy, value and entropy terms *summed* over valid samples (ranks add sums exactly)."""
    logits, values = agent(obs)
    dist = Categorical(logits=logits)
    advantages = (returns - values).detach()
    policy = -(valid * advantages * dist.log_prob(actions)).sum()
    value = (valid * (returns - values) ** 2).sum()
    entropy = (valid * dist.entropy()).sum()
    return policy, value, entropy


# ---------------------------------------------------------------------------------------------
# The distinctive part: asynchronous gossip of parameters (Algorithm 1 of the GALA paper)
# ---------------------------------------------------------------------------------------------
LOSSES = ("losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/grad_norm")
"""what a2c_update returns, on the device (copied to the host at log points): the mean losses over the valid
samples and the gradient norm before clipping"""


def learning_rate(args, update: int) -> float:
    """The learning rate of update UPDATE (counted from 0): the base rate times --lr-warmup-updates' linear rise
    times --anneal-lr's linear fall to 0 at the last update."""
    lr = args.learning_rate
    if args.lr_warmup_updates:
        lr *= min(1.0, (update + 1) / args.lr_warmup_updates)
    if args.anneal_lr:
        lr *= 1.0 - update / args.num_updates
    return lr


def a2c_update(agent, optimizer, obs, actions, returns, valid, args):
    """One local A2C step: the mean loss over this agent's valid samples, no communication (and no host sync)."""
    optimizer.zero_grad()
    policy, value, entropy = a2c_loss_sums(agent, obs, actions, returns, valid)
    count = valid.sum().clamp(min=1.0)
    ((policy + args.vf_coef * value - args.ent_coef * entropy) / count).backward()
    grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    return torch.cat([torch.stack([policy, value, entropy]).detach() / count, grad_norm[None]])


def exponential_offsets(world_size: int) -> list[int]:
    return [2**j for j in range(world_size.bit_length()) if 2**j < world_size]


def gossip_peers(rank: int, world_size: int, step: int, graph: str, num_peers: int) -> tuple[list[int], list[int]]:
    """(out_peers, in_peers) of `rank` at update `step`: it sends to rank + o and hears from rank - o
    for each offset o (ring: 1..k; exponential: k consecutive powers of two, rotating with step)."""
    if world_size == 1:
        return [], []
    if graph == "ring":
        offsets = list(range(1, num_peers + 1))
    elif graph == "exponential":
        powers = exponential_offsets(world_size)
        offsets = [powers[(step + j) % len(powers)] for j in range(num_peers)]
    else:
        raise ValueError(f"unknown gossip graph {graph!r}")
    return [(rank + o) % world_size for o in offsets], [(rank - o) % world_size for o in offsets]


TAG_PARAMS, TAG_DONE, TAG_READ = 1, 2, 3


class Gossip:
    """Parameter gossip between agents over MPI point-to-point; a sender never waits, a receiver only
    after `sync_freq` updates in a row without a mix (never, if None).

    One message slot per (sender, receiver) pair, as in the official code's buffers: a sender writes
    a new message for a peer only once the peer has read (mixed) the previous one, else it skips that
    peer this update. The receiver keeps one receive posted per possible in-peer; after mixing a
    message it posts the receive again and sends the sender a one-integer "read" note (TAG_READ). The
    sender writes and sends (Issend) only after that note, so a message always holds the sender's
    parameters of after the receiver's previous read, as the official code's write-after-read does.
    (Without the note, a completed Issend only says the message reached the receive buffer: the sender
    would queue its next message, taken then, before the peer mixed the previous, and the peer would
    mix parameters an update older for as long as it stays that far behind.) A send buffer is never
    written while in flight, and no message is ever dropped or overwritten. An agent that blocks (with
    `sync_freq`) pays, while it waits, the messages it skipped: one per skipped send, each written as soon
    as that peer's note comes, so that blocked agents never wait for each other's skipped messages.
    `flat` is the parameter vector itself (the model's parameters are views into it): mixing is in
    place. On a GPU the parameters pass through pinned host buffers (no CUDA-aware MPI assumed): an
    update copies them from the device once if it sends, not at all if it skips every send.

    A message is the sender's parameters x_j after its local step. With u the agent's own parameters
    after its local step and m messages arrived (k when all came), the mix is the paper's rule (the
    official code's): theta <- (u + sum x_j) / (m + 1).

    `lockstep_age` a (a debug mode, --debug-lockstep-age): every agent blocks at every update for its
    in-peers' messages of that update (and never skips a send), so the agents step together; it mixes
    the messages of `a` updates earlier (a = 0: synchronous gossip). The age of a message is then
    exactly a, without the timing jitter and the drift of update counts of real asynchrony.

    finish() ends cleanly: it tells every out-peer how many messages it sent (TAG_DONE), reads until
    every in-peer's count is reached (discarding the messages, each with its read note), cancels the
    receives left posted and completes its own sends once each has its read note.
    """

    def __init__(self, comm, flat: torch.Tensor, graph: str, num_peers: int, sync_freq: Optional[int],
                 lockstep_age: Optional[int] = None):
        self.comm, self.flat, self.graph, self.k, self.sync_freq = comm, flat, graph, num_peers, sync_freq
        self.lockstep_age = lockstep_age
        self.rank, self.world = comm.Get_rank(), comm.Get_size()
        period = len(exponential_offsets(self.world)) if graph == "exponential" and self.world > 1 else 1
        outs, ins = set(), set()
        for t in range(period):
            o, i = gossip_peers(self.rank, self.world, t, graph, num_peers)
            outs.update(o)
            ins.update(i)
        numel = flat.numel()
        self.numel = numel
        size = numel + 1  # a message ends with the sender's update count (float32: exact up to 2^24 updates)
        self.send_t = {p: torch.empty(size, pin_memory=flat.device.type == "cuda") for p in outs}  # pinned on a GPU
        self.send_buf = {p: t.numpy() for p, t in self.send_t.items()}
        self.send_req = {p: MPI.REQUEST_NULL for p in outs}
        self.note_in, self.note_out = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)  # contents unused
        self.read_req = {p: MPI.REQUEST_NULL for p in outs}  # the peer's note that it read my last message
        self.note_req = {p: MPI.REQUEST_NULL for p in ins}  # my note to an in-peer that I read its message
        self.recv_buf = {p: np.empty(size, dtype=np.float32) for p in ins}
        self.recv_req = {p: comm.Irecv(self.recv_buf[p], source=p, tag=TAG_PARAMS) for p in ins}
        self.arrived = dict.fromkeys(ins, False)
        self.taken: list[int] = []  # in-peers whose message this exchange read
        self.owed = dict.fromkeys(outs, 0)  # messages skipped per out-peer, paid only while blocked (sync_freq)
        self.done_buf = {p: np.zeros(1, dtype=np.int64) for p in ins}
        self.done_req = {p: comm.Irecv(self.done_buf[p], source=p, tag=TAG_DONE) for p in ins}
        self.sent, self.received = dict.fromkeys(outs, 0), dict.fromkeys(ins, 0)
        self.expected: dict[int, Optional[int]] = dict.fromkeys(ins, None)
        self.skipped, self.mixes, self.updates, self.since_mix, self.longest_without_mix = 0, 0, 0, 0, 0
        self.lockstep: deque = deque(maxlen=(lockstep_age or 0) + 1)  # lockstep: the messages of recent updates
        # Per mixed message, its age: my update count minus the sender's when it wrote (1 = written
        # during my previous update's time). The recent ones for logging, and a histogram of all.
        self.recent_ages: deque = deque(maxlen=1000)
        self.age_counts: dict[int, int] = {}

    def progress(self) -> None:
        """Let MPI move messages while the agent acts: a 3.5 MB message goes by rendezvous, which only
        advances inside MPI calls; testing once per env step instead of once per update lets it
        arrive within an update (measured: mix rate 0.5 -> ~1 with two agents in lockstep)."""
        for p, req in self.recv_req.items():
            if not self.arrived[p] and req.Test():
                self.arrived[p] = True
        for req in [*self.send_req.values(), *self.read_req.values()]:
            req.Test()

    def _poll_done(self) -> None:
        for p, req in self.done_req.items():
            if self.expected[p] is None and req.Test():
                self.expected[p] = int(self.done_buf[p][0])

    def _finished(self, p: int) -> bool:
        """In-peer p has stopped and everything it sent has been read."""
        return self.expected[p] is not None and self.received[p] == self.expected[p]

    def _wait_for_in_peers(self, in_peers: list[int]) -> None:
        """Block (inside MPI) until every current in-peer's message has arrived or that peer finished. While
        blocked, pay the messages owed (one per skipped send, to each out-peer skipped) as the peers' read notes
        come: a peer may itself be blocked waiting for one (two agents that each skipped the other would
        otherwise wait for each other for ever)."""
        while True:
            for p, n in self.owed.items():
                if n and self.read_req[p].Test():  # read (the note may have come before this wait): write now
                    self._write(p)
                    self.owed[p] -= 1
                    self.skipped -= 1  # sent after all, late
            live = [p for p in in_peers if not self.arrived[p] and not self._finished(p)]
            if not live:
                return
            done = [self.done_req[p] for p in live if self.expected[p] is None]
            notes = [self.read_req[p] for p, n in self.owed.items() if n]
            index = MPI.Request.Waitany([self.recv_req[p] for p in live] + done + notes)
            if index < len(live):
                self.arrived[live[index]] = True
            self._poll_done()

    def _write(self, p: int, written: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Write and send the parameters to out-peer p, whose read note for the previous message has come;
        WRITTEN: the parameters as already copied for another peer this update (one copy from the device)."""
        self.send_req[p].Wait()  # complete already: the peer has read it
        self.send_t[p][: self.numel].copy_(self.flat if written is None else written)
        self.send_buf[p][-1] = self.updates
        self.send_req[p] = self.comm.Issend(self.send_buf[p], dest=p, tag=TAG_PARAMS)
        self.read_req[p] = self.comm.Irecv(self.note_in, source=p, tag=TAG_READ)
        self.sent[p] += 1
        return self.send_t[p][: self.numel]

    def exchange(self, update: int) -> int:
        """Send to this update's out-peers, mix what has arrived; returns the number of messages mixed."""
        out_peers, in_peers = gossip_peers(self.rank, self.world, update, self.graph, self.k)
        self.updates += 1
        written = None  # the parameters as this update's first message holds them (copied from the device once)
        self.progress()  # the peers' read notes that MPI has not matched yet
        for p in out_peers:
            if self.lockstep_age is not None:
                self.read_req[p].Wait()  # in lockstep a send is never skipped (the peer reads it this update)
            elif not self.read_req[p].Test():  # the peer has not read our previous message: skip, never wait
                self.skipped += 1
                self.owed[p] += 1
                continue
            written = self._write(p, written)

        self.progress()
        self._poll_done()
        if self.lockstep_age is not None:  # every in-peer's message of this update; mix those of `a` updates ago
            self._wait_for_in_peers(in_peers)
            self.lockstep.append([self._take(p) for p in in_peers if self.arrived[p]])
            messages = self.lockstep[0] if len(self.lockstep) == self.lockstep.maxlen else []
        else:
            if self.sync_freq is None:  # asynchronous: whatever has arrived, from any in-peer
                arrived = [p for p, got in self.arrived.items() if got]
            else:  # the official rule: all of this update's in-peers or none; block after sync_freq misses
                ready = all(self.arrived[p] or self._finished(p) for p in in_peers)
                if not ready and self.since_mix >= self.sync_freq:
                    self._wait_for_in_peers(in_peers)
                    ready = True
                arrived = [p for p in in_peers if self.arrived[p]] if ready else []
            messages = [self._take(p, copy=False) for p in arrived]
        self._mix(messages)
        for p in self.taken:  # their messages are mixed (or copied): post the next receives, say they were read
            self.recv_req[p] = self.comm.Irecv(self.recv_buf[p], source=p, tag=TAG_PARAMS)
            self._note_read(p)
        self.taken.clear()
        if not messages:
            self.since_mix += 1
            self.longest_without_mix = max(self.longest_without_mix, self.since_mix)
            return 0
        self.mixes += 1
        self.since_mix = 0
        return len(messages)

    def _take(self, p: int, copy: bool = True) -> np.ndarray:
        """In-peer p's arrived message, read: its receive is posted again after the mix (a copy is kept
        in lockstep, where the message is mixed updates later)."""
        self.received[p] += 1
        self.arrived[p] = False
        self.recv_req[p] = MPI.REQUEST_NULL
        self.taken.append(p)
        return self.recv_buf[p].copy() if copy else self.recv_buf[p]

    def _note_read(self, p: int) -> None:
        """Tell in-peer p that its message is read: it may write the next one."""
        self.note_req[p].Wait()  # my previous note to p, long delivered (p wrote again only after it)
        self.note_req[p] = self.comm.Isend(self.note_out, dest=p, tag=TAG_READ)

    def _mix(self, messages: list[np.ndarray]) -> None:
        """The paper's rule (class docstring): uniform over the agent and the messages; records their ages."""
        if not messages:
            return
        total = np.zeros(self.numel, dtype=np.float32)
        for msg in messages:
            age = self.updates - int(msg[-1])
            self.recent_ages.append(age)
            self.age_counts[age] = self.age_counts.get(age, 0) + 1
            total += msg[: self.numel]
        share = 1.0 / (len(messages) + 1)
        with torch.no_grad():
            self.flat.mul_(share).add_(torch.from_numpy(total).to(self.flat.device), alpha=share)

    def counts(self) -> dict:
        return {"sent": sum(self.sent.values()), "received": sum(self.received.values()), "mixes": self.mixes,
                "skipped": self.skipped, "longest_without_mix": self.longest_without_mix}

    def scalars(self) -> dict:
        """This agent's gossip statistics for the log (the recent message ages start again)."""
        scalars = {"gossip/mix_rate": self.mixes / self.updates, "gossip/sent": sum(self.sent.values()),
                   "gossip/skipped_sends": self.skipped, "gossip/staleness": self.since_mix}
        if self.recent_ages:
            scalars["gossip/message_age"] = float(np.mean(self.recent_ages))
            self.recent_ages.clear()
        return scalars

    def finish(self, poll_seconds: float = 1e-3) -> None:
        counts = {p: np.array([n], dtype=np.int64) for p, n in self.sent.items()}
        done_sends = [self.comm.Isend(counts[p], dest=p, tag=TAG_DONE) for p in counts]
        while True:
            self._poll_done()
            for p in self.recv_req:
                req = self.recv_req[p]
                if self.arrived[p] or (req != MPI.REQUEST_NULL and req.Test()):  # read; training is over
                    self._take(p, copy=False)
                    self.taken.clear()  # posted again below while the peer may still send
                    self._note_read(p)  # the peer waits for the note of every message it sent
                if self.recv_req[p] == MPI.REQUEST_NULL and not self._finished(p):
                    self.recv_req[p] = self.comm.Irecv(self.recv_buf[p], source=p, tag=TAG_PARAMS)
                elif self.recv_req[p] != MPI.REQUEST_NULL and self._finished(p):
                    self.recv_req[p].Cancel()
                    self.recv_req[p].Wait()
                    self.recv_req[p] = MPI.REQUEST_NULL
            sends_done = all(req.Test() for req in [*self.send_req.values(), *self.read_req.values()])
            if sends_done and all(self._finished(p) for p in self.recv_req):
                break
            time.sleep(poll_seconds)
        MPI.Request.Waitall(done_sends + list(self.note_req.values()))
        self.comm.Free()


class GossipMetrics:
    """Every `every` updates, a non-blocking Iallreduce (on its own communicator, so that it adds no
    barrier) of [theta_i, g_i / |g_i|, |theta_i|^2] in float64 gives, when it completes,
    disagreement = sqrt(mean_i |theta_i - mean theta|^2), the same relative to |mean theta|, and the
    mean pairwise cosine of the agents' gradients. Agents may stop at different updates: finish()
    tops up the missing calls."""

    def __init__(self, comm, every: int):
        self.comm, self.every, self.world = comm, every, comm.Get_size()
        self.pending: deque = deque()
        self.started = 0

    def maybe_start(self, update: int, agent: nn.Module) -> None:
        if self.every and update % self.every == 0:
            self.start(update, agent)

    def start(self, update: int, agent: nn.Module) -> None:
        theta = nn.utils.parameters_to_vector(agent.parameters()).detach().double().cpu().numpy()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in agent.parameters()]
        grad = torch.cat([g.reshape(-1) for g in grads]).double().cpu().numpy()
        send = np.concatenate([theta, grad / max(np.linalg.norm(grad), 1e-12), [theta @ theta]])
        recv = np.empty_like(send)
        self.pending.append((update, self.comm.Iallreduce(send, recv, op=MPI.SUM), recv, theta.size))
        self.started += 1

    def poll(self, wait: bool = False) -> list[tuple[int, float, float, Optional[float]]]:
        """(update, disagreement, relative disagreement, grad cosine) of the completed measurements."""
        done = []
        while self.pending and (wait or self.pending[0][1].Test()):
            update, req, recv, n = self.pending.popleft()
            req.Wait()
            mean = recv[:n] / self.world
            disagreement = np.sqrt(max(recv[-1] / self.world - mean @ mean, 0.0))
            s = recv[n : 2 * n]
            cosine = (s @ s - self.world) / (self.world * (self.world - 1)) if self.world > 1 else None
            done.append((update, float(disagreement), float(disagreement / np.linalg.norm(mean)), cosine))
        return done

    def finish(self, main_comm, agent: nn.Module) -> list[tuple[int, float, float, Optional[float]]]:
        most = main_comm.allreduce(self.started, op=MPI.MAX)
        while self.started < most:
            self.start(-1, agent)
        done = [m for m in self.poll(wait=True) if m[0] >= 0]
        self.comm.Free()
        return done


def flatten_parameters(agent: nn.Module) -> torch.Tensor:
    """Make the parameters views into one flat tensor (so that gossip mixes them in place)."""
    flat = nn.utils.parameters_to_vector(agent.parameters()).detach().clone()
    offset = 0
    for p in agent.parameters():
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat


def broadcast_parameters(comm, agent) -> None:
    """Every agent starts from rank 0's initial parameters (the official code seeds them alike)."""
    flat = nn.utils.parameters_to_vector(agent.parameters()).detach().cpu().numpy()
    comm.Bcast(flat, root=0)
    nn.utils.vector_to_parameters(torch.from_numpy(flat).to(next(agent.parameters()).device), agent.parameters())


def average_parameters(comm, agent) -> torch.Tensor:
    """The exact average of all agents' parameters (one Allreduce): the model to evaluate."""
    flat = nn.utils.parameters_to_vector(agent.parameters()).detach().double().cpu().numpy()
    comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
    return torch.from_numpy(flat / comm.Get_size()).float()


TAG_EPISODES = 3


class EpisodeMail:
    """Every agent's finished games and its update count reach rank 0 without blocking anyone: at its log points
    an agent sends (its updates, its games stamped with its own steps) with a non-blocking isend, and rank 0
    reads whatever has arrived. So rank 0 knows every agent's updates as of its last message, at most one log
    interval old, and logs the global step as the agents' total: its own steps plus the others' last known
    (`global_step`); a game of agent r is stamped with r's own steps at its end plus the others' last known.
    finish() delivers the rest, after which rank 0's total is exact."""

    def __init__(self, comm, update: int, steps_per_update: int):
        self.comm, self.rank, self.steps_per_update = comm, comm.Get_rank(), steps_per_update
        self.updates = comm.allgather(update)  # agents resumed from a signal may start at different updates
        self.sends, self.sent, self.received = [], 0, [0] * comm.Get_size()

    def global_step(self, update: int) -> int:
        """The agents' total steps as far as this rank knows, its own at UPDATE (rank 0 knows the others' from
        their messages; another rank, only where they started)."""
        self.updates[self.rank] = update
        return sum(self.updates) * self.steps_per_update

    def collect(self, update: int, episodes: list) -> list:
        """Rank 0: its own games and those of every message that has arrived, as (global step at the game's end,
        return, length); other ranks send their update count and their games (own steps, return, length)."""
        self.updates[self.rank] = update
        if self.rank != 0:
            self.sends.append(self.comm.isend((update, episodes), dest=0, tag=TAG_EPISODES))
            self.sent += 1
            self.sends = [r for r in self.sends if not r.Test()]
            return []
        found = []
        while self.comm.iprobe(source=MPI.ANY_SOURCE, tag=TAG_EPISODES):
            found += self.receive()
        return found + [(self.stamp(0, own), ret, length) for own, ret, length in episodes]

    def receive(self) -> list:
        """Rank 0: the next message (from any agent): its sender's updates, its games stamped."""
        status = MPI.Status()
        update, games = self.comm.recv(source=MPI.ANY_SOURCE, tag=TAG_EPISODES, status=status)
        source = status.Get_source()
        self.updates[source] = update
        self.received[source] += 1
        return [(self.stamp(source, own), ret, length) for own, ret, length in games]

    def stamp(self, source: int, own_steps: int) -> int:
        return own_steps + (sum(self.updates) - self.updates[source]) * self.steps_per_update

    def finish(self, update: int, episodes: list) -> list:
        """Collective: every message sent is read; rank 0 returns the games not returned before."""
        found = self.collect(update, episodes)
        counts = self.comm.gather(self.sent, root=0)
        while self.rank == 0 and sum(self.received) < sum(counts):
            found += self.receive()
        MPI.Request.Waitall(self.sends)
        return found


def log_measurements(writer, measured: list, batch_size: int) -> None:
    """Rank 0: GossipMetrics' completed measurements, at the global step of their update."""
    for update_at, disagreement, relative, cosine in measured:
        writer.add_scalar("gossip/disagreement", disagreement, update_at * batch_size)
        writer.add_scalar("gossip/disagreement_relative", relative, update_at * batch_size)
        if cosine is not None:
            writer.add_scalar("gossip/grad_cosine", cosine, update_at * batch_size)


def describe_gossip(args: Args, world_size: int) -> str:
    if world_size == 1:
        return "one agent: no gossip, this is plain A2C"
    blocking = f"sync-freq {args.sync_freq}" if args.sync_freq is not None else "never blocking"
    if args.debug_lockstep_age is not None:
        blocking = f"lockstep, messages {args.debug_lockstep_age} update(s) old"
    return f"{args.gossip_graph} graph, {args.num_peers} peer(s), {blocking}"


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
    if args.num_steps < 1:
        raise ConfigError(f"--num-steps must be at least 1, got {args.num_steps}")
    if world_size > 1:
        most = world_size - 1 if args.gossip_graph == "ring" else len(exponential_offsets(world_size))
        if not 1 <= args.num_peers <= most:
            raise ConfigError(
                f"--num-peers must be between 1 and {most} for the {args.gossip_graph} graph of {world_size} "
                f"agents, got {args.num_peers}"
            )
    if (args.sync_freq is not None and args.sync_freq < 0) or args.disagreement_every < 0:
        raise ConfigError("--sync-freq and --disagreement-every must be 0 or more")
    if args.lr_warmup_updates < 0:
        raise ConfigError(f"--lr-warmup-updates must be 0 or more, got {args.lr_warmup_updates}")
    if args.debug_lockstep_age is not None and (args.debug_lockstep_age < 0 or args.sync_freq is not None):
        raise ConfigError("--debug-lockstep-age must be 0 or more, without --sync-freq (lockstep always blocks)")
    args.world_size = world_size
    args.total_envs = world_size * args.num_envs
    args.batch_size = args.num_steps * args.total_envs
    if args.learning_rate is None:
        args.learning_rate = 7e-4 * float(np.sqrt(args.total_envs / 16))
    if args.eval_checkpoint is not None:
        args.eval_episodes = args.eval_episodes or 10
        return
    args.num_updates = args.total_timesteps // args.batch_size
    if args.num_updates < 1:
        raise ConfigError(
            f"--total-timesteps {args.total_timesteps} is below one update "
            f"({args.num_steps} steps x {args.num_envs} envs x {world_size} ranks = {args.batch_size})"
        )


def load_checkpoint(path: str, args: Args, rank: int, file: Optional[str] = None) -> dict:
    """A GALA checkpoint is a directory: agent{r}.pt for each agent, average.pt for the average.
    Messages name the agent file as agent<rank>.pt so that ranks with the same fault say the same
    thing once (fail_together adds which ranks)."""
    if not Path(path).is_dir():
        raise ConfigError(f"checkpoint directory {path!r} does not exist")
    return read_checkpoint(Path(path) / (file or f"agent{rank}.pt"), args, str(Path(path) / (file or "agent<rank>.pt")))


def start_checkpoint(args: Args, world_size: int, rank: int) -> Optional[dict]:
    """The average to evaluate (--eval-checkpoint) or this agent's file to resume (--resume, written by
    this world size and --num-envs), or None."""
    if args.eval_checkpoint is not None:
        return load_checkpoint(args.eval_checkpoint, args, rank, file="average.pt")
    if args.resume is None:
        return None
    ckpt = load_checkpoint(args.resume, args, rank)
    if (ckpt["world_size"], ckpt["num_envs"]) != (world_size, args.num_envs):
        raise ConfigError(
            f"checkpoint {args.resume!r} was written by {ckpt['world_size']} ranks x {ckpt['num_envs']} envs, "
            f"this run has {world_size} x {args.num_envs}"
        )
    return ckpt


def resume(ckpt: dict, optimizer, device: torch.device, rank: int, args: Args) -> int:
    """Restores the optimizer and this agent's RNG from its --resume file; returns its update count."""
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"], device)
    print(f"[agent {rank}] resumed from {args.resume} at update {ckpt['update']}", flush=True)
    return ckpt["update"]


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
# Training: set-up, the loop, teardown
# ---------------------------------------------------------------------------------------------
def train(args: Args) -> dict:
    comm = MPI.COMM_WORLD
    rank, world_size = comm.Get_rank(), comm.Get_size()
    ckpt = checked_input(comm, args)
    device, torch_threads, env_threads, run_name, run_dir = set_up(comm, args)
    if rank == 0:
        print(f"{ALGO}: {world_size} rank(s) x {args.num_envs} envs on {device} ({torch_threads} torch / "
              f"{env_threads} env threads per rank), lr {args.learning_rate:.3g}, {describe_gossip(args, world_size)}",
              flush=True)
    agent = Agent(envpool.make_spec(args.env_id).action_space.n).to(device)
    if ckpt is not None:
        agent.load_state_dict(ckpt["model"])
    if args.resume is None:  # a resumed agent keeps its own parameters
        broadcast_parameters(comm, agent)
    if args.eval_checkpoint is not None:  # evaluation only
        results = evaluate_all_ranks(comm, agent, args, ckpt["global_step"], env_threads, device)
        if rank == 0:
            report_eval(results, args, run_dir)
        return {"eval": results}

    flat = flatten_parameters(agent)
    optimizer = torch.optim.RMSprop(
        agent.parameters(), lr=args.learning_rate, alpha=args.rmsprop_alpha, eps=args.rmsprop_eps
    )
    start_update = 0 if ckpt is None else resume(ckpt, optimizer, device, rank, args)
    gossip = Gossip(comm.Dup(), flat, args.gossip_graph, args.num_peers, args.sync_freq, args.debug_lockstep_age)
    T, N = args.num_steps, args.num_envs
    metrics, mail = GossipMetrics(comm.Dup(), args.disagreement_every), EpisodeMail(comm, start_update, T * N)
    writer = open_writer(args, run_name, run_dir) if rank == 0 else None
    signalled, slow = StopSignal(comm, budget(args)), SlowDown(comm, args)
    progress = Progress(mail.global_step(start_update), args.num_updates * args.batch_size, args.print_every, rank == 0)
    ckpt_dir = run_dir / "checkpoint"

    def checkpoint(update: int) -> None:
        """Each agent writes its own file, without communication."""
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ckpt_dir / f"agent{rank}.pt", {
            "algorithm": ALGO, "env_id": args.env_id, "world_size": world_size, "num_envs": args.num_envs,
            "rank": rank, "update": update, "global_step": update * args.batch_size, "model": agent.state_dict(),
            "seconds": args.start_seconds + time.time() - progress.start_time,
            "optimizer": optimizer.state_dict(), "rng": rng_state(device), "args": asdict(args),
        })

    # Rollout storage on the device
    obs = torch.zeros((T, N, 4, 84, 84), dtype=torch.uint8, device=device)
    actions = torch.zeros((T, N), dtype=torch.long, device=device)
    values = torch.zeros((T, N), device=device)
    rewards, terminations, truncations = (np.zeros((T, N), dtype=np.float32) for _ in range(3))

    env_seed = int(np.random.SeedSequence([args.seed, rank, start_update]).generate_state(1)[0] >> 1)
    envs = make_env(args.env_id, N, env_seed, env_threads, train=True)
    next_obs = torch.from_numpy(envs.reset()[0]).to(device)
    next_done = np.zeros(N, dtype=bool)
    stats, episodes = EpisodeStats(N), []

    update, stop = start_update, False
    global_step = mail.global_step(update)
    while update < args.num_updates and not stop:
        optimizer.param_groups[0]["lr"] = learning_rate(args, update)
        prev_done = torch.from_numpy(next_done.astype(np.float32)).to(device)
        for step in range(T):
            obs[step] = next_obs
            with torch.no_grad():
                logits, value = agent(next_obs)
            action = Categorical(logits=logits).sample()
            actions[step], values[step] = action, value
            valid = ~next_done
            raw_obs, rewards[step], terminated, truncated, info = envs.step(action.cpu().numpy())
            terminations[step], truncations[step] = terminated, truncated
            next_done = terminated | truncated
            next_obs = torch.from_numpy(raw_obs).to(device)
            for ret, length in stats.update(info, truncated, valid):
                episodes.append((update * T * N + (step + 1) * N, ret, length))  # this agent's own steps
            gossip.progress()
        with torch.no_grad():
            next_value = agent(next_obs)[1]
        rollout = (torch.from_numpy(x).to(device) for x in (rewards, terminations, truncations))
        returns, valid = a2c_targets(*rollout, values, next_value, prev_done, args.gamma)

        slow()
        means = a2c_update(
            agent, optimizer,
            obs.reshape(T * N, 4, 84, 84), actions.reshape(-1), returns.reshape(-1), valid.reshape(-1),
            args,
        )
        update += 1
        global_step = mail.global_step(update)
        gossip.exchange(update)
        stop = bool(signalled)
        metrics.maybe_start(update, agent)
        measured = metrics.poll()

        if update % args.log_every == 0 or update == args.num_updates or stop:
            arrived = mail.collect(update, episodes)
            episodes = []
            if rank == 0:
                log_episodes(writer, arrived, progress.recent_returns)
                log_scalars(writer, global_step, {
                    "charts/SPS": progress.sps(global_step), "charts/learning_rate": optimizer.param_groups[0]["lr"],
                    **dict(zip(LOSSES, means.tolist())), **gossip.scalars(),
                    **agent.dead_units(obs.reshape(T * N, 4, 84, 84)),
                })
        if rank == 0:
            log_measurements(writer, measured, args.batch_size)
        if checkpoint_due(args, update * args.batch_size, args.batch_size):  # every agent at the same updates
            checkpoint(update)
        progress.update(global_step, last=update == args.num_updates)

    # Teardown: every message read (gossip, measurements, episodes), agreement on whether the run was
    # stopped (agents see a signal at different updates, some may have finished), the exact average of
    # all agents, the final checkpoint (every agent + the average), evaluation of the average.
    end_time = time.time()
    if rank == 0 and world_size > 1 and update == args.num_updates:  # its logged steps lack the others' last ones
        print(f"[agent 0] all {update} updates done; the others finish theirs", flush=True)
    envs.close()
    gossip.finish()
    out_of_time = signalled.finish()
    stop = comm.allreduce(stop, op=MPI.LOR)
    stopped = stop and not out_of_time  # by a signal: no evaluation, the run is to be continued
    final_measurements, arrived = metrics.finish(comm, agent), mail.finish(update, episodes)
    if rank == 0:
        log_episodes(writer, arrived, progress.recent_returns)
        log_measurements(writer, final_measurements, args.batch_size)
    average = average_parameters(comm, agent)
    total_steps = comm.allreduce(update, op=MPI.SUM) * args.num_steps * args.num_envs
    if args.save_model or stop:
        checkpoint(update)
        if rank == 0:
            averaged = Agent(agent.actor.out_features)
            nn.utils.vector_to_parameters(average, averaged.parameters())
            save_checkpoint(ckpt_dir / "average.pt", {
                "algorithm": ALGO, "env_id": args.env_id, "world_size": world_size, "num_envs": args.num_envs,
                "global_step": total_steps, "model": averaged.state_dict(), "args": asdict(args),
            })
            print(f"{'stopped by signal at ' if stopped else ''}global_step {total_steps}: checkpoint {ckpt_dir} "
                  "(every agent + their average)", flush=True)
    last_end = comm.allreduce(end_time, op=MPI.MAX)  # the run ends with its last agent
    summary = progress.result(total_steps, last_end, stopped, out_of_time)
    if rank == 0 and total_steps != global_step:  # the others' last updates, unknown at rank 0's last log point
        log_scalars(writer, total_steps, {"charts/SPS": summary["sps"]})
    if args.eval_episodes and not stopped:
        nn.utils.vector_to_parameters(average.to(device), agent.parameters())  # evaluate the average
        summary["eval"] = evaluate_all_ranks(comm, agent, args, update, env_threads, device)
        if rank == 0:
            report_eval(summary["eval"], args, run_dir, writer, total_steps)
    ages = {str(age): n for age, n in sorted(gossip.age_counts.items())}
    summary = write_summary(comm, run_dir, summary, {
        "updates": update - start_update, "seconds": end_time - progress.start_time, "slept": slow.slept,
        **gossip.counts(), "ages": ages,
    }, device)
    if rank == 0:
        for r in summary["ranks"]:  # printed by one process, so that agents' lines never run together
            print(f"[agent {r['rank']}] {r['updates']} updates in {r['seconds']:.1f} s; gossip: "
                  + ", ".join(f"{k} {r[k]}" for k in gossip.counts()) + f"; message ages {r['ages']}", flush=True)
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
