"""The documentation's generated pages match the code they are generated from."""

import difflib
import importlib.util

from conftest import ROOT


def test_cli_reference_is_the_scripts_help():
    """docs/reference/cli.md is what docs/gen_cli.py renders from the four scripts' --help now (in this process:
    the scripts' imports are already loaded by the other tests, so this costs about a second)."""
    spec = importlib.util.spec_from_file_location("gen_cli", ROOT / "docs" / "gen_cli.py")
    gen_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_cli)
    committed, current = gen_cli.PAGE.read_text(), gen_cli.render()
    diff = "".join(difflib.unified_diff(committed.splitlines(True), current.splitlines(True),
                                        "docs/reference/cli.md", "the scripts' --help", n=1))
    assert committed == current, f"the CLI reference and the scripts' --help differ: run python docs/gen_cli.py\n{diff}"
