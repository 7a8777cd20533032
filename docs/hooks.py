"""MkDocs hooks: benchmark tables rendered from the benchmarks' JSON output, and the UI screenshots.

- A docs page holds a marker where a table goes: `<!-- bench:scale -->` renders every table of
  `bench/results/scale.json`, `<!-- bench:scale#curve -->` its table `curve`. The markdown comes from
  `bench/_results.py: render`, the same module that writes the files; a marker naming a missing file or table
  fails the build. No benchmark table is written by hand. `<!-- bench-sources -->` lists every table of every
  file with where its figures come from (a run or a transcription).
- The screenshots `python -m infra.screenshots` takes stay in `infra/screenshots/`; the site publishes them
  as `screenshots/<name>.png` (one copy in the repository, not two).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "infra" / "screenshots"
# A marker alone on its line (one quoted in running text or code is left alone).
MARKER = re.compile(r"^[ \t]*<!--\s*bench:([A-Za-z0-9_-]+)(?:#([A-Za-z0-9_-]+))?\s*-->[ \t]*$", re.MULTILINE)


def _results_module():
    spec = importlib.util.spec_from_file_location("bench_results", ROOT / "bench" / "_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# `<!-- bench-sources -->`: every results table and where its figures come from.
SOURCES = re.compile(r"^[ \t]*<!--\s*bench-sources\s*-->[ \t]*$", re.MULTILINE)

_results = _results_module()


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    def table(match: re.Match) -> str:
        name, table_id = match.group(1), match.group(2)
        path = _results.RESULTS / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"{page.file.src_path}: marker {match.group(0)} but no {path}")
        return _results.render(_results.load(name), table_id)

    return SOURCES.sub(lambda match: _results.sources(), MARKER.sub(table, markdown))


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    for png in sorted(SCREENSHOTS.glob("*.png")):
        files.append(
            File(
                f"screenshots/{png.name}",
                src_dir=str(SCREENSHOTS.parent),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
