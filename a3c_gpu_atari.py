"""GPU-style A3C on Atari (Stooke & Abbeel 2018): workers update one central copy of the parameters
and RMSprop statistics asynchronously, through MPI one-sided communication.

Every worker rank loops: read the latest central parameters, roll out `num_steps` on its `num_envs`
envpool simulators, compute the clipped A2C gradient on its own device, apply RMSprop to the central
copy chunk by chunk (each chunk under its own lock), repeat; no barrier, no Allreduce. The central
store lives on rank 0, which only serves (see `CentralStore`). This is the "A3C" baseline of GALA
(Assran et al., NeurIPS 2019), as in astooke/accel_rl's mA3C.

    mpirun -np 5 python a3c_gpu_atari.py --env-id Pong-v5    # store rank + 4 workers x 16 envs

Simplifications and choices, stated so nobody has to find them:
- With N ranks there are N - 1 workers: the store rank holds no simulators. `python a3c_gpu_atari.py`
  alone is plain A2C with RMSprop (the store is local).
- Hyperparameters: torch RMSprop (alpha 0.99, eps 1e-5 outside the square root), value coefficient
  0.5, lr 7e-4 x sqrt(num_envs / 16): scaled with the simulators in one update, since each central
  update applies one worker's batch. accel_rl has rho 0.9, eps 1e-6 inside the root, value 0.25;
  keeping ours makes the comparison with GALA and A2C about asynchrony alone.
- accel_rl's workers try each chunk's lock with a timeout and take whichever is free; MPI has no
  try-lock, so each worker walks the chunks starting at its own (rank mod chunks).
- Chunks are read one by one: the parameters a worker acts with may mix versions across chunks (as
  in accel_rl). `async/staleness` counts central updates between a worker's read and its write.
- The run ends when the central count reaches num_updates; workers in the middle of an update
  finish it (up to workers - 1 extra updates).
- The official GALA network: the Nature CNN with 32 filters in its third conv (0.87M parameters).
- envpool's DeepMind settings, kept rather than matched to the official code's baselines wrappers:
  after a life loss the 4-frame stack carries over (the official code zeros it at every done),
  games are cut at envpool's 27,000 steps (gym's limit, ~100k, in the official code), and a cut
  bootstraps from the value of its last observation (the official code treats every done as final).
- envpool's reset transition is masked out of the loss (as the A2C script).
- A resumed run restores the central parameters, square averages and update count, not the
  emulator states or the workers' RNG.
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
    """simulators per worker"""
    env_threads: Annotated[Optional[int], default_is("this rank's share of its node's cores")] = None
    """envpool threads per rank"""
    torch_threads: Annotated[Optional[int], default_is("this rank's share of its node's cores")] = None
    """torch threads per rank"""
    learning_rate: Annotated[Optional[float], default_is("7e-4 x sqrt(num_envs / 16)")] = None
    """RMSprop learning rate (by default scaled with the simulators in one central update: one worker's)"""
    anneal_lr: bool = False
    """anneal the learning rate linearly to 0 over total_timesteps"""
    num_steps: int = 5
    """steps per simulator per update (the n of the n-step return)"""
    gamma: float = 0.99
    """the discount factor"""
    ent_coef: float = 0.01
    """coefficient of the entropy bonus"""
    vf_coef: float = 0.5
    """coefficient of the value loss (mean squared error)"""
    max_grad_norm: float = 0.5
    """clip of the global gradient norm (by each worker, before it applies its update)"""
    rmsprop_alpha: float = 0.99
    """RMSprop smoothing constant"""
    rmsprop_eps: float = 1e-5
    """RMSprop epsilon (torch convention: outside the square root)"""
    log_every: int = 20
    """a worker's updates between its reports (finished games and statistics) to the store rank, which logs them"""
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
    update_chunks: int = 3
    """pieces of the central state, each under its own lock (accel_rl: 3)"""
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
    num_workers: tyro.conf.Suppress[int] = 0
    """worker ranks (world_size - 1; 1 in a world of one)"""
    total_envs: tyro.conf.Suppress[int] = 0
    """simulators over all workers"""
    batch_size: tyro.conf.Suppress[int] = 0
    """samples per central update (num_steps x num_envs of one worker)"""
    num_updates: tyro.conf.Suppress[int] = 0
    """central updates in the whole run"""
    start_step: tyro.conf.Suppress[int] = 0
    """global step this run starts from: its --resume checkpoint's, else 0"""
    start_seconds: tyro.conf.Suppress[float] = 0.0
    """seconds of training before this run: its --resume checkpoint's (what --max-seconds counts on from)"""


ALGO = "a3c_gpu"


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
# The distinctive part: a central parameter + RMSprop store in MPI windows, updated asynchronously
# ---------------------------------------------------------------------------------------------
def rmsprop_step(
    params: np.ndarray, square_avg: np.ndarray, grad: np.ndarray, lr: float, alpha: float, eps: float
) -> None:
    """torch.optim.RMSprop (no momentum, not centered), in place on one chunk of the central state."""
    square_avg *= alpha
    square_avg += (1.0 - alpha) * grad * grad
    params -= lr * grad / (np.sqrt(square_avg) + eps)


class CentralStore:
    """The parameters and RMSprop square averages of the whole run, hosted by the store rank (0) in
    `chunks` MPI windows [params_c, square_avg_c], each with its own passive-target lock, plus an
    int64 window counting the updates applied. Workers read the parameters chunk by chunk under a
    shared lock, and apply an update chunk by chunk under an exclusive lock (get, RMSprop, put), each
    starting at a different chunk, so that workers update different chunks at the same time.

    Where it lives and why: MPICH moves passive-target RMA only while the target rank is inside MPI.
    Measured here: a lock/get/put of 6.8 MB on a window hosted by a rank computing for 4 s took 3.5 s;
    hosted by a rank that polls MPI every 0.5 ms, 8.5 ms. So with more than one rank the store lives
    on a rank of its own that only serves (`serve` polls with sleeps, using little CPU) and holds no
    simulators; windows make it work across nodes too. In a world of one, rank 0 hosts and uses it.
    """

    def __init__(self, comm, numel: int, chunks: int, host: int = 0):
        self.comm, self.host, self.numel = comm, host, numel
        hosting = comm.Get_rank() == host
        edges = np.linspace(0, numel, chunks + 1).astype(int)
        self.bounds = list(zip(edges[:-1], edges[1:]))
        self.wins = [MPI.Win.Allocate(2 * (hi - lo) * 4 if hosting else 0, 4, comm=comm) for lo, hi in self.bounds]
        self.counter = MPI.Win.Allocate(8 if hosting else 0, 8, comm=comm)
        self.scratch = [np.empty(2 * (hi - lo), dtype=np.float32) for lo, hi in self.bounds]
        self.one, self.previous = np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.int64)

    def local(self) -> tuple[list[np.ndarray], np.ndarray]:
        """On the host: its own window memory ([params_c, square_avg_c] per chunk, the counter)."""
        chunks = [np.frombuffer(w.tomemory(), dtype=np.float32) for w in self.wins]
        return chunks, np.frombuffer(self.counter.tomemory(), dtype=np.int64)

    def initialise(self, params: np.ndarray, square_avg: np.ndarray, count: int) -> None:
        """On the host, before anyone reads (then a Barrier): writes the initial state into its own
        window memory, each window inside an exclusive lock epoch, so that MPI makes the stores visible
        to the workers' one-sided reads (a Barrier alone does not promise it)."""
        chunks, counter = self.local()
        for (lo, hi), win, chunk in zip(self.bounds, self.wins, chunks):
            win.Lock(self.host, MPI.LOCK_EXCLUSIVE)
            chunk[: hi - lo], chunk[hi - lo :] = params[lo:hi], square_avg[lo:hi]
            win.Unlock(self.host)
        self.counter.Lock(self.host, MPI.LOCK_EXCLUSIVE)
        counter[0] = count
        self.counter.Unlock(self.host)

    def count(self) -> int:
        self.counter.Lock(self.host, MPI.LOCK_SHARED)
        self.counter.Fetch_and_op(self.one, self.previous, self.host, op=MPI.NO_OP)
        self.counter.Unlock(self.host)
        return int(self.previous[0])

    def read_params(self, out: np.ndarray) -> int:
        """Copies the central parameters into `out`; returns the update count seen before reading."""
        version = self.count()
        for (lo, hi), win in zip(self.bounds, self.wins):
            win.Lock(self.host, MPI.LOCK_SHARED)
            win.Get(out[lo:hi], self.host, target=(0, hi - lo, MPI.FLOAT))
            win.Unlock(self.host)
        return version

    def apply(self, grad: np.ndarray, step, start: int = 0) -> tuple[int, float]:
        """Applies `step(params_chunk, square_avg_chunk, grad_chunk)` to every chunk under its exclusive
        lock, starting at chunk `start`; returns (updates applied before this one, seconds spent
        waiting for locks and data)."""
        waited = 0.0
        for i in range(len(self.wins)):
            c = (start + i) % len(self.wins)
            (lo, hi), win, buf = self.bounds[c], self.wins[c], self.scratch[c]
            began = time.perf_counter()
            win.Lock(self.host, MPI.LOCK_EXCLUSIVE)
            win.Get(buf, self.host)
            win.Flush(self.host)
            waited += time.perf_counter() - began
            step(buf[: hi - lo], buf[hi - lo :], grad[lo:hi])
            win.Put(buf, self.host)
            win.Unlock(self.host)
        self.counter.Lock(self.host, MPI.LOCK_SHARED)
        self.counter.Fetch_and_op(self.one, self.previous, self.host, op=MPI.SUM)
        self.counter.Unlock(self.host)
        return int(self.previous[0]), waited

    def snapshot(self) -> tuple[np.ndarray, np.ndarray, int]:
        """A consistent copy of (parameters, square averages, count), chunk by chunk under shared locks
        (any rank may call it; the store rank uses it for checkpoints while workers keep updating)."""
        params, square_avg = np.empty(self.numel, dtype=np.float32), np.empty(self.numel, dtype=np.float32)
        count = self.count()
        for (lo, hi), win, buf in zip(self.bounds, self.wins, self.scratch):
            win.Lock(self.host, MPI.LOCK_SHARED)
            win.Get(buf, self.host)
            win.Unlock(self.host)
            params[lo:hi], square_avg[lo:hi] = buf[: hi - lo], buf[hi - lo :]
        return params, square_avg, count

    def free(self) -> None:
        for win in (*self.wins, self.counter):
            win.Free()


TAG_WORKER = 7


def serve(comm, workers: int, handle=lambda source, message: None, poll_seconds: float = 5e-4, tick=None) -> None:
    """The store rank's loop: keep MPI progressing for the workers' one-sided operations (Iprobe,
    then a short sleep), hand their messages ("stats", ...) / ("done", ...) to `handle`, call `tick`
    (which passes a signal on), and return when every worker is done. Messages of one worker arrive
    in order (one tag)."""
    status, done = MPI.Status(), 0
    while done < workers:
        if tick is not None:
            tick()
        if comm.iprobe(source=MPI.ANY_SOURCE, tag=TAG_WORKER, status=status):
            message = comm.recv(source=status.Get_source(), tag=TAG_WORKER)
            done += message[0] == "done"
            handle(status.Get_source(), message)
        else:
            time.sleep(poll_seconds)


def a2c_gradient(agent, obs, actions, returns, valid, args) -> tuple[np.ndarray, np.ndarray]:
    """The clipped gradient of the mean A2C loss over this worker's valid samples, as one flat vector,
    and the mean losses: both in one copy to the host (the update's one host sync)."""
    agent.zero_grad()
    policy, value, entropy = a2c_loss_sums(agent, obs, actions, returns, valid)
    count = valid.sum().clamp(min=1.0)
    ((policy + args.vf_coef * value - args.ent_coef * entropy) / count).backward()
    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    means = torch.stack([policy, value, entropy]).detach() / count
    flat = torch.cat([*(p.grad.reshape(-1) for p in agent.parameters()), means]).cpu().numpy()
    return flat[:-3], flat[-3:]


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
    if args.num_steps < 1:
        raise ConfigError(f"--num-steps must be at least 1, got {args.num_steps}")
    if args.update_chunks < 1:
        raise ConfigError(f"--update-chunks must be at least 1, got {args.update_chunks}")
    args.world_size = world_size
    args.num_workers = max(world_size - 1, 1)
    args.total_envs = args.num_workers * args.num_envs
    args.batch_size = args.num_steps * args.num_envs
    if args.learning_rate is None:
        args.learning_rate = 7e-4 * float(np.sqrt(args.num_envs / 16))  # one worker's batch per central update
    if args.eval_checkpoint is not None:
        args.eval_episodes = args.eval_episodes or 10
        return
    args.num_updates = args.total_timesteps // args.batch_size
    if args.num_updates < 1:
        raise ConfigError(
            f"--total-timesteps {args.total_timesteps} is below one update "
            f"({args.num_steps} steps x {args.num_envs} envs = {args.batch_size})"
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


# ---------------------------------------------------------------------------------------------
# Training: set-up, the store rank serving / the workers working, teardown
# ---------------------------------------------------------------------------------------------
def train(args: Args) -> dict:
    comm = MPI.COMM_WORLD
    rank, world_size = comm.Get_rank(), comm.Get_size()
    ckpt = checked_input(comm, args)
    is_store, is_worker = rank == 0, rank > 0 or world_size == 1
    device, torch_threads, env_threads, run_name, run_dir = set_up(comm, args, uses_gpu=is_worker)
    if rank == 0:
        who = (f"store rank + {args.num_workers} worker(s)" if world_size > 1 else
               "one process: plain A2C with RMSprop (the store is local)")
        print(f"{ALGO}: {who} x {args.num_envs} envs on {device} ({torch_threads} torch / {env_threads} env threads "
              f"per rank), lr {args.learning_rate:.3g}, {args.update_chunks} chunk(s)", flush=True)
    agent = Agent(envpool.make_spec(args.env_id).action_space.n).to(device)
    if ckpt is not None:
        agent.load_state_dict(ckpt["model"])
    if args.eval_checkpoint is not None:  # evaluation only
        results = evaluate_all_ranks(comm, agent, args, ckpt["global_step"], env_threads, device)
        if rank == 0:
            report_eval(results, args, run_dir)
        return {"eval": results}

    store = CentralStore(comm, sum(p.numel() for p in agent.parameters()), args.update_chunks)
    start_count = 0 if ckpt is None else ckpt["update"]  # every rank read the checkpoint
    if is_store:  # the initial central state: rank 0's parameters and zero averages, or the checkpoint's
        flat = nn.utils.parameters_to_vector(agent.parameters()).detach().cpu().numpy()
        store.initialise(flat, np.zeros_like(flat) if ckpt is None else ckpt["square_avg"], start_count)
        if ckpt is not None:
            print(f"resumed from {args.resume} at global_step {ckpt['global_step']}", flush=True)
    comm.Barrier()  # the central state is initialised before anyone reads it

    signalled = StopSignal(comm, budget(args))
    writer = open_writer(args, run_name, run_dir) if is_store else None
    progress = Progress(start_count * args.batch_size, args.num_updates * args.batch_size, args.print_every, is_store)
    ckpt_path, last_checkpoint, reports = run_dir / "checkpoint.pt", start_count * args.batch_size, {}

    def checkpoint() -> int:
        """Store rank: a consistent snapshot of the central state into `agent` and the checkpoint file;
        returns its update count."""
        central, square_avg, count = store.snapshot()
        nn.utils.vector_to_parameters(torch.from_numpy(central).to(device), agent.parameters())
        save_checkpoint(ckpt_path, {
            "algorithm": ALGO, "env_id": args.env_id, "world_size": world_size, "num_envs": args.num_envs,
            "update": count, "global_step": count * args.batch_size, "model": agent.state_dict(),
            "seconds": args.start_seconds + time.time() - progress.start_time,
            "square_avg": square_avg, "args": asdict(args),
        })
        return count

    def handle(source: int, message: tuple) -> None:
        """Store rank: a worker's message ("stats", central step, finished games, statistics) or ("done",);
        checkpoint every --checkpoint-every steps when --save-model, log the report."""
        nonlocal last_checkpoint
        if message[0] != "stats":
            return
        _, step, episodes, stats = message
        if step > last_checkpoint and checkpoint_due(args, step, step - last_checkpoint):
            last_checkpoint = checkpoint() * args.batch_size
        log_report(writer, progress, reports, source, step, episodes, stats, args.batch_size)

    mine = {}
    if is_worker:
        mine = work(comm, args, agent, store, env_threads, device, signalled, handle if world_size == 1 else None)
    else:
        serve(comm, args.num_workers, handle, tick=lambda: bool(signalled))
    end_time = time.time()

    # Teardown: every worker is done (the store rank saw their "done"); save and evaluate the central state.
    out_of_time = signalled.finish()
    stop = comm.allreduce(bool(mine.pop("stopped", False)), op=MPI.LOR)
    stopped = stop and not out_of_time  # by a signal: no evaluation, the run is to be continued
    final_count = int(comm.bcast(store.count() if is_store else None, root=0))
    global_step = final_count * args.batch_size
    if is_store:
        if args.save_model or stop:
            checkpoint()
            print(f"{'stopped by signal at ' if stopped else ''}global_step {global_step}: checkpoint {ckpt_path}",
                  flush=True)
        else:
            nn.utils.vector_to_parameters(torch.from_numpy(store.snapshot()[0]).to(device), agent.parameters())
        print(f"store: {final_count - start_count} central updates in {end_time - progress.start_time:.1f} s",
              flush=True)
        mine["central_updates"] = final_count - start_count
    store.free()
    broadcast_parameters(comm, agent)  # everyone evaluates the central parameters
    summary = progress.result(global_step, end_time, stopped, out_of_time)
    if args.eval_episodes and not stopped:
        summary["eval"] = evaluate_all_ranks(comm, agent, args, final_count, env_threads, device)
        if rank == 0:
            report_eval(summary["eval"], args, run_dir, writer, global_step)
    summary = write_summary(comm, run_dir, summary, mine, device)
    if is_store:
        close_writer(writer, args)
    return summary


def log_report(
    writer, progress, reports: dict, source: int, step: int, episodes: list, stats: dict, batch_size: int
) -> None:
    """Store rank: a worker's finished games at the central step of its report; the scalars (losses and
    async statistics averaged over the workers' latest reports) and the progress line are paced by the
    reports of one worker, the lowest rank that has reported."""
    log_episodes(writer, [(step, ret, length) for ret, length in episodes], progress.recent_returns)
    reports[source] = stats
    if source != min(reports):
        return
    sps = progress.sps(step)
    mean = lambda key: float(np.mean([r[key] for r in reports.values()]))  # noqa: E731
    log_scalars(writer, step, {
        "charts/SPS": sps, "charts/learning_rate": stats["lr"],
        **{f"losses/{name}": mean(name) for name in ("policy_loss", "value_loss", "entropy")},
        "async/staleness": mean("staleness"), "async/lock_wait_ms": mean("lock_wait_ms"),
        "async/updates_per_s": sps / batch_size,
        **{name: mean(name) for name in stats if name.startswith("network/")},
    })
    progress.update(step)


def work(comm, args: Args, agent, store: CentralStore, env_threads: int, device, signalled, handle=None) -> dict:
    """A worker: read the central parameters, roll out, compute the clipped gradient, apply RMSprop to
    the central copy; repeat until the central count reaches num_updates (workers still updating then
    finish their update: a run may end up to workers - 1 updates over) or a signal. Every --log-every
    updates it reports to the store rank (in a world of one, to `handle` in the same process)."""
    rank, T, N = comm.Get_rank(), args.num_steps, args.num_envs
    obs = torch.zeros((T, N, 4, 84, 84), dtype=torch.uint8, device=device)
    actions = torch.zeros((T, N), dtype=torch.long, device=device)
    values = torch.zeros((T, N), device=device)
    rewards, terminations, truncations = (np.zeros((T, N), dtype=np.float32) for _ in range(3))
    env_seed = int(np.random.SeedSequence([args.seed, rank, store.count()]).generate_state(1)[0] >> 1)
    envs = make_env(args.env_id, N, env_seed, env_threads, train=True)
    next_obs = torch.from_numpy(envs.reset()[0]).to(device)
    next_done = np.zeros(N, dtype=bool)
    stats = EpisodeStats(N)
    params = torch.empty(sum(p.numel() for p in agent.parameters()), pin_memory=device.type == "cuda").numpy()
    episodes, sends, window, last_stats = [], [], {"staleness": [], "lock_wait_ms": []}, None
    updates, warm, began = 0, None, time.time()
    start = rank % args.update_chunks
    slow = SlowDown(comm, args)

    def report(message: tuple) -> None:
        if handle is not None:
            handle(rank, message)
        else:
            sends.append(comm.isend(message, dest=0, tag=TAG_WORKER))
            sends[:] = [r for r in sends if not r.Test()]

    while True:
        version = store.read_params(params)
        if version >= args.num_updates or signalled:
            break
        nn.utils.vector_to_parameters(torch.from_numpy(params).to(device), agent.parameters())
        lr = args.learning_rate * (1.0 - version / args.num_updates) if args.anneal_lr else args.learning_rate
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
            episodes += stats.update(info, truncated, valid)
        with torch.no_grad():
            next_value = agent(next_obs)[1]
        rollout = (torch.from_numpy(x).to(device) for x in (rewards, terminations, truncations))
        returns, valid = a2c_targets(*rollout, values, next_value, prev_done, args.gamma)
        grad, means = a2c_gradient(
            agent, obs.reshape(T * N, 4, 84, 84), actions.reshape(-1), returns.reshape(-1), valid.reshape(-1), args
        )
        step_fn = lambda p, s, g, lr=lr: rmsprop_step(p, s, g, lr, args.rmsprop_alpha, args.rmsprop_eps)  # noqa: E731
        previous, waited = store.apply(grad, step_fn, start)
        updates += 1
        slow()
        if updates == 10:
            warm = (time.time(), updates)
        window["staleness"].append(previous - version)
        window["lock_wait_ms"].append(1000 * waited)
        if updates % args.log_every == 0:
            last_stats = {**dict(zip(("policy_loss", "value_loss", "entropy"), means.tolist())), "lr": lr,
                          **{key: float(np.mean(xs)) for key, xs in window.items()},
                          **agent.dead_units(obs.reshape(T * N, 4, 84, 84))}
            report(("stats", (previous + 1) * args.batch_size, episodes, last_stats))
            episodes, window = [], {"staleness": [], "lock_wait_ms": []}
    if episodes and last_stats:  # the games that ended after the last report
        report(("stats", version * args.batch_size, episodes, last_stats))
    envs.close()
    if handle is None:
        MPI.Request.Waitall([*sends, comm.isend(("done",), dest=0, tag=TAG_WORKER)])
    sps = (updates - warm[1]) * args.batch_size / (time.time() - warm[0]) if warm else None
    print(f"[worker {rank}] {updates} updates in {time.time() - began:.1f} s", flush=True)
    return {"stopped": bool(signalled), "updates": updates, "seconds": time.time() - began, "sps": sps,
            "slept": slow.slept}


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
