"""Pure gossip, no learning: each rank starts from its own random vector and runs the script's
Gossip for a number of rounds (sleeping a little each round, as an agent computes), then finishes.
Before gossiping, GossipMetrics measures the starting vectors (with random "gradients"), to be
checked against numpy. One launch runs several configurations one after the other (each from the
same starting vectors, on its own communicators); rank 0 writes a JSON object with one summary per
configuration to the path given. Usage:
    mpirun -np 4 python gossip_worker.py OUT CONFIG [CONFIG ...]
    CONFIG = GRAPH,NUM_PEERS,SYNC_FREQ,ROUNDS,SLEEP_SECONDS[,SLOW_RANK][,KEY=VALUE...], e.g. ring,1,0,40,lockstep
SYNC_FREQ "none" never blocks; with SLOW_RANK only that rank sleeps; SLEEP_SECONDS "lockstep" puts a
barrier before every round instead of sleeping (every message of a round read before the next); "alternate" (two
ranks) takes turns instead: in each round rank 0 makes two updates, then rank 1 one, a barrier before each.
KEY=VALUE: lockstep=A (Gossip's lockstep mode, messages A updates old), step=S (every round each agent takes the
same local step, S along every coordinate, as an agent's update), device=D (the parameters on D, cpu or cuda: the
messages pass through host buffers).
Beside the gossip, every round ends a game of each agent (return: its rank, length: the round) and every
MAIL_EVERY rounds the script's EpisodeMail sends them to rank 0 with the round: rank 0's global step at each of its
log points, every game's stamp and every rank's round end times are in the summary, to be checked against the
agents' true total at those times."""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gala_a2c_atari as gala  # noqa: E402

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
MAIL_EVERY, MAIL_STEPS = 3, 10
"""rounds between an agent's log points; steps of an agent's round"""


def run(config: str) -> dict | None:
    """One configuration; its summary on rank 0 (None on the other ranks)."""
    graph, num_peers, sync_freq, rounds, sleep, *more = config.split(",")
    options = dict(field.split("=") for field in more if "=" in field)
    slow = [field for field in more if "=" not in field]
    slow_rank = int(slow[0]) if slow else None
    step = float(options.get("step", 0))
    lockstep = int(options["lockstep"]) if "lockstep" in options else None
    rng = np.random.default_rng(rank)
    start = rng.normal(size=20_000).astype(np.float32)
    grad = (rng.normal(size=20_000) + 0.5).astype(np.float32)  # correlated across ranks by the offset
    flat = torch.from_numpy(start.copy()).to(options.get("device", "cpu"))
    holder = torch.nn.Module()
    holder.theta = torch.nn.Parameter(torch.from_numpy(start.copy()))
    holder.theta.grad = torch.from_numpy(grad)
    metrics = gala.GossipMetrics(comm.Dup(), every=1)
    metrics.start(0, holder)
    ((_, disagreement, relative, cosine),) = metrics.finish(comm, holder)
    gossip = gala.Gossip(comm.Dup(), flat, graph, int(num_peers), None if sync_freq == "none" else int(sync_freq),
                         lockstep)
    mail, games, stamped, logged, done_at = gala.EpisodeMail(comm.Dup(), 0, MAIL_STEPS), [], [], [], []
    mixed, mix = [], gossip._mix  # the sender's update count of every message this rank mixed, in order
    gossip._mix = lambda messages: (mixed.extend(int(m[-1]) for m in messages), mix(messages))
    comm.Barrier()  # start together, as agents do after their collective set-up
    if sleep == "alternate":
        rounds = alternate(gossip, int(rounds))
    for t in range(1, int(rounds) + 1):
        if sleep == "lockstep":
            comm.Barrier()
        elif slow_rank is None or rank == slow_rank:
            work(gossip, float(sleep))
        flat += step
        gossip.exchange(t)
        done_at.append(time.time())
        games.append((t * MAIL_STEPS, float(rank), t))
        if t % MAIL_EVERY == 0:
            stamped += mail.collect(t, games)
            games = []
            logged.append((time.time(), mail.global_step(t)))
    gossip.finish()
    stamped += mail.finish(int(rounds), games)
    counts = gossip.counts()
    merged_ages: dict[int, int] = {}
    for ages in comm.gather(gossip.age_counts, root=0) or []:
        for age, n in ages.items():
            merged_ages[age] = merged_ages.get(age, 0) + n
    starts, finals = comm.gather(start, root=0), comm.gather(flat.cpu().numpy(), root=0)
    all_counts = comm.gather(counts, root=0)
    grads = comm.gather(grad, root=0)
    done_at = comm.gather(done_at, root=0)
    mixed = comm.gather(mixed, root=0)
    if rank != 0:
        return None
    starts, finals = np.array(starts, dtype=np.float64), np.array(finals, dtype=np.float64)

    def spread(x):
        return float(np.linalg.norm(x - x.mean(0), axis=1).max())

    return {
        "initial_spread": spread(starts), "final_spread": spread(finals),
        "average_error": float(np.abs(finals - starts.mean(0)).max()),
        "ages": {str(age): n for age, n in sorted(merged_ages.items())},
        "advance": float((finals - starts).mean()) / int(rounds) / step if step else None,
        "counts": all_counts, "mixed": mixed,
        "mail": {"logged": logged, "games": stamped, "done_at": done_at, "final": mail.global_step(int(rounds)),
                 "every": MAIL_EVERY, "steps": MAIL_STEPS},
        "metrics": {"disagreement": disagreement, "relative": relative, "cosine": cosine},
        "numpy": {
            "disagreement": float(np.sqrt(np.mean(np.sum((starts - starts.mean(0)) ** 2, axis=1)))),
            "relative": float(np.sqrt(np.mean(np.sum((starts - starts.mean(0)) ** 2, axis=1)))
                              / np.linalg.norm(starts.mean(0))),
            "cosine": float(np.mean([np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)
                                     for i, a in enumerate(np.array(grads, dtype=np.float64))
                                     for j, b in enumerate(np.array(grads, dtype=np.float64)) if i != j])),
        },
    }


def work(gossip, seconds: float) -> None:
    """An agent's work of SECONDS, calling Gossip.progress() every millisecond as the script does every env step."""
    until = time.time() + seconds
    while time.time() < until:
        gossip.progress()
        time.sleep(0.001)


def alternate(gossip, rounds: int) -> int:
    """Two agents in turns, ROUNDS times: rank 0 makes two updates, then rank 1 one (a barrier before each update,
    in which MPI delivers what was sent). Returns 0: the rounds of the ordinary loop still to run."""
    updates = 0
    for _ in range(rounds):
        for turn in (0, 0, 1):
            comm.Barrier()
            if rank == turn:
                updates += 1
                gossip.exchange(updates)
    return 0


if __name__ == "__main__":  # gossip_scale_worker.py imports work()
    out, configs = sys.argv[1], sys.argv[2:]
    results = {config: run(config) for config in configs}
    if rank == 0:
        Path(out).write_text(json.dumps(results))
