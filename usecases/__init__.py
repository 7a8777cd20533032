"""Use cases: each is one spec module (`usecases/<name>/spec.py`) exposing `Params` (its typed run
parameters, a `TrainingParams` subclass) and `build_spec(params) -> UseCaseSpec`. Register it here by name."""

from __future__ import annotations

from importlib import import_module

SPEC_MODULES = {
    "fraud": "usecases.fraud.spec",
    "stock": "usecases.stock.spec",
}


def spec_module(name: str):
    try:
        return import_module(SPEC_MODULES[name])
    except KeyError:
        raise KeyError(f"unknown use case {name!r}; known: {', '.join(sorted(SPEC_MODULES))}") from None
