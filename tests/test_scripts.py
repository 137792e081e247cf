"""The four scripts share code by copy, so that each one can be read and forked alone: these tests keep
the copies identical (the plumbing section at the end of every script, and the environment, model and
A2C pieces at the top) and the training function short enough to read in one sitting."""

import ast
import difflib
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("script", SCRIPTS)
def test_train_reads_in_one_sitting(script):
    """train() holds set-up, the loop and teardown as short named steps: at most 120 lines (GALA,
    whose teardown drains the gossip and averages the agents, 185)."""
    source = text(script)
    (train,) = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "train"]
    assert train.end_lineno - train.lineno + 1 <= (185 if script == "gala_a2c_atari.py" else 120)
