"""The script's Gossip alone at many ranks: for each graph (ring, exponential) with 2 peers, first
synchronous rounds in lockstep (--sync-freq 0, a barrier before each), which must keep the exact
average of the starting vectors, then asynchronous rounds (never blocking, ranks working unevenly),
which must reach consensus, then blocking rounds of ranks working unevenly (--sync-freq 0 without the
barrier, one rank starting late): senders skip peers that have not read their last message while
receivers block, which must neither hang nor lose a message. Rank 0 writes a JSON summary per graph. Usage:
    mpirun -np 32 python gossip_scale_worker.py OUT ROUNDS"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gossip_worker import work  # noqa: E402  (tests/, this script's directory, is on sys.path)

import gala_a2c_atari as gala  # noqa: E402

out, rounds = sys.argv[1], int(sys.argv[2])
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
rng = np.random.default_rng(rank)
results = {}
for graph in ("ring", "exponential"):
    start = rng.normal(size=1000).astype(np.float32)
    flat = torch.from_numpy(start.copy())
    summary = {}
    for mode, sync_freq in (("synchronous", 0), ("asynchronous", None), ("blocking", 0)):
        gossip = gala.Gossip(comm.Dup(), flat, graph, 2, sync_freq)
        comm.Barrier()
        if mode == "blocking" and rank == 2:
            time.sleep(0.05)  # the others' first messages to it wait unread, so their next sends are skipped
        for t in range(1, rounds + 1):
            if mode == "synchronous":
                comm.Barrier()
            else:
                work(gossip, 0.001 * rng.uniform(0, 2))
            gossip.exchange(t)
        gossip.finish()
        finals = comm.gather(flat.numpy().astype(np.float64), root=0)
        counts = comm.gather(gossip.counts(), root=0)
        if rank == 0:
            finals = np.array(finals)
            summary[mode] = {
                "spread": float(np.linalg.norm(finals - finals.mean(0), axis=1).max()),
                "sent": sum(c["sent"] for c in counts), "received": sum(c["received"] for c in counts),
                "skipped": sum(c["skipped"] for c in counts), "mean": finals.mean(0).tolist(),
            }
    starts = comm.gather(start.astype(np.float64), root=0)
    if rank == 0:
        starts = np.array(starts)
        summary["initial_spread"] = float(np.linalg.norm(starts - starts.mean(0), axis=1).max())
        summary["initial_mean"] = starts.mean(0).tolist()
        results[graph] = summary
if rank == 0:
    Path(out).write_text(json.dumps(results))
