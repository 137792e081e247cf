"""`python -m benchmark.report ARGV` = `python -m benchmark report ARGV`."""

import sys

from benchmark.report.cli import main

sys.exit(main())
