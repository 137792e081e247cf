"""The benchmark runner: matched-simulator launches, refusals, the presets' commands, and a real
experiment in which one run fails and the other still runs."""

import json
import shutil

import pytest
from conftest import runner

from benchmark.run import ConfigError, Plan, launch_plan


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


def test_refusal_is_one_message_and_exit_2(tmp_path):
    proc = runner("--simulators", "63", "--dry-run", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("63 simulators do not split over 2 workers") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


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
        ("throughput", 4, ["-np 3 ", "/a3c_gpu_atari.py --env-id Pong-v5 --seed 1 --total-timesteps 16000 --num-envs 8 ",
                           "/impala_atari.py --env-id Pong-v5 --seed 1 --total-timesteps 64000 --num-envs 8 ",
                           "--batch-size 16"]),
    ],
)  # fmt: skip
def test_dry_run_prints_each_presets_commands(tmp_path, preset, count, expected):
    proc = runner("--preset", preset, "--dry-run", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == count
    for field in expected:
        field = field.format(out=tmp_path)
        assert any(field in line for line in lines), field
    # W&B: one project, the experiment as group, the preset and commit as tags; nothing was run.
    assert all(f"--track --wandb-project-name gala-rl-benchmark --wandb-group {preset} --wandb-tags {preset} commit-" in line
               for line in lines)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_failed_run_is_reported_and_the_others_continue(tiny_experiment):
    experiment, proc = tiny_experiment  # A2C and GALA on Pong-v5 and on the unknown Pongg-v5 (tests/conftest.py)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    entries = {(e["algorithm"], e["env_id"]): e for e in json.loads((experiment / "manifest.json").read_text())}
    assert len(entries) == 4
    for algorithm, script in (("a2c_allreduce", "a2c_allreduce_atari.py"), ("gala_a2c", "gala_a2c_atari.py")):
        # The failure: its exit code and the script's own message, from the stderr the runner saved.
        assert f"FAILED {algorithm} Pongg-v5 sims4 seed1: exit 2" in proc.stderr
        assert "unknown env id 'Pongg-v5'" in (experiment / f"{algorithm}/Pongg-v5/sims4/seed1/stderr.txt").read_text()
        bad, good = entries[algorithm, "Pongg-v5"], entries[algorithm, "Pong-v5"]
        assert (bad["status"], bad["returncode"], bad["run_dir"]) == ("failed", 2, None)
        assert (good["status"], good["returncode"]) == ("ok", 0)
        expected = {"experiment": "tiny", "preset": "smoke", "script": script, "simulators": 4, "ranks": 2,
                    "envs_per_rank": 2, "workers": 2, "total_timesteps": 6000, "wandb_group": "tiny",
                    "workdir": f"{algorithm}/Pong-v5/sims4/seed1"}  # fmt: skip
        assert {key: good[key] for key in expected} == expected
        config = json.loads((experiment / good["run_dir"] / "config.json").read_text())
        assert [config[key] for key in ("algorithm", "env_id", "total_envs", "seed")] == [algorithm, "Pong-v5", 4, 1]
        assert "--track" in good["command"] and (experiment / good["workdir"] / "wandb").is_dir()
        utilisation = good["utilisation"]
        assert utilisation["interval_s"] == 1.0
        assert len(utilisation["cpu_percent"]) >= 2
        assert all(0 <= c <= 100 for c in utilisation["cpu_percent"])
        if shutil.which("nvidia-smi") is None:
            assert utilisation["gpu_percent"] is None
