"""The search space a use case declares for `mlops tune` (tasks/tuning/, flows/tuning.py): its parameters as
data, checked when declared, so that a bad space is an error naming the parameter before anything runs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


class SearchSpaceError(ValueError):
    """A declared search space that cannot be searched: the message names the parameter and what is wrong."""


# XGBoost's tree-booster parameters a search space may tune (its documented names and aliases).
BOOSTER_PARAMS = frozenset(
    {
        *("eta", "learning_rate", "gamma", "min_split_loss", "max_depth", "min_child_weight"),
        *("max_delta_step", "subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode"),
        *("lambda", "reg_lambda", "alpha", "reg_alpha", "scale_pos_weight", "max_leaves", "max_bin"),
        *("grow_policy", "sampling_method", "num_parallel_tree"),
    }
)


@dataclass(frozen=True)
class Tuned:
    """One searched parameter, as data. `target`: "booster" (an XGBoost parameter, over the spec's model
    params) or "run" (a field of the use case's `Params` that does not change the features or the windows'
    positions: a training window's length, recency, replay, class-imbalance handling)."""

    name: str
    kind: Literal["float", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int = 1
    choices: tuple[object, ...] = ()
    target: Literal["booster", "run"] = "booster"

    def __post_init__(self):
        problem = self._problem()
        if problem:
            raise SearchSpaceError(f"search space parameter {self.name!r}: {problem}")

    def _problem(self) -> str | None:
        if self.target not in ("booster", "run"):
            return f"unknown target {self.target!r} (booster or run)"
        if self.target == "booster" and self.name not in BOOSTER_PARAMS:
            return f"not an XGBoost booster parameter (known: {', '.join(sorted(BOOSTER_PARAMS))})"
        if self.kind == "choice":
            return None if self.choices else "no choices (an empty range)"
        if self.kind not in ("float", "int"):
            return f"unknown kind {self.kind!r} (float, int or choice)"
        if self.low is None or self.high is None:
            return "a range needs low and high"
        if self.low > self.high:
            return f"low {self.low:g} > high {self.high:g}"
        if self.low == self.high:
            return f"an empty range ({self.low:g} .. {self.high:g}): give it as a spec default instead"
        if self.log and self.low <= 0:
            return f"a log range must be positive (low {self.low:g})"
        return "step must be at least 1" if self.step < 1 else None


def float_range(name: str, low: float, high: float, log: bool = False, target: str = "booster") -> Tuned:
    return Tuned(name, "float", low, high, log=log, target=target)


def int_range(name: str, low: int, high: int, step: int = 1, log: bool = False, target="booster") -> Tuned:
    return Tuned(name, "int", low, high, log=log, step=step, target=target)


def choice(name: str, *choices: object, target: str = "booster") -> Tuned:
    return Tuned(name, "choice", choices=tuple(choices), target=target)


@dataclass(frozen=True)
class TuningSpec:
    """What `mlops tune` searches: the parameters, and the walk-forward folds inside the training window that
    score a trial (the objective is the spec's primary metric, in its direction). Boosting rounds are not
    searched: early stopping picks them on each fold."""

    space: tuple[Tuned, ...]
    folds: int = 3
    # Rounds a trial boosts on its first fold before the pruner may stop it (the median of earlier trials).
    pruning_warmup: int = 20

    def __post_init__(self):
        names = [p.name for p in self.space]
        if not names:
            raise SearchSpaceError("the search space has no parameters")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise SearchSpaceError(f"search space parameter {twice[0]!r} is declared twice")
        if self.folds < 1:
            raise SearchSpaceError(f"tuning needs at least 1 walk-forward fold (folds={self.folds})")

    def check_run_fields(self, fields_of_params: Iterable[str]) -> None:
        """Every "run" parameter names a field of the use case's `Params`."""
        known = set(fields_of_params)
        for p in self.space:
            if p.target == "run" and p.name not in known:
                raise SearchSpaceError(
                    f"search space parameter {p.name!r}: not a field of the use case's Params"
                )
