"""One-off measurements on the four scripts (each `python -m studies.NAME --help`); results in results/."""
