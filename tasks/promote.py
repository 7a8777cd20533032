"""Promote: the last registry step of every flow that registers a model (training, compaction).

After registration, under the champion lock, `promote_or_refuse` moves `champion` to the version when every
gate passed, and otherwise says on the version why it is not champion. The move itself is the champion
protocol's compare-and-set (`champion/promotion.py`); here it is a stage that retries like every stage that
talks to the registry, except on a stale comparison, which no retry can fix. A retry finishes the same
compare-and-set rather than skipping it, and a write that landed but reported an error counts as the move.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow import MlflowClient

from champion.promotion import Promotion, StaleChampionError, current_champion, mark_not_promoted, promote
from tasks.stage import mlflow_stage

if TYPE_CHECKING:
    from tasks.gate import GateVerdict


def _retry_unless_stale(task, task_run, state) -> bool:
    try:
        state.result()
    except StaleChampionError:
        return False
    except Exception:
        return True
    return False


move_to_champion = mlflow_stage(promote, name="promote", retry_condition_fn=_retry_unless_stale)


def promote_or_refuse(
    name: str, version: str, verdict: GateVerdict, compared_with: str | None, run_id: str
) -> Promotion | None:
    """Move `name@champion` to `version` when `verdict` is promotable (from `compared_with`, the champion the
    gates compared against); else tag the version `promotion: refused ...` with the refusals and return None.

    If the move fails after its retries, the alias stays where it was, the version says `promotion: failed
    ...` and the error goes on to fail the run. Call it inside `champion_lock(name)`.
    """
    if not verdict.promotable:
        if current_champion(MlflowClient(), name) != version:  # an identical rerun of the champion stays one
            mark_not_promoted(name, version, "refused", "; ".join(r.detail for r in verdict.refusals))
        return None
    try:
        return move_to_champion(name, version, compared_with, run_id)
    except Exception as exc:
        mark_not_promoted(name, version, "failed", f"{type(exc).__name__}: {exc}")
        raise
