"""The factory's shared words: registry aliases and tags, event names and resources, run parameter keys.

Every module that writes one of these and every module that reads it back imports it from here, so a name is
spelled once. Nothing here imports a stage, Prefect or MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping

# --- registry: aliases -----------------------------------------------------------------------------------
CHAMPION = "champion"  # what consumers load: models:/<name>@champion
CHALLENGER = "challenger"  # in shadow: the model server scores live traffic with it too, unanswered
COMPACT_SUFFIX = "-compact"  # <name>-compact: the compact stand-in of <name> (tasks/compaction/)

# --- registry: tags on a version ---------------------------------------------------------------------------
FINGERPRINT_TAG = "lineage.fingerprint"  # hash of data, code and parameters: an identical rerun reuses it
PARENT_TAG, INIT_TAG, UPDATE_TAG = "lineage.parent", "lineage.init", "lineage.update"
WINDOWS_TAG, TRAINED_ON_TAG = "lineage.windows", "lineage.trained_on"
HOLDOUT_TAG = "lineage.holdout"  # the held-out keys the version never trained on (`usecases.spec.Holdout`)
PROMOTION_TAG = "promotion"  # the outcome of the last attempt to promote the version
CHALLENGER_TAG = "challenger"  # the version's last challenger outcome: "since ...", "retired ...: why", ...
GATES_TAG = "gates"  # "passed 6/6" or "refused 1/6: champion.average_precision"

# --- registry and run: a trade-off a person decided (tasks/approval.py), on the version and its run -------
APPROVAL_TAG = "approval"  # one of the outcomes below
APPROVAL_PENDING, APPROVAL_APPROVED, APPROVAL_REJECTED = "pending", "approved", "rejected"
APPROVAL_TIMED_OUT, APPROVAL_UNATTENDED = "timed out", "unattended"
APPROVAL_BY_TAG = "approval.by"  # who or what decided: "Prefect UI form", "mlops approve (<user>)", "timeout"
APPROVAL_REASON_TAG = "approval.reason"
APPROVAL_AT_TAG = "approval.at"  # when it was decided (UTC, ISO 8601)
APPROVAL_FLOW_RUN_TAG = "approval.flow_run_id"  # the paused Prefect flow run that waits for the answer
FLOW_RUN_TAG = "prefect.flow_run_id"  # on a training run: the Prefect flow run it belongs to

# --- run and card: a tuning study (tasks/tuning/), on its runs and on a run trained from it -------------
TUNING_STUDY_TAG, TUNING_TRIAL_TAG = "tuning.study", "tuning.trial"
TUNING_STATE_TAG = "tuning.state"  # a trial's child run: complete, pruned or fail

# --- registry: tags on the registered model ----------------------------------------------------------------
HISTORY_PREFIX = "champion.history."  # one tag per alias move, numbered
CHALLENGER_HISTORY_PREFIX = "challenger.history."  # one tag per move of the challenger alias, numbered

# --- events (Prefect custom events) ------------------------------------------------------------------------
DATA_ARRIVED = "mlops.data.arrived"
"""Starts a training run: resource `mlops.dataset.<use case>`, payload `{"use_case", "path"}`."""
MODEL_PROMOTED = "mlops.model.promoted"
MODEL_REJECTED = "mlops.model.rejected"
MODEL_ROLLED_BACK = "mlops.model.rolled-back"
CHALLENGER_SET = "mlops.model.challenger-set"
CHALLENGER_RETIRED = "mlops.model.challenger-retired"
APPROVAL_WAITING = "mlops.model.approval-waiting"
"""A trade-off run paused for a person: resource `mlflow.registered-model.<name>`, payload version and run."""
MODEL_DEGRADED = "mlops.model.degraded"
"""Sent by monitoring when a version is not healthy: resource `mlflow.registered-model.<name>`, payload with
the verdict, the drifted features and the monitored `data`."""


def model_resource(registered_model: str) -> str:
    """The resource id registry events are about."""
    return f"mlflow.registered-model.{registered_model}"


def dataset_resource(use_case: str) -> str:
    """The resource id a `mlops.data.arrived` event names."""
    return f"mlops.dataset.{use_case}"


# --- run parameters ----------------------------------------------------------------------------------------
PARAM_PREFIX = "param."  # a training run records each field of its `Params` as `param.<field>`


def param_keys(params: Mapping[str, object]) -> dict[str, str]:
    """A run's parameters as the keys its MLflow run records them under."""
    return {f"{PARAM_PREFIX}{name}": str(value) for name, value in params.items()}


def recorded_params(logged: Mapping[str, str]) -> dict[str, str]:
    """The `Params` fields a run recorded (`param_keys` read back); fields recorded as None are left out."""
    return {
        key[len(PARAM_PREFIX) :]: value
        for key, value in logged.items()
        if key.startswith(PARAM_PREFIX) and value != "None"
    }


# --- the gate verdict as a tag -----------------------------------------------------------------------------


def gates_summary(refused: list[str], total: int) -> str:
    """One line: `passed 6/6`, or `refused 1/6: champion.average_precision`."""
    if not refused:
        return f"passed {total}/{total}"
    return f"refused {len(refused)}/{total}: {', '.join(refused)}"


def refused_gates(tags: Mapping[str, str]) -> list[str] | None:
    """The names of the gates a version failed, read from its tags; None when it carries no verdict.

    Reads the `gates` summary, or the per-gate `gate.<name>` tags that versions registered before it carry.
    """
    summary = tags.get(GATES_TAG)
    if summary is not None:
        _, _, names = summary.partition(": ")
        return [n.strip() for n in names.split(",") if n.strip()] if summary.startswith("refused") else []
    per_gate = {k[len("gate.") :]: v for k, v in tags.items() if k.startswith("gate.")}
    if not per_gate:
        return None
    return [name for name, verdict in sorted(per_gate.items()) if not verdict.startswith("passed")]
