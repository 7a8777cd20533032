"""The one generic gated-training flow. Every use case runs through it with its own spec.

    ingest → validate raw → features → validate features → split → [load the model to start from] → train
    (+ baselines) → evaluate → record the monitoring profile → [refit up to the newest label] → [champion
    lock: re-score the champion on the test window, compare it with the model to serve on the newest and
    earlier windows' unseen rows, per slice → gate → register → promote] → [a trade-off: a person decides,
    then promote] → report

One MLflow run per flow run records params, the dataset, metrics, plots, the validation results and the gate
report. Nothing reaches the registry unless the absolute and baseline gates pass, and the `champion` alias
moves only when the champion gate passes too.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Param
from prefect import flow, runtime

from champion import store
from champion.lock import champion_lock, ensure_store
from champion.promotion import (
    Promotion,
    rolled_back_hold,
    settle_unfinished_move,
)
from tasks import tracking
from tasks.approval import ask_for_approval
from tasks.card import continual_record, model_card, version_tags
from tasks.compare import compare, log_comparison
from tasks.dask.executor import stages_for
from tasks.evaluate import ChampionScore, Evaluation, evaluate, evaluate_champion, log_scores
from tasks.gate import GateResult, GateVerdict, gate
from tasks.lineage import format_ranges, resolve_parent
from tasks.monitoring.reference import record_profile
from tasks.promote import hold_as_challenger, promote_or_refuse
from tasks.register import LoggedCandidate, Registration, fingerprint, log_candidate, register
from tasks.report import Decision, report
from tasks.slices import evaluate_slices
from tasks.split import Splits
from usecases.params import NON_MODEL_PARAMS, TrainingParams
from usecases.spec import UseCaseSpec
from usecases.vocabulary import FINGERPRINT_TAG, INIT_TAG, PARENT_TAG, TRAINED_ON_TAG, UPDATE_TAG, param_keys


@dataclass(frozen=True)
class TrainingOutcome:
    use_case: str
    registered_model: str
    run_id: str
    experiment_id: str
    tracking_uri: str
    windows: dict
    metrics: dict
    baseline_metrics: dict
    primary_metric: str
    verdict: GateVerdict
    champion_before: ChampionScore
    registration: Registration | None
    promotion: Promotion | None
    decision: Decision
    extra: dict = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.promotion is not None


@dataclass(frozen=True)
class Trained:
    """What a run trained, before the gates: the windows, the model and its scores, the logged model and the
    record of what it is (lineage, validation, test metric) that its tags and card are written from."""

    splits: Splits
    candidate: object
    served: object  # the candidate, or its refit up to the newest label (`tasks/refit.py`)
    evaluation: Evaluation
    judged: (
        Evaluation  # what the absolute and baseline gates read: the refit's, on held-out rows, or the above
    )
    logged: LoggedCandidate
    record: dict


@dataclass(frozen=True)
class Decided:
    champion: ChampionScore
    verdict: GateVerdict
    registration: Registration | None
    promotion: Promotion | None


@flow(name="gated-training", validate_parameters=False, log_prints=True)
def gated_training(spec: UseCaseSpec, params: TrainingParams) -> TrainingOutcome:
    uri = store.configure()
    experiment = ensure_store(spec.name)  # first runs at once: one creates the embedded schema
    client = MlflowClient()
    run_id = _start_run(client, experiment, spec)
    status = "FAILED"
    # In this process, or on a Dask cluster that opens with the first stage (tasks/dask/executor.py).
    stages = stages_for(spec, params, run_id)
    spec = stages.spec  # as the executor runs it (the Dask executor: without refit, replay, recency, holdout)
    try:
        _log_params(client, run_id, spec, params)
        raw = stages.ingest()
        checked = spec.raw_check_view(raw) if spec.raw_check_view else raw  # + derived cross-row columns
        raw_check = stages.validate(checked, spec.raw_suite)
        table = stages.featurize(raw)  # the rows with a known target
        feature_check = stages.validate(table, spec.feature_suite)
        splits = stages.split(table)
        data_digest = stages.log_datasets(raw, splits)

        parent = resolve_parent(
            params.init, spec.registered_model, spec.features, params.update, params.update_rounds
        )
        candidate = stages.train(splits, parent)
        baselines = stages.train_baselines(splits)
        evaluation = evaluate(candidate, baselines, splits, spec.metrics, spec.schema, run_id)
        refitted = stages.refit(candidate, table, splits, evaluation)  # up to the newest label, if asked
        served = refitted.served
        record_profile(spec, *refitted.profile_inputs(splits, evaluation), run_id)  # monitoring's reference
        if refitted.evaluation is not None:
            log_scores(run_id, refitted.evaluation, "served")
        logged = log_candidate(served, splits.test.head(5), run_id)
        record = {  # what the version is; tasks/card.py picks its tags and writes the rest into its card
            **_lineage(spec, run_id, raw, splits, data_digest),
            **_training_lineage(spec, params, served, parent, data_digest),
            **continual_record(spec.continual, served),
            "validation.raw": raw_check.headline(),
            "validation.features": feature_check.headline(),
            f"test_{spec.metrics.primary}": f"{evaluation.candidate.metrics[spec.metrics.primary]:.6f}",
        }
        trained = Trained(
            splits, candidate, served, evaluation, refitted.evaluation or evaluation, logged, record
        )

        decided = _gate_register_promote(spec, params, stages.in_memory(table), trained, run_id)
        decision = report(
            spec.name,
            spec.registered_model,
            decided.verdict,
            decided.registration,
            decided.promotion,
            evaluation.candidate.metrics,
            run_id,
        )
        status = "FINISHED"
        return TrainingOutcome(
            use_case=spec.name,
            registered_model=spec.registered_model,
            run_id=run_id,
            experiment_id=experiment,
            tracking_uri=uri,
            windows=splits.windows,
            metrics=evaluation.candidate.metrics,
            baseline_metrics=evaluation.baseline_metrics,
            primary_metric=spec.metrics.primary,
            verdict=decided.verdict,
            champion_before=decided.champion,
            registration=decided.registration,
            promotion=decided.promotion,
            decision=decision,
        )
    finally:
        stages.close()
        try:
            client.set_terminated(run_id, status)
        except Exception:
            if status == "FINISHED":
                raise
            # already failing (e.g. the MLflow server went away): the first failure is the one to report


def _gate_register_promote(spec: UseCaseSpec, params: TrainingParams, table, trained: Trained, run_id: str):
    """Champion comparison, registration and promotion: one step per registered model, so concurrent runs
    take turns here, each re-reading and re-scoring the champion it has to beat (champion/lock.py).

    Registration depends on the absolute and baseline gates only; the alias moves only if the champion gates
    passed too. A version without the alias is invisible to consumers, who load by alias; one that only the
    champion or forgetting gate held back becomes `challenger` (scored in shadow) unless the run says not to.
    A trade-off (forgetting for adapting) waits for a person outside the lock, then promotes by
    compare-and-set; a rejected one is not made challenger."""
    splits, evaluation = trained.splits, trained.evaluation
    lock = nullcontext() if params.dry_run else champion_lock(spec.registered_model, holder=f"run {run_id}")
    with lock:
        if not params.dry_run:  # the forgetting gate reads the history: no half-done move in it
            settle_unfinished_move(spec.registered_model)
        champion = evaluate_champion(spec.registered_model, splits, spec.metrics)
        context = evaluation.candidate.context
        comparison = compare(spec, table, splits, trained.served, context, champion, params.earlier_windows)
        log_comparison(comparison, spec, run_id)
        slices = evaluate_slices(spec, splits, evaluation, champion, run_id)
        verdict = gate(spec.gates, spec.metrics, trained.judged, champion, comparison, slices)
        if not verdict.registrable or params.dry_run:
            return Decided(champion, verdict, None, None)
        registration = register(
            trained.logged,
            spec.registered_model,
            spec.description,
            model_card(spec, splits, evaluation, champion, verdict, trained.record, trained.served),
            version_tags(trained.record, verdict, spec.metrics.primary),
            run_id,
        )
        verdict = _hold_rolled_back(verdict, registration, evaluation.candidate.metrics, spec)
        if not verdict.awaiting_approval:
            promotion = promote_or_refuse(
                spec.registered_model, registration.version, verdict, champion.version, run_id
            )
            if promotion is None and params.challenger_on_hold:  # lost to the champion: try it in shadow
                hold_as_challenger(spec.registered_model, registration.version, verdict, run_id)
            return Decided(champion, verdict, registration, promotion)
    # A trade-off: a person decides, without the lock (a day's wait must not hold up other runs); the move
    # is then a compare-and-set from the champion the gates compared against.
    approval = ask_for_approval(
        spec.registered_model,
        registration.version,
        comparison.table(),
        run_id,
        spec.continual.approval_timeout,
    )
    verdict = verdict.decided(approval.approved, approval.by, approval.reason)
    with champion_lock(spec.registered_model, holder=f"run {run_id}"):
        promotion = promote_or_refuse(
            spec.registered_model, registration.version, verdict, champion.version, run_id
        )
    return Decided(champion, verdict, registration, promotion)


def _start_run(client: MlflowClient, experiment: str, spec: UseCaseSpec) -> str:
    """The flow run's MLflow run, tagged with what people filter on."""
    run = client.create_run(
        experiment,
        run_name=f"{spec.name}-{runtime.flow_run.name or 'local'}",
        tags={
            "use_case": spec.name,
            "registered_model": spec.registered_model,
            "prefect.flow_run_id": str(runtime.flow_run.id or ""),
            "code_version": tracking.code_version(),
            # What the MLflow UI shows as the run's Source and Created by
            "mlflow.source.type": "JOB",
            "mlflow.source.name": f"flows/training.py:{spec.name}_training",
            "mlflow.user": store.user(),
            **spec.tags,
        },
    )
    return run.info.run_id


def _lineage(spec: UseCaseSpec, run_id: str, raw, splits: Splits, digest: str) -> dict:
    """Where the version came from: the run, the data and its windows, the code."""
    return {
        "use_case": spec.name,
        "lineage.run_id": run_id,
        "lineage.data_digest": digest,
        "lineage.data_source": raw.attrs.get("source", "unknown"),
        "lineage.code_version": tracking.code_version(),
        "lineage.windows": str(splits.windows),
    }


def _training_lineage(spec: UseCaseSpec, params: TrainingParams, candidate, parent, digest: str) -> dict:
    """What it was trained on and from, and the fingerprint an identical rerun is recognised by."""
    return {
        TRAINED_ON_TAG: format_ranges(candidate.trained_on),
        INIT_TAG: params.init,
        **({PARENT_TAG: parent.uri, UPDATE_TAG: parent.mode} if parent is not None else {}),
        FINGERPRINT_TAG: fingerprint(
            use_case=spec.name,
            data=digest,
            code=tracking.code_version(),
            params=params.model_dump(exclude=set(NON_MODEL_PARAMS)),
            # `champion` names another model after each promotion: the parent it resolved to counts.
            **({"parent": parent.uri} if parent is not None else {}),
        ),
    }


def _hold_rolled_back(verdict: GateVerdict, registration: Registration, metrics: dict, spec) -> GateVerdict:
    """An identical rerun of a version that `mlops rollback` demoted must not quietly promote it again."""
    reason = (
        rolled_back_hold(spec.registered_model, registration.version) if registration.deduplicated else None
    )
    if reason is None:
        return verdict
    held = GateResult(
        name="champion.rolled_back",
        kind="champion",
        metric=spec.metrics.primary,
        value=float(metrics[spec.metrics.primary]),
        threshold=float("nan"),
        passed=False,
        detail=reason,
    )
    return GateVerdict((*verdict.results, held))


def _log_params(client: MlflowClient, run_id: str, spec: UseCaseSpec, params: TrainingParams) -> None:
    """The run's parameters and the spec's model and split parts, read from their dataclasses."""
    flat = param_keys(params.model_dump())
    for part in ("model", "split"):
        for key, value in asdict(getattr(spec, part)).items():
            if key == "params":
                flat.update({f"model.{k}": v for k, v in value.items()})
            else:
                flat[f"{part}.{key}"] = ",".join(value) if isinstance(value, tuple) else value
    flat["features"] = ",".join(spec.features)
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])
