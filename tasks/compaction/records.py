"""What a compaction records: its MLflow run, the chosen version's tags and card, the report and the decision.

One MLflow run per compaction (experiment `<use case>-compaction`) carries the teacher's `param.*` and
`window.*` (scoring and monitoring read a version's feature parameters from its run), the gates, the plan and
the environment; at the end every model's measurements as metrics, `compact_report.json`, the decision as
tags, a Prefect artifact `compaction-<use case>` and the event `mlops.model.promoted` or
`mlops.model.rejected`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import xgboost as xgb
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from prefect import runtime
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from champion.lock import ensure_store
from tasks import tracking
from tasks.card import gates_summary
from tasks.compaction.compile import COMPILED_DIR, platform_record
from tasks.compaction.teacher import compact_name
from tasks.register import fingerprint
from tasks.stage import mlflow_stage
from usecases.vocabulary import (
    FINGERPRINT_TAG,
    GATES_TAG,
    MODEL_PROMOTED,
    MODEL_REJECTED,
    PARAM_PREFIX,
    model_resource,
)

if TYPE_CHECKING:
    from champion.promotion import Promotion
    from tasks.compaction.candidates import CompactCandidate
    from tasks.compaction.compile import Compiled
    from tasks.compaction.gates import Judgement
    from tasks.compaction.measure import Measured
    from tasks.compaction.teacher import Teacher
    from tasks.gate import GateVerdict
    from tasks.register import LoggedCandidate, Registration
    from tasks.split import Splits
    from usecases.spec import CompactGates, CompactPlan

# Lineage facts the compact version inherits from its teacher's tags.
INHERITED_TAGS = ("lineage.data_digest", "lineage.data_source", "lineage.windows", "validation.raw")


@dataclass(frozen=True)
class CompactionRun:
    """A compaction's MLflow run: of which use case and teacher, registering which model."""

    use_case: str
    name: str  # the compact model's registry name, `<teacher>-compact`
    teacher: Teacher
    run_id: str


def environment() -> dict:
    """Versions that decide what a compiled library is, for the run's params."""
    out = {"xgboost": xgb.__version__, **platform_record()}
    for module in ("treelite", "tl2cgen"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            out[module] = "missing"
    out["cpu_count"] = os.cpu_count()
    return out


@mlflow_stage
def start_run(use_case: str, teacher: Teacher, gates: CompactGates, plan: CompactPlan) -> CompactionRun:
    """The compaction's MLflow run (experiment `<use case>-compaction`). It carries the teacher's `param.*`
    and `window.*`: scoring and monitoring read a version's feature parameters from its run."""
    name = compact_name(teacher.name)
    client = MlflowClient()
    run = client.create_run(
        ensure_store(f"{use_case}-compaction"),
        run_name=f"{name}-{runtime.flow_run.name or 'local'}",
        tags={
            "use_case": use_case,
            "registered_model": name,
            "lineage.teacher": f"{teacher.name}/{teacher.version}",
            "prefect.flow_run_id": str(runtime.flow_run.id or ""),
            "code_version": tracking.code_version(),
        },
    )
    inherited = {
        k: v for k, v in teacher.training.items() if k.startswith((PARAM_PREFIX, "window.", "features"))
    }
    own = {f"gates.{k}": v for k, v in asdict(gates).items()}
    own |= {f"plan.{k}": v for k, v in asdict(plan).items()}
    own |= {f"env.{k}": v for k, v in environment().items()}
    own |= {"teacher": f"{teacher.name}/{teacher.version}", "teacher.run_id": teacher.run_id or ""}
    params = [Param(k, str(v)[:6000]) for k, v in {**inherited, **own}.items()]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run.info.run_id, params=params[i : i + 100])
    return CompactionRun(use_case, name, teacher, run.info.run_id)


def with_compiled(logged: LoggedCandidate, compiled: Compiled | None) -> None:
    """The compiled library and its platform.json as an optional extra inside the logged model."""
    if compiled is None:
        return
    MlflowClient().log_model_artifacts(logged.model_id, str(compiled.folder), artifact_path=COMPILED_DIR)


# --- the registered version ------------------------------------------------------------------------------


def model_description(teacher: Teacher) -> str:
    """The compact registered model's description."""
    return (
        f"Compact stand-in for {teacher.name}, same input and output: distilled from, cut or pruned out "
        "of its champion and gated on the champion's test window; each version's card says which."
    )


def version_tags(
    run: CompactionRun, judgement: Judgement, candidate: CompactCandidate, compiled: Compiled | None
) -> dict[str, str]:
    """Lineage to the teacher, what was done, the measurements and every gate's verdict (the chosen one's)."""
    teacher, (m, verdict) = run.teacher, judgement.judged[judgement.chosen]
    built = "none"
    if compiled is not None:
        c = compiled.meta
        built = (
            f"{COMPILED_DIR}/{c['library']} for {c['machine']}-{c['system']}-{c['libc']} ({c['size_kb']} KB)"
        )
    return {
        **{k: v for k, v in teacher.tags.items() if k in INHERITED_TAGS},
        "lineage.teacher": f"{teacher.name}/{teacher.version}",
        "lineage.teacher_run_id": teacher.run_id or "",
        "lineage.run_id": run.run_id,
        "lineage.code_version": tracking.code_version(),
        FINGERPRINT_TAG: fingerprint(
            teacher=f"{teacher.name}/{teacher.version}",
            teacher_fingerprint=teacher.tags.get(FINGERPRINT_TAG, ""),
            code=tracking.code_version(),
            candidate={k: str(v) for k, v in candidate.params.items()},
        ),
        "compact.method": candidate.method,
        "compact.detail": m.detail,
        "compact.size_kb": f"{m.size_kb:.1f}",
        "compact.ratio": f"{m.ratio:.4f}",
        "compact.trees": str(m.trees),
        "compact.nodes": str(m.nodes),
        "compact.latency_p50_us": f"{m.p50_us:.0f}",
        "compact.compiled": built,
        **({"compact.compiled_p50_us": f"{compiled.meta['p50_us']:.0f}"} if compiled is not None else {}),
        **{f"test_{k}": f"{v:.6f}" for k, v in m.metrics.items() if k not in ("tn", "fp", "fn", "tp")},
        GATES_TAG: gates_summary(verdict),
    }


TABLE_HEADER = ["model", "what", "trees", "nodes", "KB", "{primary}", "ratio", "p50 us", "p99 us", "verdict"]


def fmt_row(m: Measured, verdict: GateVerdict | None, chosen: bool) -> list[str]:
    """One model's row of the table; `verdict` None for the teacher."""
    if verdict is None:
        state = "teacher"
    elif chosen:
        state = "**chosen**"
    elif verdict.registrable:
        state = "passed"
    else:
        state = "refused: " + "; ".join(r.detail for r in verdict.refusals)
    numbers = [str(m.trees), str(m.nodes), f"{m.size_kb:.1f}", f"{m.primary:#.4g}", f"{m.ratio:.3f}"]
    return [m.label, m.detail, *numbers, f"{m.p50_us:.0f}", f"{m.p99_us:.0f}", state]


def markdown_table(judgement: Judgement) -> str:
    """The teacher and every candidate, measured and judged."""
    header = [h.format(primary=judgement.primary) for h in TABLE_HEADER]
    rows = [fmt_row(judgement.teacher_measured, None, False)]
    rows += [fmt_row(m, v, i == judgement.chosen) for i, (m, v) in enumerate(judgement.judged)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _build_text(compiled: Compiled | None) -> str:
    if compiled is None:
        return "Not compiled: the UBJ booster only."
    c = compiled.meta
    return (
        f"Compiled with TL2cgen {c['tl2cgen']} (treelite {c['treelite']}, quantize={c['quantize']}, "
        f"{c['toolchain']}) for {c['machine']} {c['system']} {c['libc']} {c['libc_version']} (Python "
        f"{c['python']}, {c['abi']}): `compiled/{c['library']}`, {c['size_kb']} KB, single-row p50 "
        f"{c['p50_us']:.0f} us; elsewhere, or without TL2cgen, the UBJ booster "
        "(`tasks.compaction.consumer.open_compact`)."
    )


def model_card(run: CompactionRun, splits: Splits, judgement: Judgement, compiled: Compiled | None) -> str:
    """The chosen version's card: what it is, how it measured against its teacher, its gates and build."""
    teacher, name, primary = run.teacher, run.name, judgement.primary
    t = judgement.teacher_measured
    m, verdict = judgement.judged[judgement.chosen]
    windows = ", ".join(f"{k} {lo} .. {hi}" for k, (lo, hi) in splits.windows.items())
    gates = "; ".join(f"{r.name} {'passed' if r.passed else 'refused'} ({r.detail})" for r in verdict.results)
    return (
        f"# {name}: compact {teacher.name}\n\n"
        f"{m.detail[0].upper() + m.detail[1:]}, from teacher {teacher.name} v{teacher.version} "
        f"(`lineage.teacher`); on the teacher's test window {primary} {m.primary:#.4g} = {m.ratio:.3f} x the "
        f"teacher's {t.primary:#.4g}, {m.size_kb:.1f} KB ({m.size_kb / t.size_kb:.2f} x), "
        f"single-row p50 {m.p50_us:.0f} us (teacher {t.p50_us:.0f} us).\n\n"
        f"Windows rebuilt from the teacher's data ({windows}).\n\n"
        f"{markdown_table(judgement)}\n\n"
        "Latency: one row at a time, in process, XGBoost `inplace_predict` on one thread.\n\n"
        f"Gates: {gates}.\n\n{_build_text(compiled)}\n\n"
        f"Load with mlflow.pyfunc.load_model('models:/{name}@champion') (XGBoost UBJ, nothing pickled)."
    )


# --- the decision and the report -------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactDecision:
    status: str  # "promoted" | "registered" | "refused" | "dry-run"
    summary: str


def decide(
    name: str,
    judgement: Judgement,
    registration: Registration | None,
    promotion: Promotion | None,
    dry_run: bool,
) -> CompactDecision:
    if judgement.chosen is None:
        why = (
            "; ".join(f"{m.label}: " + ", ".join(r.detail for r in v.refusals) for m, v in judgement.judged)
            or "no candidates were built"
        )
        return CompactDecision(
            "refused", f"no compact candidate passed its gates, nothing registered ({why})"
        )
    label = judgement.judged[judgement.chosen][0].label
    if dry_run:
        return CompactDecision("dry-run", f"{label} passed; dry run: nothing registered")
    if promotion is not None:
        moved = (
            "already champion" if not promotion.moved else f"previous champion v{promotion.previous or '-'}"
        )
        return CompactDecision("promoted", f"{name} v{promotion.version} ({label}) is champion; {moved}")
    verdict = judgement.verdict
    refused = "; ".join(r.detail for r in verdict.refusals) if verdict else ""
    return CompactDecision(
        "registered", f"registered {name} v{registration.version} ({label}), not promoted: {refused}"
    )


@mlflow_stage
def report_compaction(
    run: CompactionRun,
    judgement: Judgement,
    compiled: Compiled | None,
    registration: Registration | None,
    promotion: Promotion | None,
    dry_run: bool,
) -> CompactDecision:
    """`compact_report.json` and metrics on the run, a Prefect artifact `compaction-<use case>`, and the event
    `mlops.model.promoted` / `mlops.model.rejected` for `<name>`."""
    decision = decide(run.name, judgement, registration, promotion, dry_run)
    client = MlflowClient()
    client.log_batch(run.run_id, metrics=_metrics(judgement, compiled))
    report = {
        "status": decision.status,
        "summary": decision.summary,
        "registered_model": run.name,
        "teacher": f"{run.teacher.name}/{run.teacher.version}",
        "version": registration.version if registration else None,
        "teacher_measured": judgement.teacher_measured.row(),
        "candidates": [
            {**m.row(), "chosen": i == judgement.chosen, "gates": v.as_records()}
            for i, (m, v) in enumerate(judgement.judged)
        ],
        "gates": judgement.verdict.as_records() if judgement.verdict else None,
        "compiled": compiled.meta if compiled else None,
    }
    client.log_dict(run.run_id, report, "compact_report.json")
    client.set_tag(run.run_id, "decision", decision.status)
    client.set_tag(run.run_id, "decision.summary", decision.summary[:5000])
    if registration is not None:
        client.set_tag(run.run_id, "registered_version", registration.version)
    create_markdown_artifact(
        key=f"compaction-{run.use_case}",
        description=f"{run.name}: {decision.status}",
        markdown=f"# Compaction of {run.teacher.name} v{run.teacher.version}: {decision.status}\n\n"
        f"{decision.summary}\n\n{markdown_table(judgement)}\n\n"
        f"MLflow run: `{run.run_id}`\n",
    )
    _emit_decision(run, judgement, decision, registration, promotion)
    return decision


def _metrics(judgement: Judgement, compiled: Compiled | None) -> list[Metric]:
    """The teacher's and every candidate's measurements, and the compiled library's latency."""
    now, primary, t = int(time.time() * 1000), judgement.primary, judgement.teacher_measured
    teacher = (("test_" + primary, t.primary), ("size_kb", t.size_kb), ("p50_us", t.p50_us))
    metrics = [Metric(f"teacher.{k}", v, now, 0) for k, v in teacher]
    for m, _ in judgement.judged:
        for key, value in (
            ("test_" + primary, m.primary),
            ("ratio", m.ratio),
            ("size_kb", m.size_kb),
            ("p50_us", m.p50_us),
            ("trees", m.trees),
        ):
            metrics.append(Metric(f"{m.label}.{key}", float(value), now, 0))
    if compiled is not None:
        metrics.append(Metric("compiled.p50_us", compiled.meta["p50_us"], now, 0))
    return [m for m in metrics if math.isfinite(m.value)]


def _emit_decision(
    run: CompactionRun,
    judgement: Judgement,
    decision: CompactDecision,
    registration: Registration | None,
    promotion: Promotion | None,
) -> None:
    """`mlops.model.promoted` or `mlops.model.rejected` about the compact model."""
    promoted = decision.status == "promoted"
    payload = {
        "registered_model": run.name,
        "use_case": run.use_case,
        "teacher": f"{run.teacher.name}/{run.teacher.version}",
        "status": decision.status,
        "summary": decision.summary,
        "version": registration.version if registration else None,
        "mlflow_run_id": run.run_id,
    }
    if promoted:
        payload |= {"previous_version": promotion.previous, "moved": promotion.moved}
        payload["metrics"] = dict(judgement.judged[judgement.chosen][0].metrics)
    else:
        verdict = judgement.verdict
        payload["refused"] = [r.name for r in verdict.refusals] if verdict else ["compact"]
    emit_event(
        event=MODEL_PROMOTED if promoted else MODEL_REJECTED,
        resource={
            "prefect.resource.id": model_resource(run.name),
            "prefect.resource.name": run.name,
            "mlops.use-case": run.use_case,
        },
        payload=payload,
    )
