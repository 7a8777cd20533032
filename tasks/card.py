"""The registry version's record: a few tags consumers filter on, and a markdown model card for people.

Tags stay short and few because every tag is a line in the registry's versions table: the use case, the
lineage the pipeline reads back (data digest, code version, windows, fingerprint, parent), the primary test
metric and a one-line gate verdict. Everything else a person wants to read — every metric beside the
baselines and the champion on the same window, each gate's value and threshold, the data windows, the
validation results, what moves its scores (mean |contribution| per feature, overall and per slice), how to
load the model — is in the card (the version's description, which MLflow renders as markdown) and, for
machines, in the run's `gate_report.json` and `contributions.json` (with `plots/contributions.png`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from usecases import vocabulary
from usecases.vocabulary import (
    FINGERPRINT_TAG,
    GATES_TAG,
    HOLDOUT_TAG,
    PARENT_TAG,
    TRAINED_ON_TAG,
    TUNING_STUDY_TAG,
    TUNING_TRIAL_TAG,
    UPDATE_TAG,
    WINDOWS_TAG,
)

if TYPE_CHECKING:  # `mlops status` and rollback read tags through this module without importing Prefect
    from tasks.gate import GateVerdict

COUNTS = ("tn", "fp", "fn", "tp")
# Lineage facts kept as tags: what code reads back (tasks/lineage.py, tasks/register.py, compaction) or
# what consumers filter versions on. The rest of the record goes to the card only.
TAGGED = (
    "use_case",
    "lineage.data_digest",
    "lineage.code_version",
    WINDOWS_TAG,
    TRAINED_ON_TAG,
    HOLDOUT_TAG,
    FINGERPRINT_TAG,
    PARENT_TAG,
    UPDATE_TAG,
)


def continual_record(continual, served) -> dict[str, str]:
    """How the version keeps learning: the held-out keys it never saw (a tag: the gates read it back), and
    for the card the refit, replay and recency it was trained with."""
    replay = {0: "none", None: "all history"}.get(continual.replay, continual.replay)
    refit = "no" if served.refit_on is None else f"{served.refit_on[0]} .. {served.refit_on[1]}"
    return {
        HOLDOUT_TAG: continual.holdout.label if continual.holdout is not None else "",
        "training.refit": f"{refit} ({served.rounds_trained} rounds)" if served.refit_on else refit,
        "training.replay": f"{replay} (negatives kept: {continual.replay_negatives:g})",
        "training.half_life": "none" if continual.half_life is None else f"{continual.half_life:g}",
    }


def gates_summary(verdict: GateVerdict) -> str:
    """One line: `passed 6/6`, or `refused 1/6: champion.average_precision`."""
    return vocabulary.gates_summary([r.name for r in verdict.refusals], len(verdict.results))


def version_tags(record: Mapping[str, str], verdict: GateVerdict, primary: str) -> dict[str, str]:
    """The tags a registered version carries (see the module docstring for why so few)."""
    tags = {k: str(record[k]) for k in TAGGED if record.get(k) not in (None, "")}
    tags[f"test_{primary}"] = str(record[f"test_{primary}"])
    tags[GATES_TAG] = gates_summary(verdict)
    return tags


def _number(name: str, value: float | None) -> str:
    if value is None or value != value:
        return "-"
    return f"{int(value):,}" if name in COUNTS else f"{value:.4g}"


def metrics_table(columns: Mapping[str, Mapping[str, float]], order: list[str]) -> str:
    """Markdown: one row per metric, one column per model scored on the same test window."""
    head = "| metric | " + " | ".join(columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    rows = [f"| {m} | " + " | ".join(_number(m, c.get(m)) for c in columns.values()) + " |" for m in order]
    return "\n".join([head, rule, *rows])


def gates_list(verdict: GateVerdict) -> str:
    """One bullet per gate: its verdict and its detail (which states the value and the threshold)."""
    return "\n".join(
        f"- {'passed' if r.passed else '**refused**'} `{r.name}`: {r.detail}" for r in verdict.results
    )


def contributions_table(table) -> str:
    """Markdown: one row per feature (largest overall first), its mean |contribution| overall and per slice
    group (`tasks.explain.mean_abs_contributions`), then the rows behind each column."""
    columns = list(table.columns)
    head = "| feature | " + " | ".join(columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    rows = [
        f"| `{feature}` | " + " | ".join(_number("", v) for v in values) + " |"
        for feature, values in zip(table.index, table.to_numpy().tolist(), strict=True)
    ]
    support = table.attrs.get("rows", {})
    counts = "| rows | " + " | ".join(f"{support.get(c, 0):,}" for c in columns) + " |"
    return "\n".join([head, rule, *rows, counts])


CARD_FEATURES = 5  # the card lists the strongest few; every feature, per slice group: contributions.json


def contributions_section(spec, splits, candidate, run_id: str | None) -> str:
    """The card's global picture, short (a version's description is at most 5,000 characters in a database
    registry): the features that move the version's scores most on the test window; per slice group, in
    `contributions.json` and `plots/contributions.png` of the run."""
    # lazy: XGBoost and matplotlib only when a card is written; `mlops status` reads tags through this module
    from tasks.explain import log_global_picture

    try:
        table = log_global_picture(spec, splits, candidate, run_id)
    except (
        Exception
    ) as exc:  # e.g. a refreshed booster TreeSHAP cannot walk: the card says so, the run goes on
        return f"Not available: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}."
    rows, sampled = table.attrs["rows"]["overall"], table.attrs["sampled_from"]
    on = f"{rows:,} test rows" + (f" (a seeded sample of {sampled:,})" if sampled > rows else "")
    margin = "log-odds" if spec.problem == "binary" else "trees' output, before any target transform"
    top = table[["overall"]].head(CARD_FEATURES)
    top.attrs = {"rows": {"overall": rows}}
    return f"""Mean |contribution| to the margin ({margin}) on {on}, the {len(top)} strongest of \
{len(table)} features (XGBoost's TreeSHAP). Per slice group: `contributions.json`, `plots/contributions.png`.

{contributions_table(top)}"""


def _tuned_from(tags: Mapping[str, str]) -> str:
    """Which study and trial the model parameters came from (`--params-from`, tasks/tuning/apply.py); empty:
    the spec's own."""
    study = tags.get(TUNING_STUDY_TAG)
    return f"; model parameters from study `{study}`, trial {tags.get(TUNING_TRIAL_TAG)}" if study else ""


def model_card(
    spec,
    splits,
    evaluation,
    champion,
    verdict: GateVerdict,
    record: Mapping[str, str],
    candidate,
) -> str:
    """The markdown card: purpose, metrics beside baselines and champion, gates, windows, loading."""
    name, primary = spec.registered_model, spec.metrics.primary
    columns = {"candidate": evaluation.candidate.metrics, **evaluation.baseline_metrics}
    if champion is not None and champion.version is not None and champion.metrics:
        columns[f"champion v{champion.version}"] = champion.metrics
    first = [primary, *(m for m in evaluation.candidate.metrics if m != primary and m not in COUNTS)]
    order = [*first, *(m for m in COUNTS if m in evaluation.candidate.metrics)]
    windows = "\n".join(
        f"| {w} | {lo} | {hi} | {len(getattr(splits, w)):,} |" for w, (lo, hi) in splits.windows.items()
    )
    origin = "scratch"
    if candidate.parent_uri is not None:
        parent = candidate.parent_trees
        added = candidate.booster.num_boosted_rounds() - parent
        origin = (
            f"`{candidate.parent_uri}`, boosting continued: {added} trees added to its {parent}"
            if candidate.update == "continue"
            else f"`{candidate.parent_uri}`, its {candidate.parent_trees} trees' leaves refitted (refresh)"
        )
    features = ", ".join(f"`{f}`" for f in spec.features)
    return f"""# {name}

{spec.description}

| | |
|---|---|
| gates | {gates_summary(verdict)} |
| test {primary} | {_number(primary, evaluation.candidate.metrics[primary])} |
| trees | {candidate.booster.num_boosted_rounds()} (best round {candidate.best_iteration}) |
| started from | {origin}{_tuned_from(spec.tags)} |
| refit up to the newest label | {record.get("training.refit", "no")} |
| replay; half-life | {record.get("training.replay", "none")}; {record.get("training.half_life", "none")} |
| held-out keys (never trained on) | {record.get(HOLDOUT_TAG) or "none"} |
| MLflow run | `{record["lineage.run_id"]}` |
| data | `{record.get("lineage.data_source", "unknown")}`, digest `{record["lineage.data_digest"]}` |
| validation | {record.get("validation.raw", "-")}; {record.get("validation.features", "-")} |
| code | `{record.get("lineage.code_version", "unknown")}` |

## Test metrics

On the test window, beside the baselines and the champion re-scored on the same rows.

{metrics_table(columns, order)}

## Gates

{gates_list(verdict)}

## Data windows

| window | from | to | rows |
|---|---|---|---:|
{windows}

## Features ({len(spec.features)})

{features}

## What moves the scores

{contributions_section(spec, splits, candidate, record.get("lineage.run_id"))}

## Load it

```python
import mlflow

model = mlflow.pyfunc.load_model("models:/{name}@champion")
scores = model.predict(frame)  # frame: the columns of the version's signature (the features above)
```
"""
