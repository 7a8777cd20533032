"""Promote: the last registry step of every flow that registers a model (training, compaction).

After registration, under the champion lock, `promote_or_refuse` moves `champion` to the version when every
gate passed, and otherwise says on the version why it is not champion. The move itself is the champion
protocol's compare-and-set (`champion/promotion.py`); here it is a stage that retries like every stage that
talks to the registry, except on a stale comparison, which no retry can fix. A retry finishes the same
compare-and-set rather than skipping it, and a write that landed but reported an error counts as the move.

A version that only the champion or forgetting gate held back becomes the challenger (`hold_as_challenger`):
the model server scores it in shadow, and live evidence may promote it later (`champion/challenger.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow import MlflowClient

from champion.challenger import ChallengerRefused, set_challenger
from champion.promotion import Promotion, StaleChampionError, current_champion, mark_not_promoted, promote
from champion.store import run_logger
from tasks.stage import mlflow_stage
from usecases.vocabulary import CHALLENGER, CHALLENGER_TAG

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


def held_back(verdict: GateVerdict) -> list:
    """The refusals when every one is the champion gate's or a forgetting gate's (the version passed its
    absolute and baseline gates and lost to the champion on some window: worth trying on live traffic);
    else nothing to hold (a slice refusal, a rolled-back version: `champion.rolled_back`)."""
    refusals = verdict.refusals
    if refusals and all(r.name == "champion" or r.name.startswith("forgetting.") for r in refusals):
        return refusals
    return []


def hold_as_challenger(name: str, version: str, verdict: GateVerdict, run_id: str) -> str | None:
    """Make a registered version that only the champion or forgetting gate refused `name@challenger`, and say
    so on the run (`challenger` tag). Call it inside `champion_lock(name)`, after `promote_or_refuse`.

    Returns what the run's tag says, or None when the verdict holds nothing back. Never raises: a challenger
    not set is logged (a warning when it failed) and recorded on the run, and the run goes on.
    """
    refusals = held_back(verdict)
    if not refusals:
        return None
    reason = "held back by " + "; ".join(f"{r.name}: {r.detail}" for r in refusals)
    log = run_logger()
    try:
        retired = MlflowClient().get_model_version(name, version).tags.get(CHALLENGER_TAG, "")
        if retired.startswith("retired ") and "replaced by" not in retired:  # judged on live traffic already
            raise ChallengerRefused(
                f"v{version} was {retired}; not held again automatically (`mlops challenge` sets it by hand)"
            )
        move = set_challenger(name, version, reason[:500], by=f"run {run_id}", locked=True)
        outcome = (  # set_challenger logs a move
            f"v{version} already is {name}@{CHALLENGER}"
            if move.previous == move.version
            else f"v{version} is {name}@{CHALLENGER} since {move.at}: {reason}"
        )
    except ChallengerRefused as exc:
        outcome = f"not made {CHALLENGER}: {exc}"
        log.info("%s v%s not made %s: %s", name, version, CHALLENGER, exc)
    except Exception as exc:
        outcome = f"failed to make v{version} {CHALLENGER}: {type(exc).__name__}: {exc}"
        log.warning("%s (the run goes on)", outcome)
    try:
        MlflowClient().set_tag(run_id, CHALLENGER_TAG, outcome[:5000])
    except Exception as exc:
        log.warning("could not record the challenger outcome on run %s: %s", run_id, exc)
    return outcome
