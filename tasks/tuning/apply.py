"""A trial's values as a use case's spec: the run fields into its `Params`, the booster's over its model.

The same function builds every trial's spec (on a thread or a Dask worker) and the winner's, so what was
scored is what is trained. `params_from` (`mlops run --params-from study:NAME[#TRIAL]`, the Prefect form's
field) reads a study's best (or named) trial and builds the run's spec from it; the run's parameters then
name the trial, and the spec's tags (the MLflow run's tags, the version's card) say which study and trial.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from tasks.tuning import TuningError
from tasks.tuning.space import split_values
from usecases.search_space import SearchSpaceError
from usecases.vocabulary import TUNING_STUDY_TAG, TUNING_TRIAL_TAG

if TYPE_CHECKING:
    from usecases.params import TrainingParams
    from usecases.search_space import Tuned
    from usecases.spec import UseCaseSpec

# What a tuned run field may not change: the windows' positions, so every trial is scored on the same folds
# and the winner is judged on the same test window.
FIXED_SPLIT = ("test", "validation", "gap", "unit", "end")


def tuned_spec(
    build_spec: Callable[[TrainingParams], UseCaseSpec],
    params: TrainingParams,
    space: Sequence[Tuned],
    values: Mapping[str, object],
    origin: tuple[str, int] | None = None,
) -> UseCaseSpec:
    """`build_spec` of `params` with the run values of `values`, then their booster values over the model's
    params (the spec's own grid search off: the values are chosen). `origin`: (study, trial), as tags."""
    booster, run = split_values(space, values)
    try:
        tuned_params = type(params)(**{**params.model_dump(), **run})
    except ValueError as exc:  # pydantic's ValidationError: a declared range beyond the field's bounds
        raise SearchSpaceError(f"search space values {run} are not valid run parameters: {exc}") from None
    base, spec = build_spec(params), build_spec(tuned_params)
    moved = [k for k in FIXED_SPLIT if getattr(base.split, k) != getattr(spec.split, k)]
    if moved:
        raise SearchSpaceError(f"search space parameters {sorted(run)} move the split's {', '.join(moved)}")
    model = replace(spec.model, params={**spec.model.params, **booster}, search={}, folds=0)
    tags = dict(spec.tags)
    if origin is not None:
        tags.update({TUNING_STUDY_TAG: origin[0], TUNING_TRIAL_TAG: str(origin[1])})
    return replace(spec, model=model, tags=tags)


def parse_params_from(value: str) -> tuple[str, int | None]:
    """`study:NAME` -> (NAME, None); `study:NAME#7` -> (NAME, 7)."""
    name = value.removeprefix("study:")
    if "#" in name:
        name, number = name.split("#", 1)
        return name, int(number)
    return name, None


def spec_from_study(
    build_spec: Callable[[TrainingParams], UseCaseSpec], params: TrainingParams
) -> tuple[UseCaseSpec, TrainingParams]:
    """The spec of a run whose `params_from` names a study, and its params naming the trial used
    (`study:NAME#TRIAL`); without `params_from`, the spec as built. `TuningError`: an unknown study or trial,
    or one without a complete trial."""
    if not params.params_from:
        return build_spec(params), params
    # why: Optuna loads only for a run that reads a study
    from tasks.tuning.study import load, open_storage

    name, number = parse_params_from(params.params_from)
    study = load(name, open_storage())
    complete = {t.number: t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"}
    if not complete:
        raise TuningError(f"study {name!r} has no complete trial yet")
    if number is None:
        number = study.best_trial.number
    if number not in complete:
        raise TuningError(
            f"study {name!r} has no complete trial #{number} (complete: {sorted(complete)[:20]})"
        )
    space = build_spec(params).tuning
    if space is None:
        raise TuningError("the use case declares no search space, so no study's values apply to it")
    spec = tuned_spec(build_spec, params, space.space, complete[number].params, (name, number))
    return spec, params.model_copy(update={"params_from": f"study:{name}#{number}"})
