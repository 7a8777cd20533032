"""Refit: the gated candidate's recipe fitted again on every labelled row up to the newest label, and judged.

The split leaves validation, test and two gaps between the training window and the newest label (fraud: 28
days), so a model trained on the training window alone serves weeks behind the world, and after a new fraud
pattern it is judged on a test week it cannot know. With `ContinualSpec.refit`, the candidate's parameters
and the rounds early stopping chose are fitted again on every labelled row up to the newest label (held-out
keys left out), the baselines likewise; that refit is what is registered and served. Where the use case holds
out keys, the refit and the refitted baselines are then scored on the test window's held-out rows, which
none of them saw: that is what the absolute and baseline gates judge (`Refitted.evaluation`), as the champion
and forgetting gates do (`tasks/compare.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from champion.store import run_logger
from tasks.candidate import Candidate, refit_candidate
from tasks.evaluate import Evaluation, Scored
from tasks.split import held_out, training_rows
from tasks.stage import stage
from tasks.train import fit_baseline

if TYPE_CHECKING:
    from tasks.split import Splits
    from usecases.spec import UseCaseSpec

# Held-out test rows with fewer positives (binary) or rows (regression) than these judge nothing: the gates
# then judge the candidate on the whole test window, as without a refit.
MIN_POSITIVES, MIN_ROWS = 10, 30


@dataclass(frozen=True)
class Refitted:
    served: Candidate  # the refit, or the candidate itself when no refit ran
    # The refit and the refitted baselines on the test window's held-out rows (contexts calibrated by the
    # candidate and baselines on validation); None: the gates judge the candidate's test evaluation.
    evaluation: Evaluation | None = None
    held_test: pd.DataFrame | None = None  # the test window's held-out rows `evaluation` scored

    def profile_inputs(self, splits: Splits, evaluation: Evaluation) -> tuple[Splits, Evaluation]:
        """What the monitoring profile of the served model is built from: for a judged refit, its own scores
        on the held-out test rows (calibration, score reference and the bar alike: the only labelled rows it
        never saw); otherwise the candidate's windows and scores."""
        if self.evaluation is None:
            return splits, evaluation
        scored = replace(
            self.evaluation.candidate, validation_predictions=self.evaluation.candidate.test_predictions
        )
        return replace(splits, validation=self.held_test, test=self.held_test), Evaluation(scored, {})


@stage
def refit(
    candidate: Candidate, table: pd.DataFrame, splits: Splits, evaluation: Evaluation, spec: UseCaseSpec
) -> Refitted:
    """The candidate refitted up to the newest label and judged on held-out rows (see the module docstring);
    the candidate itself when the spec does not ask, or when it was fine-tuned from a registered model (its
    parent fixes its trees)."""
    log = run_logger()
    if not spec.continual.refit:
        return Refitted(candidate)
    if candidate.parent_uri is not None:
        log.info("no refit: fine-tuned from %s, served as trained", candidate.parent_uri)
        return Refitted(candidate)
    target = spec.target if spec.problem == "binary" else None
    rows, weights, span = training_rows(table, spec.split, spec.time_column, target, spec.continual, "test")
    served = refit_candidate(candidate, rows, weights, spec.model, spec.schema)
    served = replace(served, trained_on=(span,), refit_on=span)
    log.info(
        "refit on %d rows, %s .. %s, %d rounds (the candidate's best)",
        len(rows),
        *span,
        served.rounds_trained,
    )
    judged, note, held = _judge(served, rows, splits, evaluation, spec)
    log.info(note)
    return Refitted(served, judged, held)


def _judge(served, rows, splits, evaluation, spec) -> tuple[Evaluation | None, str, pd.DataFrame | None]:
    """The refit and the baselines refitted on the same rows, scored on the test window's held-out rows."""
    holdout = spec.continual.holdout
    test = splits.test[held_out(splits.test, holdout)].reset_index(drop=True)
    enough = (
        len(test) >= MIN_ROWS if spec.problem != "binary" else int(test[spec.target].sum()) >= MIN_POSITIVES
    )
    if holdout is None or not enough:
        why = "no held-out keys" if holdout is None else f"{len(test)} held-out test rows, too few positives"
        return None, f"gates judge the candidate on the test window ({why})", None
    models = {"candidate": (served.predict, evaluation.candidate.context)}
    for b in spec.baselines:
        fitted = fit_baseline.fn(b, rows, spec.schema)
        models[b.name] = (fitted.predict, evaluation.baselines[b.name].context)
    scored = {}
    for name, (predict, context) in models.items():
        predictions = np.asarray(predict(test), dtype=float)
        scored[name] = Scored(spec.metrics.compute(test, predictions, context), context, predictions)
    candidate = scored.pop("candidate")
    note = f"gates judge the refit and refitted baselines on the test window's {len(test)} held-out rows"
    return Evaluation(candidate, scored), note, test
