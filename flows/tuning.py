"""Tuning flows, one per use case that declares a search space: an Optuna study run as a Prefect flow.

    read the data → features → walk-forward folds inside the training window → the spec defaults' value on
    them → trials, each a task run on the flow's task runner (threads, or Dask workers with --executor dask)
    → the study's summary in MLflow → the winner, if it beats the defaults, through a normal gated run

Parameters are `usecases.params.TuneParams` (the CLI's options and the deployment's form). The study lives in
its storage (`tasks/tuning/study.py`), so the budget is what this run adds: an existing `--study` continues.
The winner's gated run (`<use case>-training`, a subflow) reads its parameters with
`params_from=study:NAME#TRIAL`, so its MLflow run and the registered version's card name the study and trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from prefect import runtime

from champion import store
from champion.lock import ensure_store
from flows.form import flows_as_attributes, form_flow, to_form
from flows.training import TRAINING_FLOWS
from tasks.dask.cluster import dask_runner, resolve_executor, submit
from tasks.features import featurize
from tasks.ingest import ingest
from tasks.selection import eval_metric
from tasks.split import with_known_target
from tasks.tuning import TuningError
from tasks.tuning.apply import tuned_spec
from tasks.tuning.budget import run_within_budget
from tasks.tuning.folds import tuning_folds
from tasks.tuning.objective import prunable
from tasks.tuning.records import finish_parent, log_summary, start_parent
from tasks.tuning.study import (
    DEFAULTS_ATTR,
    FOLDS_ATTR,
    METRIC_ATTR,
    USE_CASE_ATTR,
    create_or_continue,
    open_storage,
    storage_url,
)
from tasks.tuning.trial import TrialJob, run_trial, score_defaults
from usecases import SPEC_MODULES, spec_module
from usecases.params import TuneParams


@dataclass(frozen=True)
class TuningOutcome:
    use_case: str
    study: str
    storage: str
    run_id: str  # the MLflow parent run
    trials: list  # this run's `TrialResult`s, in the order they finished
    study_trials: int  # every trial of the study, earlier runs' too
    best_trial: int | None
    best_value: float | None
    best_params: dict
    defaults_value: float
    metric: str
    greater_is_better: bool
    beats_defaults: bool
    message: str
    training: object | None = None  # the winner's TrainingOutcome (flows/gated_training.py)
    extra: dict = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.training is not None and self.training.promoted


def check_space(module, params) -> object:
    """The use case's search space, checked: run fields exist and every range's ends are valid values."""
    spec = module.build_spec(params)
    if spec.tuning is None:
        raise TuningError(f"use case {spec.name} declares no search space (UseCaseSpec.tuning)")
    spec.tuning.check_run_fields(type(params).model_fields)
    for p in spec.tuning.space:
        if p.target == "run":
            for value in p.choices or (p.low, p.high):
                value = int(value) if p.kind == "int" else value
                tuned_spec(module.build_spec, params, [p], {p.name: value})
    return spec


def tune(use_case: str, options: TuneParams) -> TuningOutcome:
    """The study's run (see the module docstring); raises `TuningError`/`SearchSpaceError` on bad input."""
    if options.trials is None and options.timeout is None:
        raise TuningError("give a budget: trials (--trials N) or seconds (--timeout S)")
    module = spec_module(use_case)
    params = module.Params(**({"data": options.data} if options.data else {}), seed=options.seed)
    spec = check_space(module, params)
    executor = resolve_executor(options.executor)
    log = store.run_logger()
    uri = store.configure()
    experiment = ensure_store(spec.name)
    table = with_known_target(featurize(ingest(spec.load, params), spec.build_features), spec.target)
    data = tuning_folds(table, spec, spec.tuning.folds)
    del table
    name = options.study or f"{use_case}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    metric, maximize = spec.metrics.primary, spec.metrics.greater_is_better
    storage = open_storage()
    attrs = {USE_CASE_ATTR: use_case, METRIC_ATTR: metric, FOLDS_ATTR: data.describe()}
    study, new = create_or_continue(name, storage, maximize, attrs, options.seed, spec.tuning.pruning_warmup)
    log.info(
        "study %s (%s, %d trials so far) in %s; %d folds: %s",
        name,
        "new" if new else "continued",
        len(study.trials),
        storage_url().split("@")[-1],
        len(data.folds),
        "; ".join(f"fit ..{f['fit'][1]} block {f['block'][0]}..{f['block'][1]}" for f in data.describe()),
    )
    if not prunable(spec):
        booster_metric = eval_metric(spec.problem, spec.model)
        log.info("no pruning: eval metric %s and %s point different ways", booster_metric, metric)
    flow_run = str(runtime.flow_run.id or "")
    parent = start_parent(
        experiment, use_case, name, {"tuning.executor": executor, "prefect.flow_run_id": flow_run}
    )
    if DEFAULTS_ATTR not in study.user_attrs:  # once per study: a continued one compares with the same
        value, defaults = score_defaults(spec, data, options.seed)
        study.set_user_attr(DEFAULTS_ATTR, value)
        study.set_user_attr("defaults_params", {k: str(v) for k, v in defaults.items()})
    defaults_value = float(study.user_attrs[DEFAULTS_ATTR])
    log.info("spec defaults on the same folds: %s %.6g", metric, defaults_value)
    job = TrialJob(
        module.build_spec,
        params,
        spec.tuning.space,
        options.seed,
        spec.tuning.pruning_warmup,
        storage_url(),
        name,
        uri,
        experiment,
        parent,
        metric,
    )
    try:
        results = _run_trials(job, data, options, executor)
        return _conclude(use_case, options, params, study, job, results, defaults_value)
    except BaseException:
        finish_parent(parent, None, "FAILED")
        raise


def _run_trials(job: TrialJob, data, options: TuneParams, executor: str) -> list:
    """Trials on the task runner, `options.parallel` at a time, until the budget is spent."""
    if executor == "dask":
        with dask_runner() as runner:
            shared = runner.client.scatter(data, broadcast=True)  # the folds go to each worker once

            def start(slot):
                return submit(runner, run_trial, job=job, data=shared, slot=slot)

            return run_within_budget(start, options)
    return run_within_budget(lambda slot: run_trial.submit(job=job, data=data, slot=slot), options)


def _conclude(use_case, options, params, study, job, results, defaults_value):
    """Summarise in MLflow; train the winner through the gates if it beats the defaults."""
    log = store.run_logger()
    maximize = study.direction.name == "MAXIMIZE"
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = study.best_trial if complete else None
    states = [r.state for r in results]
    beats = best is not None and (best.value > defaults_value if maximize else best.value < defaults_value)
    summary = {
        "study": job.study,
        "trials_this_run": len(results),
        "pruned_this_run": states.count("PRUNED"),
        "failed_this_run": states.count("FAIL"),
        "pruned_share": states.count("PRUNED") / len(results) if results else 0.0,
        "study_trials": len(study.trials),
        "defaults_value": defaults_value,
        "best_value": best.value if best else None,
        "best_trial": best.number if best else None,
        "best_params": dict(best.params) if best else {},
        "beats_defaults": beats,
    }
    log_summary(job.parent_run_id, study, job.metric, summary)
    if best is None:
        message = f"study {job.study}: no complete trial, nothing to train"
    elif not beats:
        message = (
            f"study {job.study}: the best trial #{best.number} ({job.metric} {best.value:.6g}) does not beat "
            f"the spec defaults ({defaults_value:.6g}) on the same folds; nothing registered"
        )
    else:
        message = (
            f"study {job.study}: trial #{best.number} {job.metric} {best.value:.6g} against the spec "
            f"defaults' {defaults_value:.6g} on the same folds"
        )
    log.info(message)
    training = None
    if beats and options.train_winner:
        winner = params.model_copy(update={"params_from": f"study:{job.study}#{best.number}"})
        log.info("training the winner through every gate: params_from=%s", winner.params_from)
        training = TRAINING_FLOWS[use_case](**to_form(winner))
        message += f"; winner {training.decision.status}: {training.decision.summary}"
    finish_parent(job.parent_run_id, training, "FINISHED")
    return TuningOutcome(
        use_case=use_case,
        study=job.study,
        storage=job.storage_url.split("@")[-1],
        run_id=job.parent_run_id,
        trials=results,
        study_trials=len(study.trials),
        best_trial=best.number if best else None,
        best_value=best.value if best else None,
        best_params=dict(best.params) if best else {},
        defaults_value=defaults_value,
        metric=job.metric,
        greater_is_better=maximize,
        beats_defaults=beats,
        message=message,
        training=training,
    )


def tuning_flow(use_case: str):
    """A `<use case>-tuning` flow whose parameters are the fields of `TuneParams`."""

    def run(options: TuneParams):
        return tune(use_case, options)

    doc = f"Tuning of the {use_case} use case: an Optuna study, trials as task runs, the winner gated."
    return form_flow(run, TuneParams, f"{use_case}-tuning", doc, log_prints=True)


TUNING_FLOWS = {name: tuning_flow(name) for name in SPEC_MODULES}
__getattr__ = flows_as_attributes(TUNING_FLOWS, __name__)  # `<use case>_tuning`
