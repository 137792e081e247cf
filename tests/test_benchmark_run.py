"""The benchmark runner: matched-simulator launches, refusals, the presets' commands and order, variants, and a
real experiment in which one run fails and the other still runs, then run again: it continues."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from conftest import ENV, read_ckpt, runner, runner_in_process, tiny_run

import benchmark.run
from benchmark.__main__ import main as benchmark_main
from benchmark.common import ROOT, ManifestEntry, read_manifest, scalar_events
from benchmark.report.load import read_events
from benchmark.run import (
    Config,
    ConfigError,
    Plan,
    continued,
    earlier_entries,
    execute,
    gpu_groups,
    gpu_ranks,
    launch_plan,
    plan_runs,
    report_failure,
    run_experiment,
    write_manifest,
)


def test_launch_plan_matches_total_simulators():
    # A2C and GALA: R x S; A3C: R x S + the store rank; IMPALA: the learner + A actors x S.
    assert launch_plan("gala_a2c", 64, 4) == Plan(ranks=4, envs_per_rank=16, workers=4)
    assert launch_plan("a2c_allreduce", 64, 4) == Plan(ranks=4, envs_per_rank=16, workers=4)
    assert launch_plan("a3c_gpu", 64, 4) == Plan(ranks=5, envs_per_rank=16, workers=4)
    assert launch_plan("impala", 64, 4) == Plan(ranks=5, envs_per_rank=16, workers=4)
    assert launch_plan("impala", 16, 2, impala_batch_size=16) == Plan(ranks=3, envs_per_rank=8, workers=2)
    for algorithm in ("gala_a2c", "a2c_allreduce", "a3c_gpu"):
        plan = launch_plan(algorithm, 1024, 4)
        assert plan.workers * plan.envs_per_rank == 1024


@pytest.mark.parametrize(
    "algorithm, simulators, workers, batch, message",
    [
        ("gala_a2c", 64, 3, 32, "gala_a2c: 64 simulators do not split over 3 workers"),
        ("a3c_gpu", 63, 4, 32, "a3c_gpu: 63 simulators do not split over 4 workers"),
        ("impala", 2, 4, 32, "impala: 2 simulators do not split over 4 actors"),
        ("a2c_allreduce", 64, 0, 32, "--workers must be at least 1, got 0"),
        ("impala", 96, 4, 32, "impala: --batch-size 32 trajectories is not a multiple of the 24 simulators per actor"),
        ("impala", 256, 4, 32, "impala: --batch-size 32 trajectories is not a multiple of the 64 simulators per actor"),
    ],
)
def test_launch_plan_refuses_totals_that_do_not_split(algorithm, simulators, workers, batch, message):
    with pytest.raises(ConfigError, match=message):
        launch_plan(algorithm, simulators, workers, impala_batch_size=batch)


def assert_refused(proc, message: str, out) -> None:
    """Exit 2, the message once and one error line on stderr, no traceback, nothing printed or written in OUT."""
    assert proc.returncode == 2
    assert proc.stderr.count(message) == 1 and proc.stderr.count("error:") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--simulators", "63"], "63 simulators do not split over 2 workers"),
        (["--preset", "learning", "--simulators", "33"], "a2c_allreduce: 33 simulators do not split over 2 workers"),
        (["--preset", "learning", "--simulators", "64"], "impala: --batch-size 16 trajectories is not a multiple of"),
        (["--variant", "fast=dqn:--lr 1"], "--variant 'fast=dqn:--lr 1': unknown algorithm 'dqn'"),
        (["--variant", "gala_a2c=gala_a2c:--sync-freq 0"], "the label 'gala_a2c' is a plain algorithm's"),
    ],
)
def test_refusal_is_one_message_and_exit_2(tmp_path, capsys, args, message):
    assert_refused(runner_in_process(capsys, *args, "--dry-run", "--out", str(tmp_path)), message, tmp_path)


def test_a_refusal_on_the_command_line_is_one_message_and_exit_2(tmp_path):
    """The refusals above, checked in this process, are what a user sees: one launch as typed."""
    proc = runner("--simulators", "63", "--dry-run", "--out", str(tmp_path), cwd=tmp_path)
    assert_refused(proc, "63 simulators do not split over 2 workers", tmp_path)


@pytest.mark.parametrize(
    "preset, count, expected",
    [
        ("smoke", 8, ["-np 3 ", "/impala_atari.py --env-id Pong-v5 --seed 2 --total-timesteps 12000 --num-envs 4 ",
                      "--batch-size 32 --eval-episodes 2 --log-every 5"]),
        ("paper", 240, ["cd {out}/paper/impala/Qbert-v5/sims64/seed10 && ", "-np 5 ",
                        "/impala_atari.py --env-id Qbert-v5 --seed 10 --total-timesteps 40000000 --num-envs 16 ",
                        "--eval-episodes 30"]),
        ("sweep", 600, ["cd {out}/sweep/gala_a2c/Seaquest-v5/sims1024/seed3 && ", "-np 4 ",
                        "/gala_a2c_atari.py --env-id Seaquest-v5 --seed 3 --total-timesteps 40000000 --num-envs 256 "]),
        # 200 updates of 5 steps x 16 simulators; IMPALA: 200 of 16 trajectories x 20 steps.
        ("throughput", 4, ["-np 3 ",
                           "/a3c_gpu_atari.py --env-id Pong-v5 --seed 1 --total-timesteps 16000 --num-envs 8 ",
                           "/impala_atari.py --env-id Pong-v5 --seed 1 --total-timesteps 64000 --num-envs 8 ",
                           "--batch-size 16"]),
        # paper-shape's launch on each of the six games, each final policy evaluated; Breakout last in each seed.
        ("six-games", 24, ["cd {out}/six-games/gala_a2c/Breakout-v5/sims64/seed2 && ", "-np 4 ",
                           "/gala_a2c_atari.py --env-id Breakout-v5 --seed 2 --total-timesteps 2000000 --num-envs 16 ",
                           "--save-model --checkpoint-every 100000 --eval-episodes 10"]),
        # six-games' Seaquest seed 2 of both, to 5M steps.
        ("horizon", 2, ["cd {out}/horizon/gala_a2c/Seaquest-v5/sims64/seed2 && ", "-np 4 ",
                        "/gala_a2c_atari.py --env-id Seaquest-v5 --seed 2 --total-timesteps 5000000 --num-envs 16 "]),
        # three variants, seeds 1-2.
        ("ladder", 6, ["cd {out}/ladder/gala_exact/Breakout-v5/sims64/seed2 && ", "-np 4 ",
                       "--num-peers 3 --debug-lockstep-age 0", "--debug-clip-per-rank", "--learning-rate 7e-4"]),
        # 16 simulators a worker: A2C at 16, 128, 256; GALA at 128 and 256 only.
        ("fig1a", 10, ["cd {out}/fig1a/a2c_allreduce/Breakout-v5/sims16/seed2 && ", "mpirun -np 1 /",
                       "cd {out}/fig1a/gala_a2c/Breakout-v5/sims256/seed1 && ", "-np 16 ",
                       "/gala_a2c_atari.py --env-id Breakout-v5 --seed 1 --total-timesteps 1000000 --num-envs 16 "]),
        # IMPALA: one actor's unroll of its 16 simulators per update, not annealed; the others take neither flag.
        ("learning", 10, ["cd {out}/learning/impala/Breakout-v5/sims32/seed2 && ", "-np 3 ",
                          "/impala_atari.py --env-id Breakout-v5 --seed 2 --total-timesteps 500000 --num-envs 16 ",
                          "--batch-size 16 --unroll-length 20 --no-anneal-lr",
                          "/a3c_gpu_atari.py --env-id Breakout-v5 --seed 2 --total-timesteps 500000 --num-envs 16 "
                          "--torch-threads 1 --env-threads 1 --track --wandb-project-name gala-rl-benchmark "
                          "--wandb-group learning --wandb-tags learning commit-"]),
    ],
)
def test_dry_run_prints_each_presets_commands(tmp_path, capsys, preset, count, expected):
    proc = runner_in_process(capsys, "--preset", preset, "--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == count
    for field in expected:
        field = field.format(out=tmp_path)
        assert any(field in line for line in lines), field
    # W&B: one project, the experiment as group, the preset and commit as tags; nothing was run.
    tracked = f"--track --wandb-project-name gala-rl-benchmark --wandb-group {preset} --wandb-tags {preset} commit-"
    assert all(tracked in line for line in lines)
    assert list(tmp_path.iterdir()) == []


def test_failed_run_is_reported_and_the_others_continue(tiny_experiment):
    experiment, proc = tiny_experiment  # A2C and GALA on Pong-v5 and on the unknown Pongg-v5 (tests/conftest.py)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    entries = {(e["algorithm"], e["env_id"]): e for e in json.loads((experiment / "manifest.json").read_text())}
    assert len(entries) == 4
    for algorithm, script in (("a2c_allreduce", "a2c_allreduce_atari.py"), ("gala_a2c", "gala_a2c_atari.py")):
        # The failure: its exit code and the script's own message, from the stderr the runner saved.
        assert f"FAILED {algorithm} Pongg-v5 sims2 seed1: exit 2" in proc.stderr
        assert "unknown env id 'Pongg-v5'" in (experiment / f"{algorithm}/Pongg-v5/sims2/seed1/stderr.txt").read_text()
        bad, good = entries[algorithm, "Pongg-v5"], entries[algorithm, "Pong-v5"]
        assert (bad["status"], bad["returncode"], bad["run_dir"]) == ("failed", 2, None)
        assert (good["status"], good["returncode"]) == ("ok", 0)
        expected = {"experiment": "tiny", "preset": "smoke", "script": script, "simulators": 2, "ranks": 2,
                    "envs_per_rank": 1, "workers": 2, "total_timesteps": 3000, "wandb_group": "tiny",
                    "workdir": f"{algorithm}/Pong-v5/sims2/seed1"}
        assert {key: good[key] for key in expected} == expected
        config = json.loads((experiment / good["run_dir"] / "config.json").read_text())
        assert [config[key] for key in ("algorithm", "env_id", "total_envs", "seed")] == [algorithm, "Pong-v5", 2, 1]
        assert "--track" in good["command"] and (experiment / good["workdir"] / "wandb").is_dir()
        utilisation = good["utilisation"]
        assert utilisation["interval_s"] == 1.0
        assert len(utilisation["cpu_percent"]) >= 2
        assert all(0 <= c <= 100 for c in utilisation["cpu_percent"])
        if shutil.which("nvidia-smi") is None:
            assert utilisation["gpu_percent"] is None


def test_learning_runs_seed_major_with_variants_after():
    """A study cut short still has whole seeds of GALA and A2C: they go first, seed by seed, then A3C and IMPALA;
    a variant runs GALA's seeds with its flags last, under its own label."""
    runs = plan_runs(Config(preset="learning", variant=("gala_sync=gala_a2c:--sync-freq 0",)))
    assert [(r.label, r.seed) for r in runs] == [
        ("a2c_allreduce", 1), ("gala_a2c", 1), ("a2c_allreduce", 2), ("gala_a2c", 2),
        ("a2c_allreduce", 3), ("gala_a2c", 3), ("a3c_gpu", 1), ("impala", 1), ("a3c_gpu", 2), ("impala", 2),
        ("gala_sync", 1), ("gala_sync", 2), ("gala_sync", 3),
    ]
    ranks = {"a2c_allreduce": 2, "gala_a2c": 2, "a3c_gpu": 3, "impala": 3}  # A3C's store rank, IMPALA's learner
    for r in runs:
        assert (r.simulators, r.ranks, r.envs_per_rank, r.total_timesteps) == (32, ranks[r.algorithm], 16, 500_000)
    variant = runs[-1]
    assert (variant.script, variant.workdir) == ("gala_a2c_atari.py", "gala_sync/Breakout-v5/sims32/seed3")
    assert variant.command[-4:] == ["--exp-name", "gala_sync", "--sync-freq", "0"]


def test_a_run_again_continues_the_experiment(tiny_experiment, tmp_path):
    """The tiny experiment (a copy) run again: its ok runs (on Pong) are skipped and their entries kept; the failed
    run and the one marked stopped here (both on the unknown game, so they fail again at once) run again."""
    experiment, _ = tiny_experiment
    copy = shutil.copytree(experiment, tmp_path / "tiny", symlinks=True)
    manifest = copy / "manifest.json"
    before = {(e["label"], e["env_id"]): e for e in json.loads(manifest.read_text())}
    before["a2c_allreduce", "Pongg-v5"]["status"] = "stopped"
    manifest.write_text(json.dumps(list(before.values())))
    ok = [copy / before[algorithm, "Pong-v5"]["workdir"] for algorithm in ("a2c_allreduce", "gala_a2c")]
    untouched = {path: path.stat().st_mtime_ns for workdir in ok for path in workdir.rglob("*")}
    stderr = {a: copy / before[a, "Pongg-v5"]["workdir"] / "stderr.txt" for a in ("a2c_allreduce", "gala_a2c")}
    for path in stderr.values():
        path.write_text("from the first invocation\n")

    proc = tiny_run(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the unknown game fails again
    assert proc.stdout.count(f"skipped 2 of 4 runs, already ok in {manifest}") == 1, proc.stdout
    assert f"2 runs in {copy}" in proc.stdout and "0 of 2 runs ok, 2 failed" in proc.stdout
    after = {(e["label"], e["env_id"]): e for e in json.loads(manifest.read_text())}
    assert after.keys() == before.keys()
    for algorithm in ("a2c_allreduce", "gala_a2c"):
        # Skipped: its entry as it was, nothing in its directory written.
        assert after[algorithm, "Pong-v5"] == before[algorithm, "Pong-v5"]
        # Run again, the stopped one as the failed one: a new entry, and a new stderr from the script.
        assert f"FAILED {algorithm} Pongg-v5 sims2 seed1: exit 2" in proc.stderr
        assert (after[algorithm, "Pongg-v5"]["status"], after[algorithm, "Pongg-v5"]["returncode"]) == ("failed", 2)
        assert "unknown env id 'Pongg-v5'" in stderr[algorithm].read_text()
    assert {path: path.stat().st_mtime_ns for workdir in ok for path in workdir.rglob("*")} == untouched


def test_a_run_again_lists_only_what_is_left_and_refuses_other_flags(tiny_experiment, capsys):
    experiment, _ = tiny_experiment
    proc = tiny_run(experiment.parent, "--dry-run", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    assert [line.split(" && ")[0] for line in proc.stdout.splitlines()] == [
        f"cd {experiment}/{algorithm}/Pongg-v5/sims2/seed1" for algorithm in ("a2c_allreduce", "gala_a2c")]
    assert "skipped 2 of 4 runs, already ok in" in proc.stderr
    # The same experiment with other steps would mix two experiments under one name.
    proc = tiny_run(experiment.parent, "--total-timesteps", "8000", "--dry-run", capsys=capsys)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("error: 2 run(s) already ok in this experiment were launched otherwise") == 1, proc.stderr
    assert "--total-timesteps 3000" in proc.stderr and "--total-timesteps 8000" in proc.stderr


def test_help_lists_both_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        benchmark_main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "{run,report}" in out and "manifest.json" in out


# A stand-in for a script (python -c CODE, run in the run's WORKDIR): it writes its run directory, and in it the
# summary.json the scripts write at the end of every run (stopped: ended early by a signal), then exits with CODE.
FAKE_SCRIPT = """
import json, pathlib, sys
stopped, code, write = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
run_dir = pathlib.Path("runs/Pong-v5__fake__1__1")
if write != "no run directory":
    run_dir.mkdir(parents=True)
if write == "summary":
    summary = {"algorithm": "a2c_allreduce", "global_step": 640, "stopped": stopped, "sps": 100.0}
    (run_dir / "summary.json").write_text(json.dumps(summary))
sys.exit(code)
"""


@pytest.mark.parametrize(
    "stopped, code, write, status, said",
    [
        (False, 0, "summary", "ok", None),
        (True, 0, "summary", "stopped", None),
        (True, 3, "summary", "failed", None),
        (False, 0, "no summary", "failed", "exit 0 but no {run_dir}/summary.json"),
        (False, 0, "no run directory", "failed", "exit 0 but no new run directory in {workdir}/runs"),
    ],
    ids=["ok", "stopped", "exit 3", "no summary", "no run directory"],
)
def test_the_status_of_a_run_comes_from_its_exit_code_and_summary(
    tmp_path, capsys, stopped, code, write, status, said
):
    planned = plan_runs(Config(preset="smoke", algorithms=("a2c_allreduce",), seeds=(1,)))[0]
    run = replace(planned, command=[sys.executable, "-c", FAKE_SCRIPT, json.dumps(stopped), str(code), write])
    entry = execute(run, tmp_path, interval=0.05)
    assert (entry.status, entry.returncode) == (status, code)
    workdir = tmp_path / run.workdir
    run_dir = workdir / "runs/Pong-v5__fake__1__1"
    assert entry.run_dir == (None if write == "no run directory" else f"{run.workdir}/runs/{run_dir.name}")
    assert asdict(replace(entry, run_dir=None, status="planned", returncode=None, wall_seconds=0.0,
                          utilisation=None)) == asdict(run)  # the launch is kept as planned
    if said is None:
        return
    # The reason ends the run's stderr, so the runner's report of the failure says it.
    said = said.format(run_dir=run_dir, workdir=workdir)
    assert said in (workdir / "stderr.txt").read_text().splitlines()[-1]
    report_failure(entry, tmp_path)
    err = capsys.readouterr().err
    assert "FAILED a2c_allreduce Pong-v5 sims8 seed1: exit 0" in err and said in err, err


def test_an_experiment_of_stand_ins_keeps_its_manifest_and_continues(tmp_path, monkeypatch, capsys):
    """The runner on stand-ins for the script (FAKE_SCRIPT): seed 1 ends ok, seed 2 is stopped, seed 3 exits 0
    without a summary. Run again, the experiment skips seed 1 and runs the others again."""
    outcome = {"1": ("false", "0", "summary"), "2": ("true", "0", "summary"), "3": ("false", "0", "no summary")}

    def stand_in(script: str, *args: str, np: int | None = None) -> list[str]:
        seed = args[args.index("--seed") + 1]
        return [sys.executable, "-c", FAKE_SCRIPT, *outcome[seed], str(ROOT / script), *args]

    monkeypatch.setattr(benchmark.run, "command", stand_in)
    cfg = Config(preset="smoke", algorithms=("a2c_allreduce",), seeds=(1, 2, 3), name="fake", out=tmp_path,
                 sample_interval=0.05)
    assert run_experiment(cfg) == 1  # a run stopped or failed
    out, err = capsys.readouterr()
    assert "1 of 3 runs ok, 2 failed" in out
    assert "STOPPED a2c_allreduce Pong-v5 sims8 seed2: exit 0" in err
    assert "FAILED a2c_allreduce Pong-v5 sims8 seed3: exit 0" in err and "summary.json: the run did not end" in err
    manifest = tmp_path / "fake" / "manifest.json"
    entries = read_manifest(manifest)
    assert [(e.seed, e.status, e.returncode) for e in entries] == [(1, "ok", 0), (2, "stopped", 0), (3, "failed", 0)]
    assert all(e.run_dir == f"{e.workdir}/runs/Pong-v5__fake__1__1" for e in entries)

    assert run_experiment(cfg) == 1
    out, err = capsys.readouterr()
    assert f"skipped 1 of 3 runs, already ok in {manifest}" in out and "0 of 2 runs ok, 2 failed" in out
    assert read_manifest(manifest)[0] == entries[0]  # the skipped run's entry as it was


def test_the_manifest_is_a_list_of_entries(tmp_path):
    """What the runner writes reads back as the same entries."""
    runs = plan_runs(Config(preset="learning", variant=("gala_sync=gala_a2c:--sync-freq 0",)))
    done = {run.key: replace(run, run_dir=f"{run.workdir}/runs/x", status="ok", returncode=0, wall_seconds=1.5,
                             utilisation={"interval_s": 1.0, "cpu_percent": [50.0], "gpu_percent": None})
            for run in runs}
    path = tmp_path / "manifest.json"
    write_manifest(path, done)
    written = json.loads(path.read_text())
    assert [tuple(e[k] for k in ("label", "env_id", "simulators", "seed")) for e in written] == sorted(done)
    assert read_manifest(path) == [done[key] for key in sorted(done)]
    assert earlier_entries(path) == done and earlier_entries(tmp_path / "none.json") == {}
    assert all(isinstance(e, ManifestEntry) for e in read_manifest(path))


def test_a_run_cut_short_continues_from_its_checkpoint_and_its_curve_joins(tmp_path):
    """A GALA run (2 agents x 1 simulator, a checkpoint every 1,000 steps) whose runner is killed outright once both
    agents wrote a checkpoint, as the end of a session or a lost node kills it: run again, the experiment continues
    the run from that checkpoint (--resume) instead of starting it again, and the report joins the two launches
    into one curve: the first up to the checkpoint's step, then the second."""
    args = ("--name", "cut", "--out", str(tmp_path), "--algorithms", "gala_a2c", "--env-ids", "Pong-v5", "--seeds",
            "1", "--simulators", "2", "--workers", "2", "--total-timesteps", "4000",
            "--extra=--no-cuda --save-model --checkpoint-every 1000 --log-every 5")
    workdir = tmp_path / "cut/gala_a2c/Pong-v5/sims2/seed1"
    first = subprocess.Popen([sys.executable, "-m", "benchmark", "run", *args], cwd=tmp_path, start_new_session=True,
                             env={**ENV, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Both agents' files: GALA's agents checkpoint on their own schedules, either may be first.
    while not all(list(workdir.glob(f"runs/*/checkpoint/agent{r}.pt")) for r in (0, 1)) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the runner, mpirun and the ranks, with no chance to checkpoint again
    first.wait()
    (killed,) = (workdir / "runs").iterdir()
    assert not (killed / "summary.json").exists()

    proc = runner(*args, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 run(s) continue from the checkpoint an earlier launch left" in proc.stdout
    (entry,) = read_manifest(tmp_path / "cut/manifest.json")
    assert entry.status == "ok" and entry.command[-2:] == ["--resume", f"runs/{killed.name}/checkpoint"]
    continued = tmp_path / "cut" / entry.run_dir
    config = json.loads((continued / "config.json").read_text())
    saved = read_ckpt(killed / "checkpoint/agent0.pt")
    assert config["start_step"] == saved["global_step"] > 0
    own = [e.step for e in scalar_events(continued)[1]["charts/SPS"]]  # the continuation's own logs
    kept = [step for step in read_events(killed)["charts/SPS"].step if step <= config["start_step"]]
    # The joined curve: the killed launch's logs up to its checkpoint, then the continuation's, time going on.
    joined = read_events(continued)["charts/SPS"]
    assert joined.step.tolist() == kept + own and own[0] > config["start_step"] and own[-1] == 4000
    assert all(later >= earlier for earlier, later in zip(joined.wall, joined.wall[1:]))


def test_labels_pick_arms_of_the_preset_and_refuse_others():
    runs = plan_runs(Config(preset="paper-shape", labels=("gala_sync",), seeds=(1,)))
    assert [(r.label, r.seed) for r in runs] == [("gala_sync", 1)] and "--sync-freq" in runs[0].command
    with pytest.raises(ConfigError, match="--labels gala: not an arm here"):
        plan_runs(Config(preset="paper-shape", labels=("gala",)))


def test_a_run_continues_the_same_run_of_the_experiment_it_extends(tmp_path):
    """A run of an experiment that extends another (the horizon preset: six-games' runs to more steps) starts from
    the final checkpoint of the same run there, unless it left a checkpoint of its own; a run there of more steps
    than planned, or of another seed, is not continued. The checkpoint is named relative to the run's workdir."""
    (planned,) = plan_runs(Config(preset="horizon", algorithms=("a2c_allreduce",), out=tmp_path))

    def launch(experiment: str, name: str, **config) -> Path:
        run_dir = tmp_path / experiment / planned.workdir / "runs" / name
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps({
            "env_id": "Seaquest-v5", "seed": 2, "total_envs": 64, "world_size": 4, "total_timesteps": 2_000_000,
            **config}))
        (run_dir / "checkpoint.pt").write_bytes(b"")
        return run_dir / "checkpoint.pt"

    def resumes(run: ManifestEntry):
        command = continued(run, tmp_path / "horizon", "six-games").command
        return command[-1] if command[-2] == "--resume" else None

    launch("six-games", "longer", total_timesteps=6_000_000)
    launch("six-games", "other-seed", seed=1)
    assert resumes(planned) is None
    final = launch("six-games", "final")
    workdir = tmp_path / "horizon" / planned.workdir
    assert resumes(planned) == os.path.relpath(final, workdir)
    assert (workdir / resumes(planned)).resolve() == final.resolve()
    own = launch("horizon", "cut-short", total_timesteps=5_000_000)  # its own checkpoint wins
    assert resumes(planned) == os.path.relpath(own, workdir)


def test_the_runners_constants_are_the_scripts_defaults():
    """The presets name IMPALA's default batch and unroll literally (importing a script at the runner's import would
    start MPI); they must stay the script's defaults."""
    assert benchmark.run.IMPALA_BATCH == benchmark.run.defaults("impala").batch_size
    assert benchmark.run.PRESETS["learning"].flags_of["impala"][:2] == (
        "--unroll-length", str(benchmark.run.defaults("impala").unroll_length))


# --- GPUs: every run at once on GPUs of its own ----------------------------------------------------------------
def test_a_runs_gpu_ranks_follow_the_scripts_device_placement():
    """A2C and GALA: every rank; A3C: the workers (the store rank serves on the CPU); IMPALA: the learner, and the
    actors too with --actor-device cuda; nobody with --no-cuda (the last switch wins)."""
    runs = {run.algorithm: run for run in plan_runs(Config(preset="smoke", seeds=(1,), env_ids=("Pong-v5",)))}
    assert {a: (r.ranks, gpu_ranks(r)) for a, r in runs.items()} == {
        "a2c_allreduce": (2, 2), "gala_a2c": (2, 2), "a3c_gpu": (3, 2), "impala": (3, 1)}
    impala = runs["impala"]
    assert gpu_ranks(replace(impala, command=[*impala.command, "--actor-device", "cuda"])) == 3
    assert gpu_ranks(replace(impala, command=[*impala.command, "--actor-device=cuda", "--actor-device=cpu"])) == 1
    a2c = runs["a2c_allreduce"]
    assert gpu_ranks(replace(a2c, command=[*a2c.command, "--no-cuda"])) == 0
    assert gpu_ranks(replace(a2c, command=[*a2c.command, "--no-cuda", "--cuda"])) == 2


def test_gpu_groups_are_disjoint_while_there_are_enough():
    gpus = ["0", "1", "2", "3"]
    assert gpu_groups(gpus, 2, 2) == [["0", "1"], ["2", "3"]]
    assert gpu_groups(gpus, 2, 4) == [["0"], ["1"], ["2"], ["3"]]  # more runs at once: one GPU each
    assert gpu_groups(gpus, 3, 1) == [["0", "1", "2"]]
    assert gpu_groups(gpus, 1, 6) == [["0"], ["1"], ["2"], ["3"], ["0"], ["1"]]  # --max-parallel past the GPUs
    assert gpu_groups(["0"], 4, 1) == [["0"]]


def test_the_runner_caps_its_parallelism_by_the_gpus(monkeypatch, capsys, tmp_path):
    """With 4 GPUs (faked) and many cores, 2-rank A2C runs go 2 at once, 2 GPUs each; with 3 GPUs, 1 at once."""
    monkeypatch.setattr(benchmark.run, "cores", lambda: 64)
    args = ("--name", "g", "--out", str(tmp_path), "--algorithms", "a2c_allreduce", "--env-ids", "Pong-v5",
            "--seeds", "1", "2", "3", "--simulators", "2", "--workers", "2", "--total-timesteps", "3000", "--dry-run")
    for gpus, expected in ((["0", "1", "2", "3"], "at most 2 at once on 64 cores and 4 GPUs (2 per run)"),
                           (["0", "1", "2"], "at most 1 at once on 64 cores and 3 GPUs (2 per run)"),
                           ([], "at most 32 at once on 64 cores;")):
        monkeypatch.setattr(benchmark.run, "visible_gpus", lambda gpus=gpus: gpus)
        proc = runner_in_process(capsys, *args)
        assert proc.returncode == 0 and expected in proc.stderr, proc.stderr


def test_concurrent_runs_never_share_a_gpu(tmp_path):
    """Six stand-in runs, two at once on 4 GPUs in groups of 2: each sees its group alone (CUDA_VISIBLE_DEVICES),
    and no two runs at once hold the same GPU (each holds a lock file per GPU while it runs)."""
    locks = tmp_path / "locks"
    locks.mkdir()
    code = (f"import os, time\nids = os.environ['CUDA_VISIBLE_DEVICES'].split(',')\n"
            f"for i in ids:\n    os.close(os.open('{locks}/' + i, os.O_CREAT | os.O_EXCL))\n"
            f"time.sleep(0.3)\nfor i in ids:\n    os.unlink('{locks}/' + i)\nprint(','.join(ids))\n")
    (planned,) = plan_runs(Config(preset="smoke", seeds=(1,), env_ids=("Pong-v5",), algorithms=("a2c_allreduce",)))
    runs = [replace(planned, command=[sys.executable, "-c", code], workdir=f"run{i}") for i in range(6)]
    groups = gpu_groups(["0", "1", "2", "3"], 2, 2)
    list(benchmark.run.run_locally(runs, tmp_path, 1.0, 2, groups=groups))
    seen = [(tmp_path / f"run{i}" / "stdout.txt").read_text().strip() for i in range(6)]
    assert sorted(set(seen)) == ["0,1", "2,3"], [(tmp_path / f"run{i}" / "stderr.txt").read_text() for i in range(6)]
