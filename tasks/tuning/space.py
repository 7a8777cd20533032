"""The search space as Optuna suggestions, and a trial's values split into the booster's and the run's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from usecases.search_space import SearchSpaceError

if TYPE_CHECKING:
    import optuna

    from usecases.search_space import Tuned


def suggest(trial: optuna.trial.BaseTrial, space: Sequence[Tuned]) -> dict[str, object]:
    """One value per searched parameter, from the trial's sampler (log, step and choices as declared)."""
    values: dict[str, object] = {}
    for p in space:
        if p.kind == "choice":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            step = 1 if p.log else p.step  # Optuna takes a step or a log scale, not both
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=step, log=p.log)
        else:
            values[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log)
    return values


def split_values(
    space: Sequence[Tuned], values: Mapping[str, object]
) -> tuple[dict[str, object], dict[str, object]]:
    """(booster parameters, run parameters) of a trial's values; names not in the space are refused."""
    target = {p.name: p.target for p in space}
    unknown = sorted(set(values) - set(target))
    if unknown:
        raise SearchSpaceError(f"parameter {unknown[0]!r} is not in the use case's search space")
    booster = {k: v for k, v in values.items() if target[k] == "booster"}
    run = {k: v for k, v in values.items() if target[k] == "run"}
    return booster, run
