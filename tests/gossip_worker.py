"""Pure gossip, no learning: each rank starts from its own random vector and runs the script's
Gossip for a number of rounds (sleeping a little each round, as an agent computes), then finishes.
Rank 0 writes a JSON summary to the path given. Usage:
    mpirun -np 4 python gossip_worker.py OUT GRAPH NUM_PEERS SYNC_FREQ ROUNDS SLEEP_SECONDS"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import gala_a2c_atari as gala  # noqa: E402

out, graph, num_peers, sync_freq, rounds, sleep = sys.argv[1:7]
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
start = np.random.default_rng(rank).normal(size=20_000).astype(np.float32)
flat = torch.from_numpy(start.copy())
gossip = gala.Gossip(comm.Dup(), flat, graph, int(num_peers), int(sync_freq))
for t in range(1, int(rounds) + 1):
    time.sleep(float(sleep))
    gossip.step(t)
gossip.finish()
counts = {"sent": sum(gossip.sent.values()), "received": sum(gossip.received.values()), "mixes": gossip.mixes}
starts, finals, all_counts = comm.gather(start, root=0), comm.gather(flat.numpy().copy(), root=0), comm.gather(counts, root=0)
if rank == 0:
    starts, finals = np.array(starts, dtype=np.float64), np.array(finals, dtype=np.float64)

    def spread(x):
        return float(np.linalg.norm(x - x.mean(0), axis=1).max())

    Path(out).write_text(json.dumps({
        "initial_spread": spread(starts), "final_spread": spread(finals),
        "average_error": float(np.abs(finals - starts.mean(0)).max()),
        "counts": all_counts,
    }))  # fmt: skip
