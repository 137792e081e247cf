"""Kill a process in the middle of writing a checkpoint: `python checkpoint_kill_worker.py MODULE PATH`.

Imports the training script MODULE and calls its own `save_checkpoint(PATH, state)`, with torch.save
replaced by one that writes the first half of the real serialised bytes, flushes them and then
SIGKILLs this process: the state of the disk is exactly that of a job killed mid-write.
"""

import importlib
import io
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
module, path = importlib.import_module(sys.argv[1]), Path(sys.argv[2])
real_save = torch.save


def save_half_then_die(obj, f):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)


torch.save = save_half_then_die
module.save_checkpoint(path, {"algorithm": module.ALGO, "env_id": "Pong-v5", "update": 2, "w": torch.ones(1 << 20)})
raise SystemExit("not reached: the process was to be killed during the write")
