"""Throughput levers, each measured in alternating rounds in one invocation (never beside another job).

- `channels-last`: the official network's train step (forward, backward, RMSprop on 80 and 160 samples)
  and inference (16 samples), with contiguous input, with the whole model channels-last, and with only
  the input channels-last (what the scripts do), at 1 and 2 torch threads.
- `gossip-cost`: GALA 2 x 16 under mpirun against two 1 x 16 GALA runs side by side (one agent each:
  no gossip, the same 2 processes on the same cores), and A2C 2 x 16: what gossip costs per second.
- `before-after --old-tree DIR`: every script's SPS from another checkout (`git worktree add --detach
  DIR COMMIT`) and from this one, alternating, at the learning preset's shapes (A2C 1 x 16 and 2 x 16,
  GALA 2 x 16, A3C store + 2 x 16, IMPALA learner + 2 x 16 with the preset's batch); `--only a2c_allreduce`
  keeps the cases of one script.
- `overlap`: the rollout alone (envpool steps and the policy's inference, no training), 16 simulators on
  one rank: one pool stepped synchronously against two pools of 8 double-buffered (one steps while the
  policy acts for the other, envpool's send/recv), the overlap Sample Factory's `worker_num_splits` gives.
- `sample-factory --sf-python PY`: IMPALA against Sample Factory 2.1.1's APPO at 16 simulators on Pong (2 rollout
  workers x 8, double-buffered, rollout 20, batch 640, one pass: as IMPALA's learner, one gradient step per sample),
  run by PY, a Python with `sample-factory==2.1.1` and gymnasium's ALE (envpool 1.2.5 does not run under Sample
  Factory 2.1.1; ale-py 0.8 takes its ROMs in `ale_py/roms/`: envpool-assets has them); `impala_atari.py` 1 learner
  + 2 actors x 8 and 1 learner + 1 actor x 16 with the same batch (32 unrolls of 20).

    python -m studies.throughput_levers channels-last
    python -m studies.throughput_levers gossip-cost --steps 40000
    python -m studies.throughput_levers before-after --old-tree /work/old --steps 40000
    python -m studies.throughput_levers overlap
    python -m studies.throughput_levers sample-factory --sf-python /work/sfvenv/bin/python
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

from benchmark.common import ROOT, finished, rate, script_module, start, summary


@dataclass
class ChannelsLast:
    rounds: int = 2
    seconds: float = 4.0
    """time spent measuring each cell"""


@dataclass
class GossipCost:
    steps: int = 40_000
    """global steps of each run"""
    rounds: int = 2
    env_id: str = "Breakout-v5"


@dataclass
class BeforeAfter:
    old_tree: Path
    """a checkout of the commit to compare with"""
    steps: int = 40_000
    rounds: int = 2
    env_id: str = "Breakout-v5"
    only: tuple[str, ...] = ()
    """ALGOs whose cases to run (default: all)"""


@dataclass
class Overlap:
    rounds: int = 2
    steps: int = 400
    """rollout steps timed per cell (after 20 warm-up steps)"""
    env_id: str = "Pong-v5"


def samples_per_second(layout: str, threads: int, batch: int, train: bool, seconds: float) -> float:
    """The official network (from a2c_allreduce_atari.py) on random frames; layout "contiguous",
    "model" (weights and input channels-last) or "input" (input only, as the scripts do)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    agent = script_module("a2c_allreduce_atari.py").Agent(4)
    network = agent.network
    if layout == "model":
        network = network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.RMSprop(agent.parameters(), lr=7e-4, alpha=0.99, eps=1e-5)
    x = torch.randint(0, 255, (batch, 4, 84, 84), dtype=torch.uint8).float() / 255.0
    if layout != "contiguous":
        x = x.contiguous(memory_format=torch.channels_last)

    def step():  # the network itself, so that the script's own forward does not choose the layout
        if train:
            hidden = network(x)
            loss = agent.actor(hidden).logsumexp(-1).mean() + agent.critic(hidden).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad():
                hidden = network(x)
                agent.actor(hidden), agent.critic(hidden)

    return rate(step, batch, seconds)


def channels_last(cfg: ChannelsLast) -> list[str]:
    lines = ["threads  round  work        contiguous  model (x)     input only (x)   samples/s"]
    for threads in (1, 2):
        for r in range(cfg.rounds):
            for work, batch, train in (("train 80", 80, True), ("train 160", 160, True), ("infer 16", 16, False)):
                rate = {lay: samples_per_second(lay, threads, batch, train, cfg.seconds)
                        for lay in ("contiguous", "model", "input")}
                c, m, i = rate["contiguous"], rate["model"], rate["input"]
                row = f"{threads:7d}  {r:5d}  {work:10s}  {c:10.0f}"
                lines.append(row + f"  {m:5.0f} ({m / c:.2f})  {i:5.0f} ({i / c:.2f})")
                print(lines[-1], flush=True)
    return lines


def sps(*runs: tuple, tree: Path = ROOT) -> list[float]:
    """The summaries' SPS of RUNS, each (algorithm, simulators, workers, env id, steps, *args) with 16 simulators per
    worker unless ARGS say otherwise, run side by side from TREE in temporary directories."""
    with tempfile.TemporaryDirectory() as where:
        dirs = [Path(where) / str(i) for i in range(len(runs))]
        procs = [start(d, algorithm, simulators, workers, "--env-id", env_id, "--total-timesteps", str(steps), *args,
                       tree=tree, impala_batch_size=batch)
                 for d, (algorithm, simulators, workers, env_id, steps, batch, *args) in zip(dirs, runs)]
        return [summary(finished(proc, d))["sps"] for proc, d in zip(procs, dirs)]


def gossip_cost(cfg: GossipCost) -> list[str]:
    lines = []
    for r in range(cfg.rounds):
        (gala,) = sps(("gala_a2c", 32, 2, cfg.env_id, cfg.steps, 32))
        one = ("--torch-threads", "1", "--env-threads", "1")
        alone = sum(sps(*[("gala_a2c", 16, 1, cfg.env_id, cfg.steps // 2, 32, *one)] * 2))
        (a2c,) = sps(("a2c_allreduce", 32, 2, cfg.env_id, cfg.steps, 32))
        lines.append(
            f"round {r}: GALA 2 x 16 {gala:.0f} SPS; two 1 x 16 side by side (no gossip) {alone:.0f}; "
            f"A2C 2 x 16 {a2c:.0f}; GALA / no gossip {gala / alone:.2f}; GALA / A2C {gala / a2c:.2f}"
        )
        print(lines[-1], flush=True)
    return lines


CASES = [
    ("a2c_allreduce", 1, ()),
    ("a2c_allreduce", 2, ()),
    ("gala_a2c", 2, ()),
    ("a3c_gpu", 2, ()),
    ("impala", 2, ("--unroll-length", "20", "--no-anneal-lr")),
]
"""(algorithm, workers of 16 simulators each, flags): the learning preset's shapes (IMPALA's batch: 16 unrolls)"""


def before_after(cfg: BeforeAfter) -> list[str]:
    lines = []
    for r in range(cfg.rounds):
        for algorithm, workers, extra in CASES:
            if cfg.only and algorithm not in cfg.only:
                continue
            run = (algorithm, 16 * workers, workers, cfg.env_id, cfg.steps, 16, *extra)
            (old,), (new,) = sps(run, tree=cfg.old_tree), sps(run)
            lines.append(f"round {r} {algorithm} {workers} x 16: before {old:.0f}  after {new:.0f}  "
                         f"ratio {new / old:.2f}")
            print(lines[-1], flush=True)
    return lines


def rollout_rate(env_id: str, steps: int, pools: int, threads: int) -> float:
    """Steps/s of 16 simulators driven by the official network's sampled actions (no training): one pool
    stepped synchronously (pools=1), or two pools of 8 double-buffered (pools=2): each pool's actions are
    sent (envpool steps it in its threads) while the policy acts for the other pool. The two pools seed
    their simulators as the one pool does (seed + index)."""
    from torch.distributions import Categorical

    a2c = script_module("a2c_allreduce_atari.py")
    size = 16 // pools
    envs = [a2c.make_env(env_id, size, seed=size * i, threads=threads) for i in range(pools)]
    agent = a2c.Agent(envs[0].action_space.n)
    ids = np.arange(size)

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits, _ = agent(torch.from_numpy(obs))
        return Categorical(logits=logits).sample().numpy()

    obs = [e.reset()[0] for e in envs]

    def rollout(n: int) -> None:
        if pools == 1:
            for _ in range(n):
                obs[0] = envs[0].step(act(obs[0]))[0]
            return
        envs[0].send(act(obs[0]), ids)
        for _ in range(n):
            envs[1].send(act(obs[1]), ids)
            obs[0] = envs[0].recv()[0]
            envs[0].send(act(obs[0]), ids)
            obs[1] = envs[1].recv()[0]
        obs[0] = envs[0].recv()[0]

    rollout(20)
    start = time.perf_counter()
    rollout(steps)
    measured = steps * 16 / (time.perf_counter() - start)
    for e in envs:
        e.close()
    return measured


def overlap(cfg: Overlap) -> list[str]:
    torch.set_num_threads(2)
    lines = []
    for r in range(cfg.rounds):
        one = rollout_rate(cfg.env_id, cfg.steps, pools=1, threads=2)
        cells = {threads: rollout_rate(cfg.env_id, cfg.steps, pools=2, threads=threads) for threads in (1, 2)}
        lines.append(f"round {r}: one pool of 16 (2 env threads) {one:.0f} steps/s; two pools of 8 double-buffered, "
                     f"1 env thread each {cells[1]:.0f} ({cells[1] / one:.2f}), 2 each {cells[2]:.0f} "
                     f"({cells[2] / one:.2f})")
        print(lines[-1], flush=True)
    return lines


@dataclass
class SampleFactory:
    sf_python: Path
    """a Python with sample-factory 2.1.1 and ale-py (ROMs included)"""
    steps: int = 60_000
    rounds: int = 2


def sample_factory_sps(python: Path, steps: int) -> tuple[float, float]:
    """Sample Factory's APPO on Pong (sf_examples.atari), CPU, agent steps (not frames): its last 60-s rate and
    its whole run's."""
    found = shutil.which(str(python))
    if found is None:
        sys.exit(f"--sf-python {python}: no such executable")
    with tempfile.TemporaryDirectory() as where:  # Sample Factory's train dir, and its working directory
        cmd = [os.path.abspath(found), "-m", "sf_examples.atari.train_atari", "--env=atari_pong", "--experiment=pong",
               f"--train_dir={where}", "--device=cpu", "--num_workers=2", "--num_envs_per_worker=8",
               "--worker_num_splits=2", "--rollout=20", "--batch_size=640", "--num_batches_per_epoch=1",
               "--num_epochs=1", "--async_rl=True", "--summaries_use_frameskip=False",
               f"--train_for_env_steps={steps}", "--with_wandb=False"]
        try:
            proc = subprocess.run(cmd, cwd=where, capture_output=True, text=True, timeout=1200)
        except subprocess.TimeoutExpired as err:
            tail = (err.stderr or b"").decode(errors="replace")[-2000:]  # bytes, whatever text= says
            sys.exit(f"Sample Factory still ran after 20 min:\n{tail}")
    log = proc.stderr
    recent = re.findall(r"60 sec: ([\d.]+)", log)
    whole = re.findall(r"Collected \{0: (\d+)\}, FPS: ([\d.]+)", log)
    if proc.returncode != 0 or not recent or not whole or int(whole[-1][0]) < steps:
        sys.exit(f"Sample Factory exited {proc.returncode} without its {steps} steps:\n{log[-2000:]}")
    return float(recent[-1]), float(whole[-1][1])


def sample_factory(cfg: SampleFactory) -> list[str]:
    lines, flags = [], ("--unroll-length", "20", "--no-anneal-lr")
    for r in range(cfg.rounds):
        recent, whole = sample_factory_sps(cfg.sf_python, cfg.steps)
        (two,) = sps(("impala", 16, 2, "Pong-v5", cfg.steps, 32, *flags))
        (one,) = sps(("impala", 16, 1, "Pong-v5", cfg.steps, 32, *flags))
        lines.append(f"round {r}: Sample Factory APPO 2 workers x 8 {recent:.0f} SPS (last 60 s; whole run "
                     f"{whole:.0f}); impala_atari.py learner + 2 actors x 8 {two:.0f} ({two / recent:.2f}x), "
                     f"learner + 1 actor x 16 {one:.0f} ({one / recent:.2f}x)")
        print(lines[-1], flush=True)
    return lines


LEVERS = {
    "channels-last": (ChannelsLast, channels_last),
    "gossip-cost": (GossipCost, gossip_cost),
    "before-after": (BeforeAfter, before_after),
    "overlap": (Overlap, overlap),
    "sample-factory": (SampleFactory, sample_factory),
}
"""subcommand -> (its options, what it measures)"""


def main() -> None:
    cfg = tyro.extras.subcommand_cli_from_dict({name: options for name, (options, _) in LEVERS.items()})
    (measure,) = [fn for options, fn in LEVERS.values() if isinstance(cfg, options)]
    print(f"python -m studies.throughput_levers {' '.join(sys.argv[1:])}")
    measure(cfg)


if __name__ == "__main__":
    main()
