"""The shape of the code: layers that hold at run time, modules and functions small enough to read.

`lint-imports` (in `make test`) checks the layering on the import graph; this checks it again where it
matters at run time, by importing every module of a layer in a fresh interpreter and listing what came with
it. The layers are read from pyproject.toml's import-linter contract, so they are written down once.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cli", "serving", "infra", "flows", "usecases", "tasks", "champion", "data_checks", "bench")
MAX_MODULE_LINES = 500
# Modules allowed past it, and why (none now).
LONG_MODULES: dict[str, str] = {}
MAX_FUNCTION_LINES = 80
MAX_PARAMETERS = 7
# Functions allowed past the limits, and why. Typer commands take one parameter per option by design.
LONG_OR_WIDE = {
    "cli/compact.py:compact": "a Typer command: one parameter per option",
    "cli/models.py:score": "a Typer command: one parameter per option",
    "cli/models.py:serve_model": "a Typer command: one parameter per option",
    "flows/scoring.py:batch_scoring": "a flow: one parameter per field of its Prefect form",
    "usecases/fraud/simulator.py:simulate_transactions": "the handbook's generator, step by step",
}


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers" and "containers" not in c]
    return [[m.strip() for m in layer.replace("|", ":").split(":")] for layer in contract["layers"]]


def _modules(package: str) -> list[str]:
    base = ROOT / package.replace(".", "/")
    files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    return [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in files]


def _belongs(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_importing_a_layer_pulls_in_no_module_of_a_layer_above():
    """Each layer in a fresh interpreter of its own (the probes run side by side: imports cost seconds)."""
    layers = _layers()
    probes = {}
    for depth in range(1, len(layers)):
        modules = [m for package in layers[depth] for m in _modules(package)]
        assert modules, f"no modules in layer {layers[depth]}"
        code = (
            "import importlib, json, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))"
        )
        probes[depth] = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    upward = {}
    for depth, probe in probes.items():
        out, err = probe.communicate(timeout=300)
        assert probe.returncode == 0, f"importing {layers[depth]} failed: {err[-2000:]}"
        above = [package for layer in layers[:depth] for package in layer]
        loaded = json.loads(out.splitlines()[-1])
        found = [m for m in loaded if any(_belongs(m, package) for package in above)]
        if found:
            upward[" : ".join(layers[depth])] = found
    assert not upward, f"importing a layer loaded modules of layers above it: {upward}"


def _functions():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield path.relative_to(ROOT), node


def test_no_module_is_too_long_to_read():
    long = {
        str(path.relative_to(ROOT)): n
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
        and str(path.relative_to(ROOT)) not in LONG_MODULES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_too_long_or_takes_too_many_parameters():
    found = {}
    for path, node in _functions():
        args = node.args
        params = [*args.posonlyargs, *args.args, *args.kwonlyargs]
        count = len([p for p in params if p.arg not in ("self", "cls")])
        lines = node.end_lineno - node.lineno + 1
        if lines > MAX_FUNCTION_LINES or count > MAX_PARAMETERS:
            found[f"{path}:{node.name}"] = f"{lines} lines, {count} parameters"
    unexplained = {k: v for k, v in found.items() if k not in LONG_OR_WIDE}
    assert not unexplained, f"over {MAX_FUNCTION_LINES} lines or {MAX_PARAMETERS} parameters: {unexplained}"
    assert set(LONG_OR_WIDE) <= set(found), f"no longer needed: {set(LONG_OR_WIDE) - set(found)}"


# Modules whose every import inside a function is there for one reason, stated once at the top of the module
# (a line containing "imports inside functions"): a command loads only what it uses, and a use case's
# `Params` (the CLI's --help, the Prefect form) imports without the stages behind it.
STATED_ONCE = ("cli/", "usecases/fraud/spec.py", "usecases/stock/spec.py")


def _unexplained_lazy_imports(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    relative = str(path.relative_to(ROOT))
    if relative.startswith(STATED_ONCE) and any("imports inside functions" in line.lower() for line in lines):
        return []
    found = []
    for function in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        body = [n for n in ast.walk(function) if isinstance(n, ast.Import | ast.ImportFrom)]
        explained = False
        for node in sorted(body, key=lambda n: n.lineno):
            above = lines[node.lineno - 2].strip()
            if above.startswith("#") or "#" in lines[node.lineno - 1]:
                explained = True  # a reason covers the block of imports it stands above
            elif not (above.startswith(("import ", "from ")) or above.endswith(("(", ",", ")"))):
                explained = False  # a new block
            if not explained:
                found.append(f"{relative}:{node.lineno}")
    return found


def test_imports_inside_functions_say_why():
    """Imports belong at the top; one inside a function stays only where it keeps a command's start-up fast
    (or breaks an optional dependency), with a one-line reason."""
    found = [
        where
        for package in PACKAGES
        if package != "bench"
        for path in sorted((ROOT / package).rglob("*.py"))
        for where in _unexplained_lazy_imports(path)
    ]
    assert not found, f"imports inside functions without a reason: {found}"
