"""Report: one self-contained HTML page per assessment (plots inlined as base64 PNG), for a person to open
from the artifact store: the verdict and its reasons, performance (estimated vs realised, over time), the
feature table worst first, the score distribution and each feature's reference vs current bin fractions."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np
import pandas as pd

from tasks.monitoring.drift import FeatureDrift, worst_first
from tasks.monitoring.numeric import bin_fractions, column_values, finite_or_none, finite_values, fmt, short
from tasks.monitoring.verdict import Assessment

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
    "font-size:13px;text-align:left}tr.drifted td{background:#fff3e0}tr.primary td{font-weight:bold}"
    ".verdict{border:3px solid;padding:.5em 1em;border-radius:6px}.meta{color:#666;font-size:12px}"
    ".grid{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid #ddd;padding:4px;font-size:12px}"
    ".card.drifted{border-color:#ef6c00}"
)
_COLOURS = {"healthy": "#2e7d32", "drift": "#ef6c00", "degraded": "#c62828"}


def render_report(
    profile: Mapping[str, Any], assessment: Assessment, current_features: pd.DataFrame, title: str
) -> str:
    """The HTML page of `assessment` of `current_features` against `profile`, headed `title`.

    The performance section plots the primary metric over time when the assessment has a history; the score
    distribution compares the test window's scores with the assessment's current ones.
    """
    ranked = worst_first(assessment.drifts)
    parts = [
        *_header(profile, assessment, len(current_features), title),
        *_performance(profile, assessment),
        *_feature_table(ranked),
        *_score_distribution(profile, assessment),
        "<h2>Feature distributions (reference bins)</h2><div class='grid'>",
        *(_feature_card(profile, d, current_features) for d in ranked),
        f"</div><p class='meta'>profile format {escape(str(profile.get('format_version')))}</p>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _header(profile: Mapping[str, Any], assessment: Assessment, rows: int, title: str) -> list[str]:
    v = assessment.verdict
    colour = _COLOURS.get(v.status, "#555")
    better = "higher" if profile["greater_is_better"] else "lower"
    return [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<div class='verdict' style='border-color:{colour}'><h2 style='color:{colour}'>"
        f"{escape(v.status.upper())}</h2><ul>",
        *(f"<li>{escape(r)}</li>" for r in v.reasons),
        "</ul></div>",
        f"<p class='meta'>{rows} current rows; reference: "
        + escape(", ".join(f"{k} {n}" for k, n in profile.get("rows", {}).items()))
        + f" rows; problem {escape(str(profile['problem']))}; primary metric {escape(profile['primary'])} "
        f"({better} is better)</p>",
    ]


def _performance(profile: Mapping[str, Any], assessment: Assessment) -> list[str]:
    primary = profile["primary"]
    test_metrics = profile.get("test_metrics", {})
    test_estimated = profile.get("test_estimated") or {}
    estimated, realised = assessment.estimated, assessment.realised or {}
    names = [primary] + sorted((set(estimated) | set(realised)) - {primary, "rows"})
    parts = [
        "<h2>Performance</h2><table><tr><th>metric</th><th>version's test value</th>"
        "<th>estimated on test window</th><th>estimated now</th><th>realised now</th></tr>"
    ]
    for name in names:
        cells = [test_metrics.get(name), test_estimated.get(name), estimated.get(name), realised.get(name)]
        row_class = " class='primary'" if name == primary else ""
        parts.append(
            f"<tr{row_class}><td>{escape(name)}</td>" + "".join(f"<td>{fmt(c)}</td>" for c in cells) + "</tr>"
        )
    parts.append("</table>")
    if assessment.history:
        png = _history_png(assessment.history, primary, test_metrics)
        parts.append(f"<h3>{escape(primary)} over time</h3>{_img(png)}")
    return parts


def _feature_table(ranked: Sequence[FeatureDrift]) -> list[str]:
    parts = [
        "<h2>Features</h2><table><tr><th>feature</th><th>kind</th><th>PSI</th><th>test</th><th>statistic</th>"
        "<th>null ref</th><th>null now</th><th>drifted</th><th>reason</th></tr>"
    ]
    for d in ranked:
        parts.append(
            f"<tr class='{'drifted' if d.drifted else ''}'><td>{escape(d.feature)}</td>"
            f"<td>{escape(d.kind)}</td>"
            f"<td>{fmt(d.psi, 3)}</td><td>{escape(d.test)}</td><td>{fmt(d.statistic, 3)}</td>"
            f"<td>{d.null_share_ref:.1%}</td><td>{d.null_share_current:.1%}</td>"
            f"<td>{'yes' if d.drifted else 'no'}</td><td>{escape(d.reason)}</td></tr>"
        )
    parts.append("</table>")
    return parts


def _score_distribution(profile: Mapping[str, Any], assessment: Assessment) -> list[str]:
    ref_scores = profile["scores"]["test"]
    series = {"test window": np.asarray(ref_scores["fractions"], dtype="float64")}
    if assessment.scores is not None:
        series["current"] = bin_fractions(ref_scores["edges"], finite_values(assessment.scores))
    score_psi = assessment.score_psi
    score_title = "scores" + (f" (PSI {score_psi:.3f})" if score_psi is not None else "")
    png = _bars_png(_bin_labels(ref_scores["edges"]), series, score_title)
    parts = [f"<h2>Score distribution</h2>{_img(png)}"]
    if assessment.scores is None:
        parts.append("<p class='meta'>current scores not given: reference only.</p>")
    return parts


def _feature_card(profile: Mapping[str, Any], d: FeatureDrift, current_features: pd.DataFrame) -> str:
    """One feature's reference vs current bin fractions (nulls as a bin of their own), "" if none to plot."""
    ref = profile["features"].get(d.feature)
    if ref is None or d.feature not in current_features.columns:
        return ""
    values = column_values(current_features[d.feature])
    finite = values[~np.isnan(values)]
    labels = [short(v) for v in ref["values"]] if ref["kind"] == "discrete" else _bin_labels(ref["edges"])
    ref_frac = np.asarray(ref["fractions"], dtype="float64") * (1 - ref["null_share"])
    cur_frac = bin_fractions(ref["edges"], finite) * (len(finite) / max(len(values), 1))
    if ref["null_share"] > 0 or d.null_share_current > 0:
        labels, ref_frac = [*labels, "null"], np.append(ref_frac, ref["null_share"])
        cur_frac = np.append(cur_frac, d.null_share_current)
    if len(ref_frac) != len(cur_frac):  # feature entirely null in training: nothing to plot
        return ""
    png = _bars_png(labels, {"reference": ref_frac, "current": cur_frac}, d.feature)
    return (
        f"<div class='card{' drifted' if d.drifted else ''}'><b>{escape(d.feature)}</b> "
        f"PSI {fmt(d.psi, 3)}, {escape(d.test)} {fmt(d.statistic, 3)}<br>{_img(png)}</div>"
    )


def _img(png: bytes) -> str:
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


def _figure(width: float = 3.6, height: float = 2.4):
    # why: matplotlib is slow to import and only the report draws
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)  # Agg canvas: no pyplot, no display, no global figure state
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _bars_png(labels: Sequence[str], series: Mapping[str, np.ndarray], title: str) -> bytes:
    fig = _figure()
    ax = fig.subplots()
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, fractions) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, fractions, width, label=name)
    ax.set_xticks(x, labels, rotation=90, fontsize=6)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("share", fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6)
    return _png(fig)


def _history_png(history: Sequence[Mapping[str, Any]], primary: str, test_metrics: Mapping) -> bytes:
    fig = _figure(6.0, 2.6)
    ax = fig.subplots()
    periods = [str(h.get("period")) for h in history]
    x = np.arange(len(periods))
    for key, marker in (("estimated", "o--"), ("realised", "s-")):
        y = [finite_or_none(h.get(key)) for h in history]
        y = [np.nan if v is None else v for v in y]
        ax.plot(x, y, marker, label=key)
    test_value = finite_or_none(test_metrics.get(primary))
    if test_value is not None:
        ax.axhline(test_value, color="grey", lw=1, ls=":", label="version's test value")
    ax.set_xticks(x, periods, rotation=45, fontsize=6)
    ax.set_ylabel(primary, fontsize=7)
    ax.legend(fontsize=6)
    return _png(fig)


def _bin_labels(edges: Sequence[float]) -> list[str]:
    if len(edges) == 0:
        return ["all"]
    labels = [f"<={short(edges[0])}"]
    labels += [f"{short(a)}-{short(b)}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return [*labels, f">{short(edges[-1])}"]
