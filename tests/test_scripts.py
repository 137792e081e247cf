"""The four scripts share code by copy, so that each one can be read and forked alone: these tests keep
the copies identical (the plumbing section at the end of every script, and the environment, model and
A2C pieces at the top) and the training function short enough to read in one sitting."""

import ast
import difflib
import importlib
from pathlib import Path

import pytest
import torch
from conftest import DEVICES

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["a2c_allreduce_atari.py", "gala_a2c_atari.py", "a3c_gpu_atari.py", "impala_atari.py"]
A2C_FAMILY = SCRIPTS[:3]
PLUMBING = "# Plumbing, identical in the four scripts"


def text(script: str) -> str:
    return (ROOT / script).read_text()


def plumbing(script: str) -> str:
    """From the dashed line above the plumbing header to the end of the file."""
    source = text(script)
    header = source.index(PLUMBING)
    return source[source.rindex("\n# ---", 0, header) :]


def definitions(script: str) -> dict[str, str]:
    """Top-level functions and classes of a script: name -> source."""
    source = text(script)
    nodes = ast.parse(source).body
    return {n.name: ast.get_source_segment(source, n) for n in nodes if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def assert_same(copies: dict[str, str], what: str) -> None:
    first, reference = next(iter(copies.items()))
    for script, copy in copies.items():
        if copy != reference:
            lines = difflib.unified_diff(reference.splitlines(), copy.splitlines(), first, script, lineterm="")
            diff = "\n".join(lines)
            pytest.fail(f"{what} differs between {first} and {script}:\n{diff}")


def test_the_plumbing_section_is_identical_in_the_four_scripts():
    assert_same({script: plumbing(script) for script in SCRIPTS}, "the plumbing section")


@pytest.mark.parametrize("name", ["ConfigError", "make_env", "EpisodeStats", "layer_init", "Agent"])
def test_environment_and_model_are_identical_in_the_four_scripts(name):
    assert_same({script: definitions(script)[name] for script in SCRIPTS}, name)


@pytest.mark.parametrize("name", ["a2c_targets", "a2c_loss_sums"])
def test_a2c_targets_and_loss_are_identical_in_the_a2c_family(name):
    assert_same({script: definitions(script)[name] for script in A2C_FAMILY}, name)


def test_a2c_and_gala_share_the_learning_rate_schedule():
    """`diff a2c_allreduce_atari.py gala_a2c_atari.py` shows the gossip and nothing else: the learning-rate schedule
    (tests/test_gala_a2c.py checks it against its formula) and the help of its warm-up are the same in both."""
    pair = ["a2c_allreduce_atari.py", "gala_a2c_atari.py"]
    assert_same({script: definitions(script)["learning_rate"] for script in pair}, "learning_rate")
    assert_same({script: field_help(script)["lr_warmup_updates"] for script in pair}, "the --help of lr_warmup_updates")


@pytest.mark.parametrize("script", SCRIPTS)
def test_train_reads_in_one_sitting(script):
    """train() holds set-up, the loop and teardown as short named steps: at most 120 lines (GALA,
    whose teardown drains the gossip and averages the agents, 185)."""
    source = text(script)
    (train,) = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "train"]
    assert train.end_lineno - train.lineno + 1 <= (185 if script == "gala_a2c_atari.py" else 120)


# --- devices: the plumbing's device choices, the same in the four scripts (one script's copy is checked) --------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("script", SCRIPTS)
def test_checkpoints_are_saved_on_the_cpu(tmp_path, script, device):
    """A model and optimizer on DEVICE, saved by the script's save_checkpoint: every tensor in the file is a CPU
    tensor (so that a torch.load without map_location reads it on a machine without CUDA), values unchanged."""
    module = importlib.import_module(script[: -len(".py")])
    agent = module.Agent(4).to(device)
    optimizer = torch.optim.RMSprop(agent.parameters(), lr=1e-3)
    agent(torch.zeros(2, 4, 84, 84, dtype=torch.uint8, device=device))[1].sum().backward()
    optimizer.step()
    state = {"model": agent.state_dict(), "optimizer": optimizer.state_dict(), "rng": [torch.get_rng_state()]}
    module.save_checkpoint(tmp_path / "checkpoint.pt", state)
    locations = []
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=False,
                       map_location=lambda storage, location: locations.append(location) or storage)
    assert locations and set(locations) == {"cpu"}
    for name, value in agent.state_dict().items():
        assert torch.equal(saved["model"][name], value.cpu()), name
    assert saved["optimizer"]["param_groups"] == optimizer.state_dict()["param_groups"]


def test_threads_are_divided_only_among_the_ranks_that_share_cores():
    from a2c_allreduce_atari import threads_per_rank

    node = [{0, 1, 2, 3}] * 4  # mpirun without binding: every rank may use every core
    assert threads_per_rank({0, 1, 2, 3}, node) == 1
    assert threads_per_rank(set(range(8)), [set(range(8))] * 3) == 2
    bound = [{0, 1}, {2, 3}, {4, 5}]  # srun --cpus-per-task 2: each rank bound to cores of its own
    assert all(threads_per_rank(mine, bound) == 2 for mine in bound)
    assert threads_per_rank({0}, [{0}, {0}, {0}]) == 1  # never below 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("uses_gpu", [True, False])
def test_set_up_puts_a_rank_on_the_device_asked(tmp_path, monkeypatch, device, uses_gpu):
    """In a world of one: a rank that uses a GPU gets cuda:0 with --cuda and CUDA present (the current device
    too), any other the CPU; TF32 is off."""
    import tyro
    from mpi4py import MPI

    import a2c_allreduce_atari as a2c

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    args = tyro.cli(a2c.Args, args=["--no-cuda"] if device == "cpu" else ["--cuda"])
    try:
        got = a2c.set_up(MPI.COMM_WORLD, args, uses_gpu)[0]
    finally:
        torch.set_num_threads(threads)
    expected = "cuda:0" if device == "cuda" and uses_gpu else "cpu"
    assert str(got) == expected
    if expected == "cuda:0":
        assert torch.cuda.current_device() == 0
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.gpu
@pytest.mark.parametrize("script", ["a2c_allreduce_atari.py", "gala_a2c_atari.py", "impala_atari.py"])
def test_a_cpu_checkpoint_resumed_on_a_gpu_draws_new_cuda_numbers(script):
    """A checkpoint written on the CPU has no CUDA RNG state: resumed on a GPU, the CUDA generator is seeded from
    the restored torch one, not left where the run's own seeding put it (which would replay the run's start)."""
    module = importlib.import_module(script[: -len(".py")])
    cuda = torch.device("cuda:0")
    torch.manual_seed(1)
    fresh = torch.rand(8, device=cuda)
    torch.manual_seed(1)
    module.set_rng_state({"torch": torch.get_rng_state(), "cuda": None}, cuda)
    resumed = torch.rand(8, device=cuda)
    assert not torch.equal(fresh, resumed)
    state = module.rng_state(cuda)  # a GPU checkpoint restores exactly
    expected = torch.rand(8, device=cuda)
    module.set_rng_state(state, cuda)
    assert torch.equal(torch.rand(8, device=cuda), expected)


# --- the command line: runtime fields are no flags, the help lines the scripts share say the same ---------------
RUNTIME = ["world_size", "total_envs", "batch_size", "num_updates", "start_step", "start_seconds", "num_workers",
           "num_actors"]
"""Args fields filled in at runtime (IMPALA's --batch-size is a flag of its own: trajectories per update)"""
SHARED_HELP = ["seed", "torch_deterministic", "cuda", "track", "wandb_project_name", "wandb_entity", "wandb_group",
               "wandb_tags", "env_id", "total_timesteps", "max_seconds", "env_threads", "torch_threads", "print_every",
               "checkpoint_every", "eval_episodes", "debug_slow_rank", "debug_slow_seconds", "debug_slow_factor"]
"""Args fields whose --help line is the same in every script"""


def field_help(script: str) -> dict[str, str]:
    """Args' fields of a script: name -> the docstring under it (tyro's help line)."""
    (args,) = [n for n in ast.parse(text(script)).body if isinstance(n, ast.ClassDef) and n.name == "Args"]
    found = {}
    for field, doc in zip(args.body, args.body[1:]):
        if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
            found[field.target.id] = " ".join(doc.value.value.split())
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_runtime_fields_are_not_flags(script, capsys):
    """--help lists none of the fields filled in at runtime, and the parser refuses them."""
    import tyro

    module = importlib.import_module(script[: -len(".py")])
    with pytest.raises(SystemExit) as exit_:
        tyro.cli(module.Args, args=["--help"])
    assert exit_.value.code == 0
    help_ = capsys.readouterr().out
    runtime = [name for name in RUNTIME if not (script == "impala_atari.py" and name == "batch_size")]
    present = [name for name in runtime if hasattr(module.Args, name)]
    assert {"world_size", "total_envs", "num_updates", "start_step", "start_seconds"} <= set(present)
    for name in present:
        flag = "--" + name.replace("_", "-")
        assert flag not in help_, flag
        with pytest.raises(SystemExit) as exit_:
            tyro.cli(module.Args, args=[flag, "3"])
        assert exit_.value.code == 2, flag
    assert ("--batch-size" in help_) == (script == "impala_atari.py")



@pytest.mark.parametrize("script", SCRIPTS)
def test_no_help_line_states_a_default_of_its_own(script):
    """tyro adds "(default: X)" to every line: a default written in the help too would show twice (an Optional
    whose None means something says it with default_is)."""
    assert [name for name, line in field_help(script).items() if "(default" in line] == []


@pytest.mark.parametrize("name", SHARED_HELP)
def test_the_help_lines_the_scripts_share_are_identical(name):
    assert_same({script: field_help(script)[name] for script in SCRIPTS}, f"the --help line of {name}")


def test_diagnosis_flags_say_so():
    assert field_help("gala_a2c_atari.py")["debug_lockstep_age"].startswith("diagnosis: ")
    assert field_help("a2c_allreduce_atari.py")["check_sync_every"].startswith("diagnosis: ")
    assert all("for tests" not in line for script in SCRIPTS for line in field_help(script).values())
