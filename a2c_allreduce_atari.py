"""Synchronous A2C on Atari whose workers average gradients exactly with one MPI Allreduce.

Every rank (worker) steps `num_envs` envpool simulators for `num_steps`, computes the A2C gradient
of its shard, and one Allreduce over a flat buffer sums the gradients (and the count of valid
samples) across ranks; every rank then takes the same RMSprop step. So `mpirun -np 4` with 16
simulators each is exactly one A2C with 64 (Stooke & Abbeel 2018, "Accelerated Methods for Deep
RL"), the synchronous baseline of GALA (Assran et al., NeurIPS 2019).

    mpirun -np 4 python a2c_allreduce_atari.py --env-id Pong-v5

Simplifications and choices, stated so nobody has to find them:
- The official GALA network: the Nature CNN with 32 filters in its third conv (0.87M parameters).
- envpool's DeepMind settings, kept rather than matched to the official code's baselines wrappers:
  after a life loss the 4-frame stack carries over (the official code zeros it at every done),
  games are cut at envpool's 27,000 steps (gym's limit, ~100k, in the official code), and a cut
  bootstraps from the value of its last observation (the official code treats every done as final).
- envpool resets on the step *after* an episode (or a life, under episodic life) ends and ignores
  that step's action: that transition is masked out of the loss. A time-limit truncation
  bootstraps from the value of the episode's last observation; a termination never bootstraps.
- `global_step` counts env.step calls of all simulators, reset steps included.
- The loss is the mean over valid samples of *all* ranks (the Allreduce carries the count).
- `--lr-warmup-updates K` (off by default; not in the paper, the same as GALA-A2C's) raises the learning rate
  linearly over the first K updates, so that a larger rate does not kill units in torch RMSprop's first steps.
- A resumed run restores parameters, optimizer, step count and torch RNG, not the emulator states:
  its simulators start new games.
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
from typing import Annotated, Optional

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
    torch_deterministic: bool = True
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
    """clip of the global gradient norm (applied to the averaged gradient)"""
    rmsprop_alpha: float = 0.99
    """RMSprop smoothing constant"""
    rmsprop_eps: float = 1e-5
    """RMSprop epsilon (torch convention: outside the square root)"""
    log_every: int = 20
    """updates between scalar logs (and the gathering of episode statistics on rank 0)"""
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
    check_sync_every: int = 1000
    """diagnosis: updates between checks that all ranks hold identical parameters (0: never)"""
    debug_clip_per_rank: bool = False
    """diagnosis: each rank clips the mean gradient of its own samples (as a GALA agent does) before the exact
    average, in place of clipping the average (one rung of results/ladder)"""
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
    total_envs: tyro.conf.Suppress[int] = 0
    """simulators over all ranks"""
    batch_size: tyro.conf.Suppress[int] = 0
    """samples per update over all ranks (num_steps x total_envs)"""
    num_updates: tyro.conf.Suppress[int] = 0
    """updates in the whole run"""
    start_step: tyro.conf.Suppress[int] = 0
    """global step this run starts from: its --resume checkpoint's, else 0"""
    start_seconds: tyro.conf.Suppress[float] = 0.0
    """seconds of training before this run: its --resume checkpoint's (what --max-seconds counts on from)"""


ALGO = "a2c_allreduce"


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
# The distinctive part: gradients averaged exactly with one Allreduce
# ---------------------------------------------------------------------------------------------
class AllreduceGradients:
    """Sums the local gradient sums of every rank, with the count of valid samples and a stop flag,
    in one Allreduce over one flat pre-allocated buffer; divides by the global count.

    The parameters' `.grad` are views into that buffer (on the CPU; on a GPU they are views into a
    device buffer copied through a pinned host one), so backward writes straight into it. After
    `__call__` every rank holds the gradient of the mean loss over all ranks' valid samples: one
    process with B samples and R processes with B / R each take the same step. The count and the loss
    sums travel in the same buffer, written on the device: an update copies to the host once, the
    gradient, and back once.
    """

    EXTRA = 5  # valid count, stop flag, policy / value / entropy sums (for logging)

    def __init__(self, comm, params: list[torch.Tensor], device: torch.device):
        self.comm, self.numel = comm, sum(p.numel() for p in params)
        self.host = torch.zeros(self.numel + self.EXTRA, pin_memory=device.type == "cuda")
        self.buf = self.host.numpy()
        self.flat = self.host if device.type == "cpu" else torch.zeros(self.numel + self.EXTRA, device=device)
        offset = 0
        for p in params:  # zero_grad(set_to_none=False) keeps these views; backward adds into them
            p.grad = self.flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()

    def __call__(self, count: torch.Tensor, stop: bool, loss_sums: torch.Tensor) -> tuple[float, bool, torch.Tensor]:
        """COUNT and LOSS_SUMS (policy, value, entropy) are this rank's, on its device; returns (the global
        count, whether any rank asked to stop, the mean losses over all ranks' valid samples, on the device)."""
        n = self.numel
        self.flat[n], self.flat[n + 2 :] = count, loss_sums
        if self.flat.device.type != "cpu":
            self.host.copy_(self.flat)
        self.buf[n + 1] = float(stop)
        self.comm.Allreduce(MPI.IN_PLACE, self.buf, op=MPI.SUM)
        total = max(float(self.buf[n]), 1.0)
        if self.flat.device.type != "cpu":
            self.flat.copy_(self.host)
        self.flat.div_(total)
        return total, self.buf[n + 1] > 0, self.flat[n + 2 :]


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


def a2c_update(agent, optimizer, reduce_grads, obs, actions, returns, valid, args, stop=False):
    """One synchronous A2C step on this rank's shard; returns (mean losses, any rank asked to stop)."""
    optimizer.zero_grad(set_to_none=False)
    policy, value, entropy = a2c_loss_sums(agent, obs, actions, returns, valid)
    (policy + args.vf_coef * value - args.ent_coef * entropy).backward()
    if args.debug_clip_per_rank:  # this rank's gradient sum scaled as clipping its mean would scale it
        local = reduce_grads.flat[: reduce_grads.numel]
        local.mul_((args.max_grad_norm * valid.sum().clamp(min=1.0) / (local.norm() + 1e-6)).clamp(max=1.0))
    _, stop_any, means = reduce_grads(valid.sum(), stop, torch.stack([policy, value, entropy]).detach())
    grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    return torch.cat([means, grad_norm[None]]), stop_any


def broadcast_parameters(comm, agent) -> None:
    """Every rank starts from rank 0's initial parameters."""
    flat = nn.utils.parameters_to_vector(agent.parameters()).detach().cpu().numpy()
    comm.Bcast(flat, root=0)
    nn.utils.vector_to_parameters(torch.from_numpy(flat).to(next(agent.parameters()).device), agent.parameters())


def check_in_sync(comm, agent) -> None:
    flat = nn.utils.parameters_to_vector(agent.parameters()).detach().cpu().numpy()
    ref = flat.copy()
    comm.Bcast(ref, root=0)
    worst = comm.allreduce(float(np.abs(flat - ref).max()), op=MPI.MAX)
    if worst > 0:
        raise RuntimeError(f"ranks' parameters differ from rank 0's by up to {worst:g}: A2C is out of sync")


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
    if args.lr_warmup_updates < 0:
        raise ConfigError(f"--lr-warmup-updates must be 0 or more, got {args.lr_warmup_updates}")
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


def start_checkpoint(args: Args, world_size: int, rank: int) -> Optional[dict]:
    """The checkpoint to evaluate (--eval-checkpoint) or to resume (--resume, written by this world
    size and --num-envs), or None."""
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
    return ckpt


def resume(ckpt: dict, optimizer, device: torch.device, rank: int, args: Args) -> int:
    """Restores the optimizer and this rank's RNG from a --resume checkpoint; returns its update count."""
    optimizer.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"][rank], device)
    if rank == 0:
        print(f"resumed from {args.resume} at global_step {ckpt['global_step']}", flush=True)
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
              f"{env_threads} env threads per rank), lr {args.learning_rate:.3g}", flush=True)
    agent = Agent(envpool.make_spec(args.env_id).action_space.n).to(device)
    if ckpt is not None:
        agent.load_state_dict(ckpt["model"])
    broadcast_parameters(comm, agent)
    if args.eval_checkpoint is not None:  # evaluation only
        results = evaluate_all_ranks(comm, agent, args, ckpt["global_step"], env_threads, device)
        if rank == 0:
            report_eval(results, args, run_dir)
        return {"eval": results}

    optimizer = torch.optim.RMSprop(
        agent.parameters(), lr=args.learning_rate, alpha=args.rmsprop_alpha, eps=args.rmsprop_eps
    )
    reduce_grads = AllreduceGradients(comm, list(agent.parameters()), device)
    start_update = 0 if ckpt is None else resume(ckpt, optimizer, device, rank, args)
    writer = open_writer(args, run_name, run_dir) if rank == 0 else None
    signalled, slow = StopSignal(comm, budget(args)), SlowDown(comm, args)
    progress = Progress(start_update * args.batch_size, args.num_updates * args.batch_size, args.print_every, rank == 0)
    ckpt_path = run_dir / "checkpoint.pt"

    def checkpoint(update: int) -> None:
        """Collective (gathers every rank's RNG); rank 0 writes the one file."""
        rngs = comm.gather(rng_state(device), root=0)
        if rank == 0:
            save_checkpoint(ckpt_path, {
                "algorithm": ALGO, "env_id": args.env_id, "world_size": world_size, "num_envs": args.num_envs,
                "update": update, "global_step": update * args.batch_size, "model": agent.state_dict(),
                "seconds": args.start_seconds + time.time() - progress.start_time,
                "optimizer": optimizer.state_dict(), "rng": rngs, "args": asdict(args),
            })

    # Rollout storage on the device
    T, N = args.num_steps, args.num_envs
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
    global_step = update * args.batch_size
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
                episodes.append((global_step + (step + 1) * N * world_size, ret, length))
        with torch.no_grad():
            next_value = agent(next_obs)[1]
        rollout = (torch.from_numpy(x).to(device) for x in (rewards, terminations, truncations))
        returns, valid = a2c_targets(*rollout, values, next_value, prev_done, args.gamma)

        slow()
        means, stop = a2c_update(
            agent, optimizer, reduce_grads,
            obs.reshape(T * N, 4, 84, 84), actions.reshape(-1), returns.reshape(-1), valid.reshape(-1),
            args, stop=bool(signalled),
        )
        update += 1
        global_step = update * args.batch_size
        if args.check_sync_every and update % args.check_sync_every == 0:
            check_in_sync(comm, agent)

        if update % args.log_every == 0 or update == args.num_updates or stop:
            all_episodes = comm.gather(episodes, root=0)
            episodes = []
            if rank == 0:
                log_episodes(writer, [e for part in all_episodes for e in part], progress.recent_returns)
                log_scalars(writer, global_step, {
                    "charts/SPS": progress.sps(global_step), "charts/learning_rate": optimizer.param_groups[0]["lr"],
                    **dict(zip(LOSSES, means.tolist())), **agent.dead_units(obs.reshape(T * N, 4, 84, 84)),
                })
        if checkpoint_due(args, global_step, args.batch_size):
            checkpoint(update)
        progress.update(global_step, last=update == args.num_updates)

    # Teardown: the final checkpoint (at the end with --save-model, or when stopped), evaluation.
    end_time = time.time()
    envs.close()
    out_of_time = signalled.finish()
    stopped = stop and not out_of_time  # by a signal: no evaluation, the run is to be continued
    if args.save_model or stop:
        checkpoint(update)
        if rank == 0:
            print(f"{'stopped by signal at ' if stopped else ''}global_step {global_step}: checkpoint {ckpt_path}",
                  flush=True)
    summary = progress.result(global_step, end_time, stopped, out_of_time)
    if args.eval_episodes and not stopped:
        summary["eval"] = evaluate_all_ranks(comm, agent, args, update, env_threads, device)
        if rank == 0:
            report_eval(summary["eval"], args, run_dir, writer, global_step)
    mine = {"updates": update - start_update, "seconds": end_time - progress.start_time, "slept": slow.slept}
    summary = write_summary(comm, run_dir, summary, mine, device)
    if rank == 0:
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
