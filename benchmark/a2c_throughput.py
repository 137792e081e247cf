"""How close does a2c_allreduce_atari.py come to the speed its parts allow?

At 1 rank x 16 simulators, measured in this one process: the raw envpool stepping rate (random
actions), the model's inference rate (batches of `num_envs`, no grad) and train-step rate (forward,
backward and RMSprop on `num_steps x num_envs` samples), then the script itself for a number of
updates (its SPS after 10 warm-up updates). A step of the script costs one env step, one inference
sample and one training sample, so its ceiling is 1 / (1/env + 1/inference + 1/train).

    python -m benchmark.a2c_throughput --updates 300
"""

import time
from dataclasses import dataclass

import numpy as np
import torch
import tyro

import a2c_allreduce_atari as a2c


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


def rate(fn, units_per_call: int, seconds: float) -> float:
    """Units per second of `fn`, after two warm-up calls."""
    fn(), fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * units_per_call / (time.perf_counter() - start)


def main(cfg: Config) -> None:
    from mpi4py import MPI

    threads = cfg.threads or a2c.node_threads(MPI.COMM_WORLD)[0]
    torch.set_num_threads(threads)
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
    optimizer = torch.optim.RMSprop(agent.parameters(), lr=7e-4, alpha=0.99, eps=1e-5)
    actions = torch.zeros(len(batch), dtype=torch.long)
    returns, valid = torch.zeros(len(batch)), torch.ones(len(batch))

    def train():
        optimizer.zero_grad()
        policy, value, entropy = a2c.a2c_loss_sums(agent, batch, actions, returns, valid)
        (policy + 0.5 * value - 0.01 * entropy).backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
        optimizer.step()

    train_rate = rate(train, len(batch), cfg.seconds)
    ceiling = 1.0 / (1.0 / env_rate + 1.0 / inference_rate + 1.0 / train_rate)

    args = a2c.Args(
        env_id=cfg.env_id, num_envs=cfg.num_envs, num_steps=cfg.num_steps, torch_threads=threads,
        env_threads=threads, total_timesteps=cfg.updates * cfg.num_steps * cfg.num_envs, print_every=1e9,
    )  # fmt: skip
    sps = a2c.main(args)["sps"]
    print(f"threads {threads}, {cfg.env_id}, 1 rank x {cfg.num_envs} envs, {cfg.num_steps} steps per update")
    print(f"envpool raw        {env_rate:8.0f} steps/s")
    print(f"inference          {inference_rate:8.0f} samples/s (batches of {cfg.num_envs})")
    print(f"train step         {train_rate:8.0f} samples/s (batches of {len(batch)})")
    print(f"ceiling            {ceiling:8.0f} steps/s = 1 / (1/env + 1/inference + 1/train)")
    print(f"a2c_allreduce SPS  {sps:8.0f} steps/s over {cfg.updates - 10} updates after warm-up")
    print(f"ratio              {sps / ceiling:8.2f}")


if __name__ == "__main__":
    main(tyro.cli(Config))
