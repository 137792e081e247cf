"""`python -m benchmark run ...` launches the scripts at matched simulators (benchmark/run.py);
`python -m benchmark report ...` turns what they wrote into tables and plots (benchmark/report.py)."""

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("run", "report"):
        print("usage: python -m benchmark {run,report} [--help]", file=sys.stderr)
        return 2
    if argv[0] == "run":
        from benchmark.run import main as subcommand
    else:
        from benchmark.report import main as subcommand
    return subcommand(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
