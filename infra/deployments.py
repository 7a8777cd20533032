"""The factory's Prefect deployments, as code.

One deployment per training flow in `flows.training.TRAINING_FLOWS` (so every use case registered in
`usecases.SPEC_MODULES` gets one, with nothing to add here), named `<use case>-training/<registered model>`:

* parameters: the fields of the use case's typed `Params` model, one flow parameter each (`flows/form.py`):
  a JSON schema with descriptions, defaults and bounds in the spec's order, so the UI's "Run > Custom run"
  is a form, the Parameters tab a table, and the API rejects out-of-bounds values before anything runs
  (`enforce_parameter_schema`);
* schedule: the spec module's `TRAINING_SCHEDULE` (fraud daily, stock on weekdays after the US close), else
  a daily default;
* trigger: the custom event `mlops.data.arrived` for that use case starts a run on the dataset it names;
* concurrency: at most one run per deployment, i.e. per registered model; further runs wait in
  `AwaitingConcurrencySlot` (scheduled, UI-triggered and event-triggered runs all share the one slot);
* tags: `mlops`, `training`, `use-case:<name>`, `model:<registered model>`.

Scoring, monitoring, tuning and compaction flows are deployed too, as they appear (see `OTHER_FLOWS`):
`batch-scoring/on-demand` runs from the UI's form or the API; `<use case>-tuning/<use case>` by hand or
monthly; `<use case>-challenger/<use case>` daily (the challenger judged on live pairs, promoted or retired).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron, Schedule
from prefect.types.entrypoint import EntrypointType

from usecases import default_registered_model, spec_module, unknown_use_cases
from usecases.vocabulary import (
    DATA_ARRIVED,
    MODEL_DEGRADED,
    MODEL_PROMOTED,
    dataset_resource,
    model_resource,
)

RETRAIN_DEBOUNCE_ENV = "MLOPS_RETRAIN_DEBOUNCE_HOURS"  # at most one triggered retraining per model per period
MONITOR_DATA_ENV = "MLOPS_MONITOR_DATA_{}"  # per use case: the file a scheduled monitoring run reads


@dataclass(frozen=True)
class Timing:
    """A cron schedule and the sentence people read about it."""

    cron: str
    timezone: str
    note: str

    def schedule(self) -> Schedule:
        return Cron(self.cron, timezone=self.timezone)


def use_case_timing(use_case: str, attribute: str) -> Timing | None:
    """The spec module's own schedule (`TRAINING_SCHEDULE`, `MONITORING_SCHEDULE`), if it declares one."""
    cadence = getattr(spec_module(use_case), attribute, None)
    return None if cadence is None else Timing(cadence.cron, cadence.timezone, cadence.note)


DEFAULT_TRAINING_SCHEDULE = Timing("0 3 * * *", "UTC", "daily at 03:00 UTC")


@dataclass(frozen=True)
class OtherFlow:
    """A scoring or monitoring flow to deploy once its module exists: `attribute` names either one flow
    (one deployment, `<flow>/<deployment>`) or a `{use case: flow}` mapping (`<flow>/<use case>` each)."""

    kind: str
    module: str
    attribute: str
    deployment: str = "on-demand"
    timing: Timing | None = None  # none: run from the UI ("Custom run"), the API or an automation
    one_at_a_time: bool = False
    schedule: str = (
        "MONITORING_SCHEDULE"  # per-use-case flows: the spec module's attribute naming its cadence
    )


OTHER_FLOWS: tuple[OtherFlow, ...] = (
    OtherFlow("scoring", "flows.scoring", "batch_scoring"),
    OtherFlow("monitoring", "flows.monitoring", "MONITORING_FLOWS", one_at_a_time=True),
    # Tuning: by hand from the form (study name, budget), and monthly a new study of 50 trials whose winner
    # goes through every gate (flows/tuning.py).
    OtherFlow(
        "tuning",
        "flows.tuning",
        "TUNING_FLOWS",
        timing=Timing("0 4 1 * *", "UTC", "monthly, on the 1st at 04:00 UTC"),
        one_at_a_time=True,
    ),
    OtherFlow(
        "compaction",
        "flows.compaction",
        "COMPACTION_FLOWS",
        one_at_a_time=True,
        schedule="COMPACTION_SCHEDULE",
    ),
    # Champion and challenger: daily, once the previous day's labels have arrived, the pairs are judged and
    # the challenger promoted or retired by the use case's rule (flows/challenger.py).
    OtherFlow(
        "challenger",
        "flows.challenger",
        "CHALLENGER_FLOWS",
        timing=Timing("0 6 * * *", "UTC", "daily at 06:00 UTC"),
        one_at_a_time=True,
    ),
)

ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def data_arrived_event(use_case: str, path: str) -> dict[str, Any]:
    """The `mlops.data.arrived` event for `use_case`: the shape the deployment triggers match on.

    Any Prefect client may send it (`prefect.events.emit_event(**data_arrived_event(...))`); `mlops
    notify-data` does. `path` must be readable where the flow runs (the `mlops serve` process).
    """
    return {
        "event": DATA_ARRIVED,
        "resource": {
            "prefect.resource.id": dataset_resource(use_case),
            "prefect.resource.name": f"{use_case} dataset",
            "mlops.use-case": use_case,
            "mlops.dataset.path": path,
        },
        "payload": {"use_case": use_case, "path": path},
    }


@dataclass(frozen=True)
class DeploymentPlan:
    """One deployment, fully described before any API is contacted (what `mlops deploy --dry-run` shows)."""

    kind: str  # "training" | "scoring" | "monitoring"
    use_case: str
    flow: Any
    name: str
    registered_model: str | None
    entrypoint: str | None
    timing: Timing | None
    tags: tuple[str, ...]
    triggers: tuple[DeploymentEventTrigger, ...] = field(default=())
    concurrency: ConcurrencyLimitConfig | None = None
    parameters: dict | None = None  # defaults for the flow's parameters (e.g. where monitoring reads)

    @property
    def flow_name(self) -> str:
        return self.flow.name

    @property
    def full_name(self) -> str:
        """What `run_deployment`, `prefect deployment run` and the UI call it."""
        return f"{self.flow_name}/{self.name}"

    @property
    def description(self) -> str:
        lines = [(self.flow.description or "").strip()]
        if self.kind == "training":
            lines.append(
                f"Retrains, gates and (when every gate passes) promotes `{self.registered_model}@champion`."
            )
        lines.append(f"Schedule: {self.timing.note if self.timing else 'none (run from the UI or API)'}.")
        if self.triggers:
            lines.append(
                f"Also runs on the event `{DATA_ARRIVED}` for resource "
                f"`{dataset_resource(self.use_case)}`, training on the file in its payload's `path` "
                f"(send it with `mlops notify-data {self.use_case} PATH`)."
            )
        if self.concurrency:
            lines.append("At most one run at a time: further runs wait for the running one to finish.")
        return "\n\n".join(line for line in lines if line)

    def to_deployment(self, work_pool: str | None = None, paused: bool | None = None):
        """The Prefect `RunnerDeployment`: served by `mlops serve`, or by a worker of `work_pool`."""
        if work_pool and not self.entrypoint:
            raise ValueError(
                f"{self.flow_name} has no importable entrypoint: bind the flow to a module-level name so a "
                "work-pool worker can import it"
            )
        deployment = self.flow.to_deployment(
            name=self.name,
            schedules=[self.timing.schedule()] if self.timing else [],
            parameters=self.parameters or {},
            paused=paused,
            concurrency_limit=self.concurrency,
            tags=list(self.tags),
            triggers=[t.model_copy(deep=True) for t in self.triggers],
            description=self.description,
            enforce_parameter_schema=True,
            work_pool_name=work_pool,
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        if not work_pool:
            # Assigned after construction so that re-registering a deployment that a work pool used to run
            # hands it back to `mlops serve` (Prefect only clears fields that were set explicitly).
            deployment.work_pool_name = None
            deployment.work_queue_name = None
        if self.entrypoint:
            # The flows are built by a factory (`flows.training.training_flow`), so the function's own name
            # is not importable; the module-level binding is.
            deployment.entrypoint = self.entrypoint
        return deployment


def _entrypoint(flow, module_name: str) -> str | None:
    """`module.attribute` for a flow its module serves under its name with `_` for `-` (`flows/form.py:
    flows_as_attributes`), or binds to that name."""
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    attribute = flow.name.replace("-", "_")
    return f"{module_name}.{attribute}" if getattr(module, attribute, None) is flow else None


def registered_model_of(use_case: str) -> str:
    """The registered model a use case writes to with its default parameters."""
    return default_registered_model(use_case)


def _training_trigger(flow_name: str, use_case: str) -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name=f"{flow_name}: on {DATA_ARRIVED}",
        description=f"Train {use_case} on the dataset named by an `{DATA_ARRIVED}` event.",
        expect={DATA_ARRIVED},
        match={"prefect.resource.id": dataset_resource(use_case)},
        # The run gets `data` from the event and every other field from its default. A single-expression
        # template keeps the payload's type.
        parameters={"data": "{{ event.payload.path }}"},
    )


def retrain_debounce() -> timedelta:
    return timedelta(hours=float(os.environ.get(RETRAIN_DEBOUNCE_ENV, "24")))


def _retraining_trigger(flow_name: str, registered_model: str) -> DeploymentEventTrigger:
    """Retrain on evidence: monitoring's `mlops.model.degraded` for this model starts a training run on the
    monitored data. Reactive with a window: the first alert fires, later ones within the window only count,
    so at most one triggered retraining per model per `MLOPS_RETRAIN_DEBOUNCE_HOURS` (default 24)."""
    return DeploymentEventTrigger(
        name=f"{flow_name}: on {MODEL_DEGRADED}",
        description=f"Retrain {registered_model} when monitoring finds it drifted or degraded.",
        expect={MODEL_DEGRADED},
        match={"prefect.resource.id": model_resource(registered_model)},
        posture="Reactive",
        threshold=1,
        within=retrain_debounce(),
        parameters={"data": "{{ event.payload.data }}"},
    )


def training_plans(use_cases: Iterable[str] | None = None) -> list[DeploymentPlan]:
    """A plan per training flow in `flows.training.TRAINING_FLOWS` (all, unless `use_cases` names some)."""
    # lazy: the flows (GX, scikit-learn, XGBoost) only to build plans; `mlops notify-data` needs none of them
    from flows.training import TRAINING_FLOWS

    wanted = list(TRAINING_FLOWS) if use_cases is None else list(use_cases)
    if problem := unknown_use_cases(wanted):
        raise KeyError(problem)
    plans = []
    for use_case in wanted:
        flow = TRAINING_FLOWS[use_case]
        model = registered_model_of(use_case)
        plans.append(
            DeploymentPlan(
                kind="training",
                use_case=use_case,
                flow=flow,
                name=model,
                registered_model=model,
                entrypoint=_entrypoint(flow, "flows.training"),
                timing=use_case_timing(use_case, "TRAINING_SCHEDULE") or DEFAULT_TRAINING_SCHEDULE,
                tags=("mlops", "training", f"use-case:{use_case}", f"model:{model}"),
                triggers=(_training_trigger(flow.name, use_case), _retraining_trigger(flow.name, model)),
                concurrency=ONE_AT_A_TIME,
            )
        )
    return plans


def other_plans(use_cases: Iterable[str] | None = None) -> list[DeploymentPlan]:
    """Plans for the scoring and monitoring flows that exist (see `OTHER_FLOWS`). A flow that serves every
    use case is always included; per-use-case ones follow `use_cases`."""
    plans = []
    for other in OTHER_FLOWS:
        try:
            module = importlib.import_module(other.module)
        except ModuleNotFoundError as exc:
            if exc.name != other.module:
                raise
            continue
        target = getattr(module, other.attribute, None)
        if target is None:
            continue
        named = target.items() if isinstance(target, dict) else [(None, target)]
        for use_case, flow in named:
            if use_case is not None and not use_case_filter(use_cases, use_case):
                continue
            plans.append(
                DeploymentPlan(
                    kind=other.kind,
                    use_case=use_case or "",
                    flow=flow,
                    name=use_case or other.deployment,
                    registered_model=None,
                    entrypoint=_entrypoint(flow, other.module),
                    timing=other.timing or (use_case_timing(use_case, other.schedule) if use_case else None),
                    tags=("mlops", other.kind) + ((f"use-case:{use_case}",) if use_case else ()),
                    concurrency=ONE_AT_A_TIME if other.one_at_a_time else None,
                    parameters=_parameters(other.kind, use_case),
                    triggers=_compaction_trigger(flow.name, use_case) if other.kind == "compaction" else (),
                )
            )
    return plans


def _compaction_trigger(flow_name: str, use_case: str) -> tuple[DeploymentEventTrigger, ...]:
    """A new champion gets its compact version: `mlops.model.promoted` for the use case's model starts the
    compaction of exactly the promoted version (the compact model's own promotions name another model)."""
    model = registered_model_of(use_case)
    trigger = DeploymentEventTrigger(
        name=f"{flow_name}: on {MODEL_PROMOTED}",
        description=f"Compact {model} when a new version becomes its champion.",
        expect={MODEL_PROMOTED},
        match={"prefect.resource.id": model_resource(model)},
        parameters={"version": "{{ event.payload.version }}"},
    )
    return (trigger,)


# A scheduled tuning run's budget (the form's default is none: a person gives one).
TUNING_BUDGET = {"trials": 50}


def _parameters(kind: str, use_case: str | None) -> dict | None:
    if kind == "monitoring":
        return _monitor_data(use_case)
    return dict(TUNING_BUDGET) if kind == "tuning" else None


def _monitor_data(use_case: str) -> dict | None:
    """Where a scheduled monitoring run reads (`MLOPS_MONITOR_DATA_<USE CASE>` at deploy time), if set."""
    path = os.environ.get(MONITOR_DATA_ENV.format(use_case.upper()))
    return {"data": path} if path else None


def use_case_filter(use_cases: Iterable[str] | None, use_case: str) -> bool:
    return use_cases is None or use_case in set(use_cases)


def all_plans(use_cases: Iterable[str] | None = None) -> list[DeploymentPlan]:
    use_cases = None if use_cases is None else list(use_cases)
    return training_plans(use_cases) + other_plans(use_cases)
