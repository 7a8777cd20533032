"""The test suite's time, per file, from the JUnit XML reports of whole pytest runs, side by side.

    uv run pytest --junitxml=before.xml ...; (a change) ...; uv run pytest --junitxml=after.xml
    uv run python bench/suite_time.py --run "before=before.xml" --run "after=after.xml" [--out PATH] [--smoke]

Each `--run LABEL=PATH` is one whole run of `pytest` (serial, or on pytest-xdist workers as `make test`
runs it; say which in the label): its wall time as pytest reports it (collection and session fixtures
included; the lint and docs steps of `make test` excluded), and per test file the sum of its tests' setup,
call and teardown times (on workers the files run beside each other: they add up to more than the wall
time). The files are listed longest first by the last run. `--smoke`: two tiny reports written here, to a
temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import add_arguments, document, output_path, table, write  # noqa: E402

SHOWN = 20  # files listed one by one; the rest in one row


def read_report(path: Path) -> dict:
    """Wall seconds, outcome counts and seconds per test file of one JUnit XML report."""
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    if suite is None:
        raise SystemExit(f"{path}: no <testsuite> in this file; is it pytest's --junitxml output?")
    files: Counter[str] = Counter()
    for case in suite.iter("testcase"):
        module = case.get("classname", "").split(".")
        name = "/".join(module[1:3]) + ".py" if module[:1] == ["tests"] else ".".join(module)
        files[name] += float(case.get("time") or 0)
    counts = {key: int(suite.get(key) or 0) for key in ("tests", "failures", "errors", "skipped")}
    return {"wall": float(suite.get("time") or 0), "files": files, **counts}


def tables(runs: dict[str, dict]) -> dict:
    labels = list(runs)
    last = runs[labels[-1]]["files"]
    names = sorted({n for r in runs.values() for n in r["files"]}, key=lambda n: (-last.get(n, 0), n))
    rows = [[name, *(runs[label]["files"].get(name) for label in labels)] for name in names[:SHOWN]]
    if len(names) > SHOWN:
        rest = names[SHOWN:]
        rows.append(
            [
                f"{len(rest)} other files",
                *(sum(runs[label]["files"].get(n, 0) for n in rest) for label in labels),
            ]
        )
    seconds = [{"name": f"{label} s", "format": ".0f"} for label in labels]
    files = table(
        "Seconds per test file (setup, call and teardown of its tests)",
        ["file", *seconds],
        rows,
        method="sums of pytest's per-test times in each run's JUnit XML report; the runs one after the other "
        "on the same machine (on workers the files run beside each other: they add up to more than the wall "
        "time)",
    )
    totals = table(
        "Whole runs",
        [
            "run",
            {"name": "wall min", "format": ".1f", "scale": 1 / 60},
            "tests",
            "failed",
            "skipped",
        ],
        [
            [label, r["wall"], r["tests"], r["failures"] + r["errors"], r["skipped"]]
            for label, r in runs.items()
        ],
        method="pytest's own wall time of the run (collection and session fixtures included)",
        excluded="`make test`'s lint, docs build and layering check (about a minute), and the install",
    )
    return {"totals": totals, "files": files}


def smoke_reports(folder: Path) -> list[str]:
    """Two tiny JUnit reports, as pytest writes them, for a smoke run."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = []
    for label, seconds in (("before", 2.0), ("after", 1.0)):
        path = folder / f"{label}.xml"
        path.write_text(
            f'<testsuites><testsuite name="pytest" errors="0" failures="0" skipped="0" tests="2" '
            f'time="{2 * seconds}"><testcase classname="tests.unit.test_a" name="t" time="{seconds}"/>'
            f'<testcase classname="tests.flow.test_b" name="t" time="{seconds}"/></testsuite></testsuites>'
        )
        runs.append(f"{label}={path}")
    return runs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", action="append", default=[], metavar="LABEL=PATH", help="a run's JUnit XML report, in order"
    )
    add_arguments(parser, "suite_time")
    args = parser.parse_args(argv)
    out = output_path(args, "suite_time")
    runs_given = smoke_reports(Path(tempfile.mkdtemp(prefix="suite-time-"))) if args.smoke else args.run
    if not runs_given:
        parser.error("give --run LABEL=PATH at least once")
    runs = {}
    for given in runs_given:
        label, sep, path = given.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"--run {given!r}: expected LABEL=PATH of an existing JUnit XML file")
        runs[label] = read_report(Path(path))
    command = "uv run python bench/suite_time.py " + " ".join(
        f"--run {given.split('=')[0]}=..." for given in runs_given
    )
    doc = document("suite_time", command, tables(runs), smoke=args.smoke)
    write(out, doc)
    from _results import render

    print(render(doc))
    return doc


if __name__ == "__main__":
    main()
