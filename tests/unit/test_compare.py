"""Champion against challenger on live pairs (tasks/challenger/evidence.py, decision.py, records.py) and
`mlops compare`'s refusals: the statistics on synthetic pairs where the challenger is truly better or worse
and on a case small enough to count by hand, the rule's verdicts, and its promotion or retirement through
the registry (one SQLite MLflow store, a registered model per test; versions registered directly with the
tags the pipeline writes, since nothing here loads a model: the scores are in the pairs)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from mlflow import MlflowClient
from typer.testing import CliRunner

from champion.challenger import current_challenger, set_challenger
from champion.promotion import current_champion, promote, read_history
from tasks.challenger.decision import act, judge
from tasks.challenger.evidence import (
    Evidence,
    compare_rows,
    gather_evidence,
    mcnemar,
    weighted_metric,
)
from tasks.challenger.pairs import write_batch
from tasks.challenger.records import close_record, open_record
from usecases.params import CompareParams
from usecases.spec import ChallengerRule, Metrics
from usecases.vocabulary import CHALLENGER_TAG, FINGERPRINT_TAG, GATES_TAG, param_keys

NAME = "compare-unit"
RULE = ChallengerRule(
    min_pairs=500,
    min_positives=20,
    min_gain=0.02,
    resamples=200,
    retire_after_pairs=5000,
    daily=("card_precision_at_100", "average_precision"),
)
THRESHOLDS = {"champion": 0.5, "challenger": 0.5}


@pytest.fixture(scope="module")
def spec():
    """The fraud spec (its metrics, card precision@100 among them) with a small rule and no test filter."""
    from usecases.fraud.spec import Params, build_spec

    return replace(build_spec(Params(registered_model=NAME)), challenger=RULE, test_filter=None)


def paired(n: int = 3000, champion: float = 1.0, challenger: float = 2.0, seed: int = 0) -> pd.DataFrame:
    """Transactions over three days, 5 % fraud; each version's score separates frauds by its `signal`, with
    noise of its own."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.05).astype("int64")

    def score(signal: float) -> np.ndarray:
        return 1 / (1 + np.exp(-(2 * signal * y + rng.normal(size=n) - 3)))

    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(n),
            "TX_DATETIME": pd.Timestamp("2018-09-01")
            + pd.to_timedelta(np.sort(rng.integers(0, 3 * 86400, n)), "s"),
            "CUSTOMER_ID": rng.integers(0, 400, n),
            "TX_FRAUD": y,
            "champion_score": score(champion),
            "challenger_score": score(challenger),
        }
    )


def evidence(spec, frame: pd.DataFrame, thresholds=THRESHOLDS, **counts) -> Evidence:
    found = compare_rows(spec, frame, thresholds)
    n = counts.get("compared", len(frame))
    return Evidence(
        "fraud",
        NAME,
        "1",
        "2",
        None,
        "binary",
        greater_is_better=True,
        rule=spec.challenger,
        counts={"compared": n, "positives": counts.get("positives", int(frame["TX_FRAUD"].sum()))},
        thresholds=dict(thresholds),
        **found,
    )


# --- the statistics ---------------------------------------------------------------------------------------


def test_a_truly_better_challenger_wins_the_bootstrap_and_mcnemar_and_a_worse_one_loses(spec):
    better = evidence(spec, paired(champion=1.0, challenger=2.0))
    m = better.metrics
    assert better.metric == "average_precision"
    assert better.gain == pytest.approx(
        m["challenger"]["average_precision"] - m["champion"]["average_precision"]
    )
    low, high = better.interval
    assert 0 < low < better.gain < high and better.win_share > 0.99
    assert better.mcnemar["challenger_only_right"] > 3 * better.mcnemar["champion_only_right"]
    assert better.mcnemar["p_value"] < 1e-6
    assert [d["day"] for d in better.daily] == ["2018-09-01", "2018-09-02", "2018-09-03"]
    assert sum(d["rows"] for d in better.daily) == 3000
    assert set(better.daily[0]["challenger"]) == {"card_precision_at_100", "average_precision"}
    assert judge(better).action == "promote"

    worse = evidence(spec, paired(champion=2.0, challenger=1.0))
    assert worse.interval[1] < 0 and worse.win_share < 0.01
    assert worse.mcnemar["champion_only_right"] > 3 * worse.mcnemar["challenger_only_right"]
    verdict = judge(worse)
    assert verdict.action == "retire" and verdict.reason.startswith("worse: average_precision")


def test_mcnemar_disagreement_and_alert_rates_on_a_case_counted_by_hand(spec):
    frame = pd.DataFrame(
        {
            "TX_DATETIME": pd.Timestamp("2018-09-01") + pd.to_timedelta(np.arange(8), "h"),
            "CUSTOMER_ID": np.arange(8),
            "TX_FRAUD": [1, 1, 1, 1, 0, 0, 0, 0],
            "champion_score": [0.9, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.6],  # alerts on rows 0 and 7
            "challenger_score": [0.9, 0.9, 0.9, 0.2, 0.1, 0.1, 0.1, 0.1],  # alerts on rows 0, 1 and 2
        }
    )
    found = compare_rows(spec, frame, THRESHOLDS)
    # only the challenger right: rows 1, 2 (frauds it alerts on) and 7 (the champion's false alarm); never
    # only the champion: McNemar's exact p = 2 * 0.5**3
    assert found["mcnemar"] == {"champion_only_right": 0, "challenger_only_right": 3, "p_value": 0.25}
    assert found["disagreement"] == 3 / 8
    champion, challenger = found["metrics"]["champion"], found["metrics"]["challenger"]
    assert (champion["alert_rate"], challenger["alert_rate"]) == (2 / 8, 3 / 8)
    assert (champion["precision"], challenger["precision"]) == (1 / 2, 1.0)
    # each version at its own operating threshold: at 0.95 the challenger alerts on nothing
    own = compare_rows(spec, frame, {"champion": 0.5, "challenger": 0.95})
    assert own["metrics"]["challenger"]["alert_rate"] == 0 and own["disagreement"] == 2 / 8
    assert own["mcnemar"]["champion_only_right"] == 1  # row 0: caught by the champion only


def test_the_bootstraps_weighted_metrics_are_scikit_learns_and_the_tasks_own():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.2).astype("int64")
    scores = np.round(rng.random(500) + 0.3 * y, 2)  # rounded: many ties
    weights = np.bincount(rng.integers(0, 500, 500), minlength=500).astype("float64")
    ap = weighted_metric("average_precision", y, scores)
    assert ap(weights) == pytest.approx(average_precision_score(y, scores, sample_weight=weights), abs=1e-12)
    assert ap(np.ones(500)) == pytest.approx(average_precision_score(y, scores), abs=1e-12)
    mae = weighted_metric("mae", y.astype("float64"), scores)
    assert mae(weights) == pytest.approx(np.average(np.abs(scores - y), weights=weights))
    assert weighted_metric("card_precision_at_100", y, scores) is None  # computed through the spec


def test_mcnemar_without_discordant_pairs_says_nothing():
    y = np.array([1, 0, 1])
    assert mcnemar(y, y, y) == {"champion_only_right": 0, "challenger_only_right": 0, "p_value": 1.0}


def test_a_regression_use_case_compares_its_primary_metric_lower_is_better(spec):
    from usecases.stock import spec as stock
    from usecases.stock.features import TARGETS

    # the stock spec's metrics and rule on the fraud spec's frame (building the stock spec loads its checks)
    target = TARGETS["volatility"]
    metrics = Metrics(stock.volatility_metrics, "mae", greater_is_better=False, reads=(target,))
    rule = replace(stock.CHALLENGER, resamples=200)
    spec = replace(
        spec, problem="regression", target=target, metrics=metrics, time_column="Date", challenger=rule
    )
    rng = np.random.default_rng(1)
    y = rng.gamma(2.0, 0.01, 400)
    frame = pd.DataFrame(
        {
            spec.time_column: pd.date_range("2020-01-01", periods=400, freq="D"),
            spec.target: y,
            "champion_score": y + rng.normal(0, 0.01, 400),
            "challenger_score": y + rng.normal(0, 0.005, 400),
        }
    )
    found = compare_rows(spec, frame, {})
    m = found["metrics"]
    assert found["metric"] == "mae" and "mcnemar" not in found and "alert_rate" not in m["champion"]
    assert found["gain"] == pytest.approx(m["champion"]["mae"] - m["challenger"]["mae"]) and found["gain"] > 0
    assert found["interval"][0] > 0


# --- the rule ---------------------------------------------------------------------------------------------


def made(**fields) -> Evidence:
    base = dict(
        use_case="fraud",
        registered_model=NAME,
        champion="1",
        challenger="2",
        since=None,
        problem="binary",
        metric="average_precision",
        greater_is_better=True,
        rule=RULE,
        counts={"compared": 1000, "positives": 50},
        metrics={"champion": {"average_precision": 0.5}, "challenger": {"average_precision": 0.55}},
        gain=0.05,
        relative_gain=0.1,
        interval=(0.01, 0.09),
        win_share=0.99,
    )
    return Evidence(**{**base, **fields})


def test_the_rule_waits_for_enough_labelled_pairs_and_positives_saying_how_many_more():
    verdict = judge(made(counts={"compared": 300, "positives": 10}, gain=None, interval=None))
    assert (verdict.action, verdict.more_pairs, verdict.more_positives) == ("wait", 200, 10)
    assert "200 more labelled pairs and 10 more positives" in verdict.reason


@pytest.mark.parametrize(
    ("fields", "action", "starts"),
    [
        ({}, "promote", "better: average_precision 0.55 (challenger v2) vs 0.5 (champion v1)"),
        ({"gain": -0.05, "relative_gain": -0.1, "interval": (-0.09, -0.01)}, "retire", "worse:"),
        ({"relative_gain": 0.01, "interval": (0.001, 0.01)}, "wait", "not conclusive yet"),  # below min_gain
        ({"interval": (-0.01, 0.09)}, "wait", "not conclusive yet"),
        (
            {"interval": (-0.01, 0.09), "counts": {"compared": 5000, "positives": 80}},
            "retire",
            "not better after",
        ),
    ],
)
def test_the_rule_promotes_a_better_challenger_and_retires_a_worse_or_an_inconclusive_one(
    fields, action, starts
):
    verdict = judge(made(**fields))
    assert verdict.action == action and verdict.reason.startswith(starts)


# --- through the registry ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_home(tmp_path_factory):
    """One SQLite MLflow store for the module (a new one costs seconds of migrations); each test registers
    a model of its own in it."""
    import mlflow

    from champion import store

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(tmp_path_factory.mktemp("compare") / "mlops"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        store.configure()
        yield
    mlflow.set_tracking_uri(None)


MODELS = itertools.count(1)


@pytest.fixture
def registry(store_home, monkeypatch):
    """(client, a new registered model): v1 champion (threshold 0.5 logged by its run), v2 challenger (0.4),
    v3 another gated version; the fraud spec with the small rule."""
    from usecases.fraud import spec as fraud

    monkeypatch.setattr(fraud, "CHALLENGER", RULE)
    client, name = MlflowClient(), f"{NAME}-{next(MODELS)}"
    client.create_registered_model(name)
    for number, threshold in ((1, 0.5), (2, 0.4), (3, 0.5)):
        gated_version(client, name, "compare-unit", number, threshold)
    promote(name, "1", compared_with=None, run_id="run-1")
    set_challenger(name, "2", "shadow it", by="test")
    return client, name


def gated_version(
    client: MlflowClient, name: str, experiment: str, number: int, threshold: float | None = None
) -> str:
    """A fraud version with the records the pipeline leaves (its gates passed, a fingerprint, the training
    parameters on its run, optionally its test threshold); returns the run id."""
    from champion import store
    from usecases.fraud.spec import Params

    run = client.create_run(store.experiment_id(experiment)).info
    if threshold is not None:
        client.log_metric(run.run_id, "test_threshold", threshold)
    for key, value in param_keys(Params(registered_model=name).model_dump()).items():
        client.log_param(run.run_id, key, value)
    tags = {GATES_TAG: "passed 6/6", FINGERPRINT_TAG: f"fp-{number}", "use_case": "fraud"}
    client.create_model_version(name, f"{run.artifact_uri}/model", run_id=run.run_id, tags=tags)
    return run.run_id


def record_pairs(name: str, frame: pd.DataFrame, labels: pd.DataFrame | None = None, versions=("1", "2")):
    """`frame`'s rows as pairs of `versions`, as the model server records them; `labels` as POST /labels."""
    now = datetime.now(UTC)
    rows = [
        {
            "pair_id": str(r.TRANSACTION_ID),
            "registered_model": name,
            "event_time": r.TX_DATETIME.isoformat(),
            "event": {
                "TRANSACTION_ID": int(r.TRANSACTION_ID),
                "TX_DATETIME": r.TX_DATETIME.isoformat(),
                "CUSTOMER_ID": int(r.CUSTOMER_ID),
                "TX_AMOUNT": 10.0,
            },
            "champion_version": versions[0],
            "champion_score": r.champion_score,
            "challenger_version": versions[1],
            "challenger_score": r.challenger_score,
            "challenger_error": "",
            "scored_at": now.isoformat(),
            "source": "transactions",
        }
        for r in frame.itertuples()
    ]
    write_batch(name, "pairs", rows)
    if labels is not None:
        write_batch(
            name,
            "labels",
            [
                {"pair_id": str(i), "registered_model": name, "label": y, "labelled_at": now.isoformat()}
                for i, y in zip(labels["TRANSACTION_ID"], labels["TX_FRAUD"], strict=True)
            ],
        )


def test_a_better_challenger_is_promoted_on_the_evidence_recorded_in_mlflow(registry, tmp_path):
    client, name = registry
    frame = paired(2000, champion=1.0, challenger=2.0)
    record_pairs(name, frame, labels=frame.iloc[:1000])  # half labelled through the server, half from a file
    labels = tmp_path / "labels.csv"
    frame.iloc[1000:][["TRANSACTION_ID", "TX_FRAUD"]].to_csv(labels, index=False)
    record_pairs(
        name,
        paired(300, seed=9).assign(TRANSACTION_ID=lambda f: f.TRANSACTION_ID + 10_000),
        versions=("1", "3"),
    )

    found = gather_evidence.fn("fraud", name, None, str(labels))
    assert found.counts == {
        "recorded": 2000,
        "scored": 2000,
        "labelled": 2000,
        "compared": 2000,
        "positives": int(frame.TX_FRAUD.sum()),
    }
    assert found.thresholds == {"champion": 0.5, "challenger": 0.4}  # each version's own, from its run
    verdict = judge(found)
    assert verdict.action == "promote"
    run_id = open_record.fn(found, verdict, str(labels), True)
    decision = act.fn(found, verdict, run_id)
    close_record.fn(run_id, found, decision)

    assert decision.outcome == "promoted" and decision.champion == "2"
    assert current_champion(client, name) == "2" and current_challenger(client, name) is None
    last = read_history(client, name)[-1]
    assert (last["action"], last["version"], last["previous"], last["run_id"]) == (
        "promoted on live evidence",
        "2",
        "1",
        run_id,
    )
    run = client.get_run(run_id)
    assert run.data.tags["decision"] == "promoted" and run.data.tags["verdict"] == "promote"
    assert run.data.params["rule.min_pairs"] == "500" and run.data.params["labels"] == str(labels)
    ap = run.data.metrics
    assert ap["diff.average_precision"] == pytest.approx(
        ap["challenger.average_precision"] - ap["champion.average_precision"]
    )
    assert ap["interval_low"] > 0 and ap["counts.compared"] == 2000
    days = client.get_metric_history(run_id, "challenger.card_precision_at_100_by_day")
    assert len(days) == 3
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "plots")
    }
    assert {"comparison.json", "comparison_report.html", "plots/daily.png"} <= artifacts
    record = json.loads(Path(client.download_artifacts(run_id, "comparison.json")).read_text())
    assert record["decision"]["outcome"] == "promoted" and record["mlflow_run_id"] == run_id


def test_a_worse_challenger_is_retired_and_one_whose_champion_moved_waits(registry):
    client, name = registry
    frame = paired(1500, champion=2.0, challenger=1.0)
    record_pairs(name, frame, labels=frame)
    found = gather_evidence.fn("fraud", name, "2018-09-02", None)  # from the second day on
    assert found.counts["compared"] == int((frame.TX_DATETIME >= "2018-09-02").sum())
    verdict = judge(found)
    assert verdict.action == "retire"

    reported = act.fn(found, verdict, "run-x", decide=False)  # --no-decide: nothing moves
    assert reported.outcome == "reported" and current_challenger(client, name) == "2"

    promote(name, "3", compared_with="1", run_id="run-3")  # the champion moves meanwhile
    stale = act.fn(found, replace(verdict, action="promote"), "run-y")
    assert stale.outcome == "waiting" and stale.reason.startswith("nothing moved: ")
    assert current_champion(client, name) == "3" and current_challenger(client, name) == "2"

    retired = act.fn(found, verdict, "run-z")
    assert retired.outcome == "retired" and current_challenger(client, name) is None
    assert client.get_model_version(name, "2").tags[CHALLENGER_TAG].split(": ", 1)[1].startswith("worse:")


def test_too_few_labels_wait_and_a_labels_file_must_name_its_columns(registry, tmp_path):
    client, name = registry
    frame = paired(600)
    record_pairs(name, frame, labels=frame.iloc[:100])
    found = gather_evidence.fn("fraud", name, None, None)
    verdict = judge(found)
    assert found.counts["labelled"] == 100 and verdict.action == "wait" and verdict.more_pairs == 400
    wrong = tmp_path / "labels.csv"
    pd.DataFrame({"id": [1], "y": [0]}).to_csv(wrong, index=False)
    from tasks.ingest import DataReadError

    with pytest.raises(DataReadError, match="TRANSACTION_ID.*TX_FRAUD"):
        gather_evidence.fn("fraud", name, None, str(wrong))
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"TRANSACTION_ID": [1], "TX_FRAUD": [2]}).to_csv(bad, index=False)
    with pytest.raises(DataReadError, match="not 0 or 1"):
        gather_evidence.fn("fraud", name, None, str(bad))


# --- the command's refusals (none starts a flow run) ------------------------------------------------------


@pytest.fixture
def cli(prefect_server):
    """`mlops compare` in this process; its flow runs on the session's Prefect test server (without it, the
    first flow would start a temporary server that then runs beside the session's until the end)."""
    from cli import compare

    app = typer.Typer()
    compare.register_commands(app)
    app.command("noop")(lambda: None)  # two commands: `compare` stays a subcommand
    return lambda *args: CliRunner().invoke(app, ["compare", *args])


def test_compare_refuses_bad_input_with_exit_2_naming_it(cli, registry, tmp_path):
    _, name = registry
    result = cli("nope")
    assert result.exit_code == 2 and "unknown use case 'nope'" in result.output
    assert "Nothing was compared; no alias moved." in result.output
    result = cli("fraud", "--since", "2024-02-30", "--registered-model", name)
    assert result.exit_code == 2 and "--since '2024-02-30'" in result.output
    result = cli("fraud", "--registered-model", name, "--labels", str(tmp_path / "missing.csv"))
    assert result.exit_code == 2 and "missing.csv: no such file" in result.output
    set_challenger(name, "3", "another", by="test")
    from champion.challenger import retire_challenger

    retire_challenger(name, "gone")
    result = cli("fraud", "--registered-model", name)
    assert result.exit_code == 2 and "has no @challenger" in result.output
    assert "Nothing was compared; no alias moved." in result.output
    result = cli("fraud", "--registered-model", "no-such-model")
    assert result.exit_code == 2 and "no registered model 'no-such-model'" in result.output


def test_a_champion_whose_training_parameters_cannot_be_read_is_refused_not_compared_under_defaults(
    cli, registry
):
    client, name = registry
    run = client.create_run(client.get_experiment_by_name("compare-unit").experiment_id)  # records no param.*
    tags = {GATES_TAG: "passed 6/6", FINGERPRINT_TAG: "fp-4", "use_case": "fraud"}
    client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags)
    promote(name, "4", compared_with="1", run_id="run-4")
    result = cli("fraud", "--registered-model", name)
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert f"{name} v4: its training run {run.info.run_id} records no training parameters" in said, said
    assert current_champion(client, name) == "4" and current_challenger(client, name) == "2"  # nothing moved


def test_compare_options_are_the_forms_fields():
    from cli import compare

    app = typer.Typer()
    compare.register_commands(app)
    app.command("noop")(lambda: None)
    text = CliRunner().invoke(app, ["compare", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--since", "--labels", "--no-decide", "--registered-model", "--json"):
        assert flag in text
    assert "Exit 0 decided" in text
    assert CompareParams(since="2024-02-29").since == "2024-02-29"
    with pytest.raises(ValueError, match="ChallengerRule: needs 0.5 <= confidence < 1"):
        ChallengerRule(confidence=1.0)
