#!/usr/bin/env bash
# GPU smoke test: the four scripts on this machine's GPUs, in under 5 minutes on one GPU.
#
#   bash scripts/gpu_smoke.sh                          # from the repository root, in its environment
#   CUDA_VISIBLE_DEVICES= bash scripts/gpu_smoke.sh    # the same on the CPU path (must pass too)
#   KEEP=1 bash scripts/gpu_smoke.sh                   # keep the runs (the directory is printed)
#
# Each script at 2-3 ranks (mpirun from this environment): a short run that writes a checkpoint, a resume from it
# that writes another and evaluates the policy, then checks: every rank's device in summary.json (GPU ranks on
# cuda:i when CUDA is present, A3C's store rank and IMPALA's actors on the CPU), GALA's gossip messages all read
# (sent == received), the checkpoints read back on the CPU by a torch.load without map_location in a process that
# sees no GPU. Exit 0 when all pass; the first failure stops it with its output.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_smoke.XXXXXX")
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$work"' EXIT; else echo "runs kept in $work"; fi
export WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1 MPIR_CVAR_ENABLE_HEAVY_YIELD=1
device=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
echo "gpu_smoke: $device ($(python -c "import torch; print(torch.cuda.device_count())") GPU(s) visible)"
began=$SECONDS

# launch NAME NP SCRIPT FLAGS...: one run in $work/NAME, its output in $work/NAME.log (shown if it fails)
launch() {
  local name=$1 np=$2 script=$3
  shift 3
  mkdir -p "$work/$name"
  if ! (cd "$work/$name" && mpirun -np "$np" python "$root/$script" --cuda "$@") >"$work/$name.log" 2>&1; then
    cat "$work/$name.log"
    echo "gpu_smoke: FAILED $name" >&2
    exit 1
  fi
}

# check NAME ALGO CHECKPOINT GPU_RANKS: the run's summary.json, devices and checkpoint (GPU_RANKS: "0 1", ...)
check() {
  local name=$1 algo=$2 checkpoint=$3 gpu_ranks=$4
  local run_dir
  run_dir=$(ls -d "$work/$name"/runs/*/)
  python - "$run_dir" "$algo" "$device" "$gpu_ranks" <<'PY'
import json, sys
from pathlib import Path
run_dir, algo, device, gpu_ranks = Path(sys.argv[1]), sys.argv[2], sys.argv[3], [int(r) for r in sys.argv[4].split()]
summary = json.loads((run_dir / "summary.json").read_text())
assert summary["algorithm"] == algo and not summary["stopped"], summary
devices = {r["rank"]: r["device"] for r in summary["ranks"]}
for rank, got in devices.items():
    ok = got.startswith("cuda:") if device == "cuda" and rank in gpu_ranks else got == "cpu"
    assert ok, f"{algo}: rank {rank} on {got}, expected {'a GPU' if device == 'cuda' and rank in gpu_ranks else 'cpu'}"
if algo == "gala_a2c":
    sent, received = (sum(r[k] for r in summary["ranks"]) for k in ("sent", "received"))
    assert sent == received > 0, f"gossip: {sent} sent, {received} received"
print(f"  {algo}: devices {devices}" + (f", gossip {sent} sent = received" if algo == "gala_a2c" else ""))
PY
  # Read back on the CPU: no GPU visible, no map_location.
  CUDA_VISIBLE_DEVICES= python - "$run_dir$checkpoint" <<'PY'
import sys
from pathlib import Path
import torch
path = Path(sys.argv[1])
files = sorted(path.glob("*.pt")) if path.is_dir() else [path]
assert files, path
for f in files:
    state = torch.load(f, weights_only=False)
    tensors = [v for v in state["model"].values()]
    assert all(t.device.type == "cpu" for t in tensors), f
    if "optimizer" in state:
        for s in state["optimizer"]["state"].values():
            assert all(t.device.type == "cpu" for t in s.values() if isinstance(t, torch.Tensor)), f
print(f"  {len(files)} checkpoint file(s) read on the CPU")
PY
}

common=(--env-id Pong-v5 --num-envs 4 --torch-threads 1 --env-threads 1 --print-every 5 --save-model)

# name, ranks, script, algorithm, checkpoint (in the run directory), GPU-using ranks, steps of the first run, flags
smoke() {
  local name=$1 np=$2 script=$3 algo=$4 checkpoint=$5 gpu_ranks=$6 steps=$7
  shift 7
  launch "$name" "$np" "$script" "${common[@]}" --total-timesteps "$steps" "$@"
  local first
  first=$(ls -d "$work/$name"/runs/*/)
  check "$name" "$algo" "$checkpoint" "$gpu_ranks"
  rm -rf "$work/$name.resumed"
  launch "$name.resumed" "$np" "$script" "${common[@]}" --total-timesteps "$((2 * steps))" \
    --resume "$first$checkpoint" --eval-episodes 2 "$@"
  grep -q "resumed from" "$work/$name.resumed.log" || { cat "$work/$name.resumed.log"; exit 1; }
  grep -q "eval argmax" "$work/$name.resumed.log" || { cat "$work/$name.resumed.log"; exit 1; }
  check "$name.resumed" "$algo" "$checkpoint" "$gpu_ranks"
  echo "gpu_smoke: $algo ok ($((SECONDS - began)) s)"
}

smoke a2c 2 a2c_allreduce_atari.py a2c_allreduce checkpoint.pt "0 1" $((2 * 4 * 5 * 50))
smoke gala 3 gala_a2c_atari.py gala_a2c checkpoint "0 1 2" $((3 * 4 * 5 * 50))
smoke a3c 3 a3c_gpu_atari.py a3c_gpu checkpoint.pt "1 2" $((4 * 5 * 100))
smoke impala 3 impala_atari.py impala checkpoint.pt "0" $((8 * 20 * 10)) --batch-size 8
smoke impala_gpu_actors 3 impala_atari.py impala checkpoint.pt "0 1 2" $((8 * 20 * 10)) --batch-size 8 \
  --actor-device cuda
echo "gpu_smoke: all passed on $device in $((SECONDS - began)) s"
