"""The script's CentralStore alone, rank 0 hosting and serving, the other ranks working. Rank 0 writes
a JSON summary to the path given. Usage: mpirun -np N python a3c_store_worker.py OUT MODE
  rmsprop  (N=2): the worker applies one RMSprop update of a known gradient
  held_up  (N=3): rank 1 computes for 3 s without calling MPI while rank 2 updates the store
  sum      (N=5): 4 workers each apply 20 known SGD updates at the same time, all starting on
           chunk 0 so that they contend for the same locks"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import a3c_gpu_atari as a3c  # noqa: E402

out, mode = sys.argv[1:3]
comm = MPI.COMM_WORLD
rank, world = comm.Get_rank(), comm.Get_size()
numel = 100_003
store = a3c.CentralStore(comm, numel, chunks=3)
initial = np.random.default_rng(0).normal(size=numel).astype(np.float32)
if rank == 0:
    store.initialise(initial, np.zeros_like(initial), 0)
comm.Barrier()


def gradient(r: int, k: int) -> np.ndarray:
    return np.random.default_rng([r, k]).normal(size=numel).astype(np.float32)


result = {}
if rank > 0:
    if mode == "rmsprop":
        step = lambda p, s, g: a3c.rmsprop_step(p, s, g, 1e-3, 0.99, 1e-5)  # noqa: E731
        store.apply(gradient(rank, 0), step, start=1)
    elif mode == "held_up" and rank == 1:
        began = time.time()
        while time.time() - began < 3.0:  # compute, no MPI call
            sum(range(1000))
    elif mode == "held_up":
        time.sleep(0.5)  # rank 1 is computing by now
        began = time.time()
        store.apply(gradient(rank, 0), lambda p, s, g: p.__isub__(g))
        store.read_params(np.empty(numel, dtype=np.float32))
        result = {"update_seconds": time.time() - began}
    elif mode == "sum":
        for k in range(20):
            store.apply(gradient(rank, k), lambda p, s, g: p.__isub__(g), start=0)
    comm.send(("done",), dest=0, tag=a3c.TAG_WORKER)
else:
    a3c.serve(comm, world - 1)
results = comm.gather(result, root=0)
if rank == 0:
    params, square_avg, count = store.snapshot()  # under lock epochs, as the workers' updates
    Path(out).write_text(json.dumps({"count": count, "workers": results[1:]}))
    np.savez(out + ".npz", params=params, square_avg=square_avg, initial=initial,
             gradients=np.array([[gradient(r, k) for k in range(20 if mode == "sum" else 1)]
                                 for r in range(1, world)]))
store.free()
