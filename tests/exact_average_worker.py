"""Run bare (one process, the whole batch) or under mpirun (each rank a shard) on one fixed batch:
(1) one a2c_update with SGD(lr=1) and no clipping, so the parameter change is minus the averaged
gradient itself (RMSprop and clipping would hide a wrong scale); (2) three a2c_updates with the
script's RMSprop and clipping; (3) one a2c_update with SGD(lr=1) and --debug-clip-per-rank at a clip of CLIP,
which every shard's gradient exceeds. Rank 0 writes the parameter vectors to the path given; the optional second
argument is the device (cpu, the default, or cuda)."""

import dataclasses
import sys
from pathlib import Path

import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from batch import CLIP, fixed_batch, rmsprop  # noqa: E402

import a2c_allreduce_atari as a2c  # noqa: E402

comm = MPI.COMM_WORLD
rank, world = comm.Get_rank(), comm.Get_size()
device = torch.device(sys.argv[2] if len(sys.argv) > 2 else "cpu")
torch.set_num_threads(1)
out = {}
for phase, steps in (("sgd", 1), ("rmsprop", 3), ("clip_per_rank", 1)):
    agent, batch = fixed_batch()
    agent, (obs, actions, returns, valid) = agent.to(device), (x.to(device) for x in batch)
    shard = slice(rank * len(obs) // world, (rank + 1) * len(obs) // world)
    args = a2c.Args()
    if phase == "sgd":
        args = dataclasses.replace(args, max_grad_norm=float("inf"))
        optimizer = torch.optim.SGD(agent.parameters(), lr=1.0)
    elif phase == "clip_per_rank":  # the diagnosis: each rank's mean gradient clipped, then the exact average
        args = dataclasses.replace(args, max_grad_norm=CLIP, debug_clip_per_rank=True)
        optimizer = torch.optim.SGD(agent.parameters(), lr=1.0)
    else:
        optimizer = rmsprop(agent, args)
    reduce_grads = a2c.AllreduceGradients(comm, list(agent.parameters()), device)
    for _ in range(steps):
        a2c.a2c_update(agent, optimizer, reduce_grads, obs[shard], actions[shard], returns[shard], valid[shard], args)
    out[phase] = torch.nn.utils.parameters_to_vector(agent.parameters()).detach().cpu()
if rank == 0:
    torch.save(out, sys.argv[1])
