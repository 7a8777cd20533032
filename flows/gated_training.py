"""The one generic gated-training flow. Every use case runs through it with its own spec.

    ingest → validate raw → features → validate features → split → [load the model to start from] → train
    (+ baselines) → evaluate → record the monitoring profile → [champion lock: re-score the champion on the
    same test window, on earlier champions' test windows and per slice → gate → register → promote] → report

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

from champion.lock import champion_lock, ensure_store
from champion.promotion import (
    Promotion,
    current_champion,
    mark_not_promoted,
    promote,
    rolled_back_hold,
    settle_unfinished_move,
)
from tasks import tracking
from tasks.card import model_card, version_tags
from tasks.evaluate import ChampionScore, evaluate, evaluate_champion, evaluate_earlier
from tasks.executor import stages_for
from tasks.gate import GateResult, GateVerdict, gate
from tasks.lineage import INIT_TAG, PARENT_TAG, TRAINED_ON_TAG, UPDATE_TAG, format_ranges, resolve_parent
from tasks.profile import record_profile
from tasks.register import FINGERPRINT_TAG, Registration, fingerprint, log_candidate, register
from tasks.report import Decision, report
from tasks.slices import evaluate_slices
from tasks.split import Splits
from usecases.spec import NON_MODEL_PARAMS, TrainingParams, UseCaseSpec


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


@flow(name="gated-training", validate_parameters=False, log_prints=True)
def gated_training(spec: UseCaseSpec, params: TrainingParams) -> TrainingOutcome:
    uri = tracking.configure()
    experiment = ensure_store(spec.name)  # first runs at once: one creates the embedded schema
    client = MlflowClient()
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
            "mlflow.user": tracking.user(),
            **spec.tags,
        },
    )
    run_id = run.info.run_id
    status = "FAILED"
    # In this process, or on a Dask cluster that opens with the first stage (tasks/executor.py).
    stages = stages_for(spec, params, run_id)
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
        record_profile(spec, splits, evaluation, run_id)  # what monitoring compares new data against
        logged = log_candidate(candidate, splits.test.head(5), run_id)
        record = {  # what the version is; tasks/card.py picks its tags and writes the rest into its card
            "use_case": spec.name,
            "lineage.run_id": run_id,
            "lineage.data_digest": data_digest,
            "lineage.data_source": raw.attrs.get("source", "unknown"),
            "lineage.code_version": tracking.code_version(),
            "lineage.windows": str(splits.windows),
            TRAINED_ON_TAG: format_ranges(candidate.trained_on),
            INIT_TAG: params.init,
            **({PARENT_TAG: parent.uri, UPDATE_TAG: parent.mode} if parent is not None else {}),
            FINGERPRINT_TAG: fingerprint(
                use_case=spec.name,
                data=data_digest,
                code=tracking.code_version(),
                params=params.model_dump(exclude=set(NON_MODEL_PARAMS)),
                # `champion` names another model after each promotion: the parent it resolved to counts.
                **({"parent": parent.uri} if parent is not None else {}),
            ),
            "validation.raw": raw_check.headline(),
            "validation.features": feature_check.headline(),
            f"test_{spec.metrics.primary}": f"{evaluation.candidate.metrics[spec.metrics.primary]:.6f}",
        }

        # Champion comparison, registration and promotion are one step per registered model: concurrent
        # runs take turns here, each re-reading and re-scoring the champion it has to beat
        # (champion/lock.py).
        # Registration depends on the absolute and baseline gates only; the alias moves only if the champion
        # gate passed too. A version without the alias is invisible to consumers, who load by alias.
        lock = (
            nullcontext() if params.dry_run else champion_lock(spec.registered_model, holder=f"run {run_id}")
        )
        with lock:
            if not params.dry_run:  # the forgetting gate reads the history: no half-done move in it
                settle_unfinished_move(spec.registered_model)
            champion = evaluate_champion(spec.registered_model, splits, spec.metrics)
            earlier = evaluate_earlier(
                spec, stages.in_memory(table), candidate, evaluation, champion, params.earlier_windows, run_id
            )
            slices = evaluate_slices(
                spec.slices, splits, evaluation, champion, spec.metrics, spec.schema, spec.gates, run_id
            )
            verdict = gate(spec.gates, spec.metrics, evaluation, champion, earlier, slices)
            registration = None
            if verdict.registrable and not params.dry_run:
                registration = register(
                    logged,
                    spec.registered_model,
                    spec.description,
                    model_card(spec, splits, evaluation, champion, verdict, record, candidate),
                    version_tags(record, verdict, spec.metrics.primary),
                    run_id,
                )
                verdict = _hold_rolled_back(verdict, registration, evaluation.candidate.metrics, spec)
            promotion = None
            if registration is not None:
                promotion = _promote_or_say_why_not(
                    spec.registered_model, verdict, registration, champion, run_id
                )

        decision = report(
            spec.name,
            spec.registered_model,
            verdict,
            registration,
            promotion,
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
            verdict=verdict,
            champion_before=champion,
            registration=registration,
            promotion=promotion,
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


def _promote_or_say_why_not(
    name: str, verdict: GateVerdict, registration: Registration, champion: ChampionScore, run_id: str
) -> Promotion | None:
    """Promote when every gate passed; otherwise tag the version with why it is not champion. If promotion
    fails, the alias stays on the previous champion, the version says `promotion: failed ...` and the run
    fails."""
    version = registration.version
    if not verdict.promotable:
        if current_champion(MlflowClient(), name) != version:
            mark_not_promoted(name, version, "refused", "; ".join(r.detail for r in verdict.refusals))
        return None
    try:
        return promote(name, version, champion.version, run_id)
    except Exception as exc:
        mark_not_promoted(name, version, "failed", f"{type(exc).__name__}: {exc}")
        raise


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
    flat = {f"param.{k}": v for k, v in params.model_dump().items()}
    for part in ("model", "split"):
        for key, value in asdict(getattr(spec, part)).items():
            if key == "params":
                flat.update({f"model.{k}": v for k, v in value.items()})
            else:
                flat[f"{part}.{key}"] = ",".join(value) if isinstance(value, tuple) else value
    flat["features"] = ",".join(spec.features)
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])


def _log_datasets(run_id: str, spec: UseCaseSpec, raw, splits: Splits) -> str:
    """Record the input table as an MLflow dataset and the windows' sizes; return the input's digest.

    The digest covers every row (MLflow's default hashes only the first 10,000, too weak for lineage and
    dedupe, and is slow on wide frames).
    """
    digest = tracking.content_digest(raw)
    rows = {w: len(getattr(splits, w)) for w in splits.windows}
    source = raw.attrs.get("source", "unknown")
    tracking.record_input(run_id, f"{spec.name}-raw", raw, source, digest, splits.windows, rows)
    return digest
