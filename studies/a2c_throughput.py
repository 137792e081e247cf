"""How close does a2c_allreduce_atari.py come to the speed its parts allow?

At 1 rank x 16 simulators: the raw envpool stepping rate (random actions), the model's inference
rate (batches of `num_envs`, no grad) and train-step rate (forward, backward and RMSprop on
`num_steps x num_envs` samples), each alone in this process with OpenMP's default (spinning) wait;
then the script for a number of updates, launched as a user launches it (its own process, its own
OpenMP setting, --no-cuda: parts and script on the CPU; its summary's SPS). A step of the script
costs one env step, one inference sample and one training sample, so its ceiling is
1 / (1/env + 1/inference + 1/train). On a shared machine single readings vary by +-20%, so parts and
script are measured in alternating rounds and the medians reported with each round's ratio.

    python -m studies.a2c_throughput --updates 300 --rounds 3
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro
from mpi4py import MPI

import a2c_allreduce_atari as a2c
from benchmark.common import launch, rate, summary


@dataclass
class Config:
    env_id: str = "Pong-v5"
    """the game"""
    num_envs: int = 16
    """simulators (one rank)"""
    num_steps: int = 5
    """steps per update (train batch = num_steps x num_envs)"""
    updates: int = 300
    """updates of the script to time"""
    seconds: float = 5.0
    """time spent measuring each part"""
    threads: int = 0
    """torch and envpool threads (0: the script's default, all cores of this node)"""
    rounds: int = 3
    """alternating rounds of (parts, script)"""


def measure_parts(cfg: Config, threads: int) -> tuple[float, float, float]:
    """Steps/s of envpool alone, samples/s of inference and of the train step."""
    envs = a2c.make_env(cfg.env_id, cfg.num_envs, seed=0, threads=threads, train=True)
    obs, _ = envs.reset()
    rng = np.random.default_rng(0)
    n_actions = envs.action_space.n
    env_rate = rate(lambda: envs.step(rng.integers(0, n_actions, cfg.num_envs)), cfg.num_envs, cfg.seconds)
    envs.close()

    agent = a2c.Agent(n_actions)
    batch = torch.from_numpy(np.repeat(obs, cfg.num_steps, axis=0))
    one_step = torch.from_numpy(obs)

    def infer():
        with torch.no_grad():
            logits, _ = agent(one_step)
            torch.distributions.Categorical(logits=logits).sample()

    inference_rate = rate(infer, cfg.num_envs, cfg.seconds)
    # The train step is the script's own update (a world of one: its Allreduce sums one rank).
    args = a2c.Args(num_envs=cfg.num_envs, num_steps=cfg.num_steps)
    optimizer = torch.optim.RMSprop(agent.parameters(), lr=7e-4, alpha=args.rmsprop_alpha, eps=args.rmsprop_eps)
    reduce_grads = a2c.AllreduceGradients(MPI.COMM_WORLD, list(agent.parameters()), torch.device("cpu"))
    actions = torch.zeros(len(batch), dtype=torch.long)
    returns, valid = torch.zeros(len(batch)), torch.ones(len(batch))

    def train():
        a2c.a2c_update(agent, optimizer, reduce_grads, batch, actions, returns, valid, args)

    return env_rate, inference_rate, rate(train, len(batch), cfg.seconds)


def main(cfg: Config) -> None:
    threads = cfg.threads or a2c.node_threads(MPI.COMM_WORLD)[0]
    torch.set_num_threads(threads)
    flags = ("--no-cuda", "--env-id", cfg.env_id, "--num-steps", str(cfg.num_steps), "--torch-threads", str(threads),
             "--env-threads", str(threads))
    steps = cfg.updates * cfg.num_steps * cfg.num_envs
    rows = []
    for _ in range(cfg.rounds):
        env_rate, inference_rate, train_rate = measure_parts(cfg, threads)
        ceiling = 1.0 / (1.0 / env_rate + 1.0 / inference_rate + 1.0 / train_rate)
        with tempfile.TemporaryDirectory() as where:  # the script as a user runs it: one rank, plain python
            sps = summary(launch(Path(where), "a2c_allreduce", cfg.num_envs, 1, "--total-timesteps", str(steps),
                                 *flags))["sps"]
        rows.append((env_rate, inference_rate, train_rate, ceiling, sps, sps / ceiling))
    print(f"threads {threads}, {cfg.env_id}, 1 rank x {cfg.num_envs} envs, {cfg.num_steps} steps per update, "
          f"{cfg.updates} updates per script run")
    print("round   envpool  inference  train-step  ceiling   a2c SPS  ratio")
    for i, row in enumerate(rows):
        print(f"{i:5d}  {row[0]:8.0f}  {row[1]:9.0f}  {row[2]:10.0f}  {row[3]:7.0f}  {row[4]:8.0f}  {row[5]:5.2f}")
    med = np.median(np.array(rows), axis=0)
    print(f"median {med[0]:8.0f}  {med[1]:9.0f}  {med[2]:10.0f}  {med[3]:7.0f}  {med[4]:8.0f}  {med[5]:5.2f}")
    print("(envpool steps/s; inference and train-step samples/s; ceiling = 1 / (1/env + 1/inference + 1/train))")


if __name__ == "__main__":
    main(tyro.cli(Config))
