"""Records of a comparison: one MLflow run in the experiment `<use case>-challenger` per comparison, and a
Prefect markdown artifact when it runs inside a flow.

    open_record (before anything moves, so a promotion can name the run): parameters (the versions, since,
    the labels file, the rule), metrics (both versions', their differences, the bootstrap, McNemar, the
    counts; per-day metrics as steps of `<role>.<metric>_by_day`) and `plots/daily.png`
    close_record: the decision (tags `decision`, `reason`), `comparison.json`, `comparison_report.html`
    and the markdown artifact `challenger-<use case>`

`comparison_rows` is the table every reader shows (the report, the artifact, `mlops compare`).
"""

from __future__ import annotations

import base64
import io
import math
import tempfile
import time
from dataclasses import asdict, fields
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from prefect import runtime
from prefect.artifacts import create_markdown_artifact

from champion import store
from tasks.challenger.decision import Decision, Verdict
from tasks.challenger.evidence import ROLES, Evidence
from tasks.stage import mlflow_stage

_COLOURS = {"promoted": "#2e7d32", "retired": "#c62828", "waiting": "#ef6c00", "reported": "#455a64"}
_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}"
    "td:first-child{text-align:left}.decision{border:3px solid;padding:.5em 1em;border-radius:6px}"
    ".meta{color:#666;font-size:12px}"
)


def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def _jsonable(obj: Any) -> Any:
    """`obj` with numpy scalars as Python ones and non-finite floats as None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer | np.bool_):
        return obj.item()
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def comparison_rows(e: Evidence) -> list[tuple[str, str, str, str]]:
    """(metric, champion, challenger, challenger - champion), the rule's metric first, then the statistics."""
    champion, challenger = e.metrics.get("champion", {}), e.metrics.get("challenger", {})
    names = sorted(champion, key=lambda m: (m != e.metric, list(champion).index(m)))
    rows = [
        (
            m,
            _number(champion[m]),
            _number(challenger.get(m)),
            _number(challenger.get(m, np.nan) - champion[m]),
        )
        for m in names
    ]
    if e.thresholds and "threshold" not in champion:
        rows.append(("threshold", *(_number(e.thresholds[r]) for r in ROLES), ""))
    rows.append(("labelled pairs compared", _number(e.compared), "", ""))
    if e.positives is not None:
        rows.append(("positives", _number(e.positives), "", ""))
    if e.gain is not None:
        low, high = e.interval
        gain = f"{_number(e.gain)} ({_number(e.relative_gain * 100, 3)} %)"
        rows.append((f"gain in {e.metric} (positive: challenger better)", "", "", gain))
        rows.append(
            (f"{e.rule.confidence:.0%} paired-bootstrap interval", "", "", f"{low:+.4g} .. {high:+.4g}")
        )
        rows.append(("resamples the challenger won", "", "", f"{e.win_share:.1%}"))
    if e.mcnemar:
        m = e.mcnemar
        only = (_number(m["champion_only_right"]), _number(m["challenger_only_right"]))
        rows.append(("McNemar: only this version right", *only, f"p = {m['p_value']:.3g}"))
    if e.disagreement is not None:
        rows.append(("disagreement at the thresholds", "", "", f"{e.disagreement:.2%}"))
    return rows


def _run_metrics(e: Evidence) -> list[Metric]:
    now = int(time.time() * 1000)
    values = {f"counts.{k}": v for k, v in e.counts.items()}
    for role in ROLES:
        values.update({f"{role}.{m}": v for m, v in e.metrics.get(role, {}).items()})
    values.update(
        {
            f"diff.{m}": e.metrics["challenger"].get(m, np.nan) - v
            for m, v in e.metrics.get("champion", {}).items()
        }
    )
    if e.gain is not None:
        values.update(gain=e.gain, relative_gain=e.relative_gain, win_share=e.win_share)
        values.update(interval_low=e.interval[0], interval_high=e.interval[1])
    values.update({f"mcnemar.{k}": v for k, v in (e.mcnemar or {}).items()})
    if e.disagreement is not None:
        values["disagreement"] = e.disagreement
    metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if v is not None and np.isfinite(v)]
    for step, day in enumerate(e.daily):
        for role in ROLES:
            for m, v in day[role].items():
                if v is not None and np.isfinite(v):
                    metrics.append(Metric(f"{role}.{m}_by_day", float(v), now, step))
    return metrics


def daily_plot(e: Evidence) -> bytes | None:
    """PNG: each per-day metric for both versions, one panel each; None without days."""
    if not e.daily:
        return None
    # why: matplotlib is slow to import and only a comparison with days to show draws
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(e.daily[0]["champion"])
    figure = Figure(figsize=(8, 2.6 * len(names)), layout="constrained")
    FigureCanvasAgg(figure)
    days = [d["day"] for d in e.daily]
    for i, name in enumerate(names):
        ax = figure.add_subplot(len(names), 1, i + 1)
        for role, style in zip(ROLES, ("o-", "s--"), strict=True):
            version = getattr(e, role)
            ax.plot(days, [d[role][name] for d in e.daily], style, label=f"{role} v{version}")
        ax.set_ylabel(name)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        ax.legend(fontsize=8)
    figure.suptitle(f"{e.registered_model}: per day, on the same labelled pairs")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


@mlflow_stage
def open_record(e: Evidence, verdict: Verdict, labels: str | None, decide: bool) -> str:
    """The comparison's MLflow run (see the module docstring), still running; its id."""
    client = MlflowClient()
    run = client.create_run(
        store.experiment_id(f"{e.use_case}-challenger"),
        run_name=f"{e.registered_model}-v{e.challenger}-vs-v{e.champion}",
        tags={
            "use_case": e.use_case,
            "registered_model": e.registered_model,
            "champion_version": e.champion,
            "challenger_version": e.challenger,
            "verdict": verdict.action,
            "prefect.flow_run_id": str(runtime.flow_run.id or ""),
        },
    )
    params = [
        Param("champion", f"{e.registered_model}/{e.champion}"),
        Param("challenger", f"{e.registered_model}/{e.challenger}"),
        Param("since", e.since or "all"),
        Param("labels", (labels or "recorded only")[:6000]),
        Param("decide", str(decide)),
        Param("metric", e.metric),
        *(Param(f"rule.{f.name}", str(getattr(e.rule, f.name))) for f in fields(e.rule)),
    ]
    client.log_batch(run.info.run_id, metrics=_run_metrics(e), params=params)
    return run.info.run_id


def _html(e: Evidence, d: Decision, png: bytes | None) -> str:
    colour = _COLOURS[d.outcome]
    columns = ("", f"champion v{e.champion}", f"challenger v{e.challenger}", "challenger − champion")
    head = "".join(f"<th>{escape(h)}</th>" for h in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in comparison_rows(e)
    )
    days = ""
    if e.daily:
        names = list(e.daily[0]["champion"])
        heads = "".join(f"<th>{escape(f'{m} {r}')}</th>" for m in names for r in ROLES)
        lines = "".join(
            f"<tr><td>{d_['day']}</td><td>{d_['rows']:,}</td>"
            + "".join(f"<td>{_number(d_[r][m])}</td>" for m in names for r in ROLES)
            + "</tr>"
            for d_ in e.daily
        )
        days = f"<h2>Per day</h2><table><tr><th>day</th><th>rows</th>{heads}</tr>{lines}</table>"
    image = f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'>" if png else ""
    window = f"{e.window[0]} .. {e.window[1]}" if e.window else "no labelled pairs"
    title = f"{e.registered_model}: challenger v{e.challenger} vs champion v{e.champion}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"
        f"<p class='decision' style='border-color:{colour}'>"
        f"<b style='color:{colour}'>{d.outcome}</b>: {escape(d.reason)}</p><p class='meta'>events {window}; "
        f"pairs recorded {e.counts.get('recorded', 0):,}, scored by both {e.counts.get('scored', 0):,}, "
        f"labelled {e.counts.get('labelled', 0):,}, compared {e.compared:,}</p>"
        f"<table><tr>{head}</tr>{body}</table>{days}{image}</body></html>"
    )


def markdown(e: Evidence, d: Decision, run_id: str) -> str:
    """The comparison as a Prefect markdown artifact: the decision, the table, the MLflow run."""
    table = [
        f"| | champion v{e.champion} | challenger v{e.challenger} | difference |",
        "|---|---:|---:|---:|",
    ]
    table += [f"| {' | '.join(row)} |" for row in comparison_rows(e)]
    return "\n".join(
        [f"## {e.registered_model}: {d.outcome}", "", d.reason, "", *table, "", f"MLflow run `{run_id}`"]
    )


def comparison_record(e: Evidence, d: Decision, run_id: str) -> dict:
    """The comparison as strict JSON: the evidence, the decision and its MLflow run (`comparison.json`)."""
    return _jsonable({**e.to_dict(), "decision": asdict(d), "mlflow_run_id": run_id})


@mlflow_stage
def close_record(run_id: str, e: Evidence, d: Decision) -> None:
    """The decision on the run, its JSON, plot and HTML report; the Prefect artifact inside a flow run."""
    client = MlflowClient()
    client.set_tag(run_id, "decision", d.outcome)
    client.set_tag(run_id, "reason", d.reason[:5000])
    client.set_tag(run_id, "mlflow.note.content", f"{d.outcome}: {d.reason}"[:5000])
    client.log_dict(run_id, comparison_record(e, d, run_id), "comparison.json")
    png = daily_plot(e)
    if png is not None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "daily.png"
            path.write_bytes(png)
            client.log_artifact(run_id, str(path), "plots")
    client.log_text(run_id, _html(e, d, png), "comparison_report.html")
    client.set_terminated(run_id, "FINISHED")
    if runtime.flow_run.id:
        create_markdown_artifact(
            key=f"challenger-{e.use_case}",
            markdown=markdown(e, d, run_id),
            description=f"{e.registered_model} v{e.challenger} vs v{e.champion}: {d.outcome}",
        )
