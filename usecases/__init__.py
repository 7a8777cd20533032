"""Use cases, discovered: every package here with a `spec.py` is one, named after its folder.

A spec module exposes `Params` (its typed run parameters, a `TrainingParams` subclass), `build_spec(params)
-> UseCaseSpec`, `registered_model(params) -> str`, and optionally `TRAINING_SCHEDULE` / `MONITORING_SCHEDULE`
(`usecases.spec.Cadence`). Adding a use case is adding its folder (and its `data_checks/` suite): the CLI,
the flows and the deployments find it. Discovery lists folders only; a spec module is imported when used.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import import_module
from pathlib import Path


def _discover() -> dict[str, str]:
    here = Path(__file__).parent
    return {
        folder.name: f"usecases.{folder.name}.spec"
        for folder in sorted(here.iterdir())
        if (folder / "spec.py").is_file() and (folder / "__init__.py").is_file()
    }


SPEC_MODULES: dict[str, str] = _discover()


def unknown_use_cases(names: Iterable[str]) -> str | None:
    """What every command says of names that are no use case, all of them in one sentence (None when each
    one is)."""
    unknown = [name for name in names if name not in SPEC_MODULES]
    if not unknown:
        return None
    return f"unknown use case {', '.join(map(repr, unknown))}; known: {', '.join(sorted(SPEC_MODULES))}"


def unknown_use_case(name: str) -> str | None:
    """`unknown_use_cases` of one name."""
    return unknown_use_cases([name])


def spec_module(name: str):
    if problem := unknown_use_case(name):
        raise KeyError(problem)
    return import_module(SPEC_MODULES[name])


def default_registered_model(name: str) -> str:
    """The registered model a use case writes to with its default parameters (`registered_model(params)` in
    its spec module: cheap, without building the spec and its imports)."""
    module = spec_module(name)
    return module.registered_model(module.Params())
