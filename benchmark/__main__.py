"""`python -m benchmark run ...` launches the scripts at matched simulators (benchmark/run.py);
`python -m benchmark report ...` turns what they wrote into tables and plots (benchmark/report/)."""

import sys
from typing import Optional

import tyro

from benchmark import report, run


def main(argv: Optional[list[str]] = None) -> int:
    cfg = tyro.extras.subcommand_cli_from_dict(
        {"run": run.Config, "report": report.Config}, args=argv, prog="python -m benchmark", description=__doc__
    )
    return run.run_experiment(cfg) if isinstance(cfg, run.Config) else report.make_report(cfg)


if __name__ == "__main__":
    sys.exit(main())
