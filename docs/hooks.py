"""mkdocs hook: the committed figures of results/ are published as docs files under figures/.

results/<study>/<name>.png becomes figures/<study>/<name>.png and results/<name>.png figures/<name>.png, so the
results pages show the figures the studies committed, with no copy of them in docs/ and links that
`mkdocs build --strict` checks like any other. The runs' own directories (results/<study>/experiment/) are not
published.
"""

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[1] / "results"


def on_files(files, config):
    for png in sorted(RESULTS.glob("*.png")) + sorted(RESULTS.glob("*/*.png")):
        uri = "figures/" + png.relative_to(RESULTS).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files
