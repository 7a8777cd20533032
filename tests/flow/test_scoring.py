"""Batch scoring through `mlops score`: one feature path, chunked = in one go, bad input writes nothing.

One champion is trained once for the module (the real pipeline on simulated transactions), with a label delay
of DELAY_DAYS rather than the default 7: features built with the defaults would score differently, so every
test that compares scores with `one_go_scores` also shows that scoring reads the training run's feature
parameters. Every test scores another simulated month with it.
"""

import os

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_FRAUD_RUN
from typer.testing import CliRunner

from champion.loading import ScoringModel
from cli.main import app
from flows.scoring import batch_scoring
from usecases.fraud.features import build_features
from usecases.fraud.simulator import simulate_transactions

MODEL = "fraud-detector"
DELAY_DAYS = 3  # not the default (7): the feature windows and the history chunks carry depend on it
runner = CliRunner()

pytestmark = [
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]


def mlops(*args: str):
    result = runner.invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, registry_template):
    """A registry with one champion trained by the pipeline (SMALL_FRAUD_RUN with a 3-day label delay: the
    session's template, shared with tests/flow/test_compact.py), copied for this module."""
    from stores import copy_home

    template = registry_template(*SMALL_FRAUD_RUN, "--delay-days", str(DELAY_DAYS))
    return copy_home(template, tmp_path_factory.mktemp("scoring") / "mlops")


@pytest.fixture
def home(trained, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(trained))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{trained / 'mlflow.db'}")
    return trained


@pytest.fixture(scope="module")
def transactions(tmp_path_factory):
    """Another simulated period (different seed) in the raw schema, sorted by time as files come."""
    frame = simulate_transactions(n_customers=300, n_terminals=600, n_days=60, seed=11)
    path = tmp_path_factory.mktemp("input") / "transactions.parquet"
    frame.to_parquet(path)
    return path


def one_go_scores(raw: pd.DataFrame) -> pd.Series:
    """What v1 gives on features computed from the whole input in one go, by TRANSACTION_ID."""
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    columns = [c.name for c in model.metadata.get_input_schema().inputs]
    features = build_features(raw, delay_days=DELAY_DAYS)
    scores = np.asarray(model.predict(features[columns])).ravel()
    return pd.Series(scores, index=features["TRANSACTION_ID"].to_numpy())


@pytest.fixture(scope="module")
def reference(trained, transactions) -> pd.Series:
    """`one_go_scores` of the module's input (computed once: every test scores the same rows)."""
    mlflow.set_tracking_uri(f"sqlite:///{trained / 'mlflow.db'}")
    try:
        return one_go_scores(pd.read_parquet(transactions))
    finally:
        mlflow.set_tracking_uri(None)


def leftovers(folder) -> list:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_score_writes_ids_probability_and_version(home, transactions, reference, tmp_path):
    out = tmp_path / "scores.parquet"
    result = mlops("score", "fraud", "--input", str(transactions), "--output", str(out))
    assert result.exit_code == 0, result.output
    assert "rows/s" in result.output and "model step" in result.output
    scores = pd.read_parquet(out)
    raw = pd.read_parquet(transactions)
    assert list(scores.columns) == ["TRANSACTION_ID", "fraud_score", "model_version"]
    assert len(scores) == len(raw) and set(scores.TRANSACTION_ID) == set(raw.TRANSACTION_ID)
    assert (scores.model_version == "1").all()
    assert scores.fraud_score.between(0, 1).all()
    np.testing.assert_allclose(
        scores.fraud_score.to_numpy(), reference.loc[scores.TRANSACTION_ID].to_numpy(), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("chunk_rows, source", [(2_000, "parquet"), (3_001, "csv")])
def test_chunked_scores_equal_scores_in_one_go(home, transactions, reference, tmp_path, chunk_rows, source):
    """Chunks carry 33 days of history (30-day windows + the 3-day delay): every score equals the one-go
    score, from Parquet and from CSV (the same feature path from text timestamps)."""
    raw = pd.read_parquet(transactions)
    assert len(raw) > 5 * chunk_rows
    if source == "csv":
        transactions = tmp_path / "transactions.csv"
        raw.to_csv(transactions, index=False)
    out = tmp_path / "scores.parquet"
    result = batch_scoring("fraud", str(transactions), str(out), chunk_rows=chunk_rows)
    assert result.chunks > 5 and result.rows_out == len(raw)
    scores = pd.read_parquet(out)
    assert scores.TRANSACTION_ID.is_unique and len(scores) == len(raw)
    difference = np.abs(scores.fraud_score.to_numpy() - reference.loc[scores.TRANSACTION_ID].to_numpy())
    assert difference.max() <= 1e-6, difference.max()
    assert (difference == 0).mean() > 0.999  # identical but for last-bit rounding of running sums


def test_csv_output_and_pinned_version(home, transactions, tmp_path):
    out = tmp_path / "scores.csv"
    result = mlops("score", "fraud", "-i", str(transactions), "-o", str(out), "--version", "1")
    assert result.exit_code == 0, result.output
    scores = pd.read_csv(out)
    assert list(scores.columns) == ["TRANSACTION_ID", "fraud_score", "model_version"]
    assert (scores.model_version == 1).all()


def test_score_explain_adds_the_strongest_reasons_from_the_contributions(
    home, transactions, reference, tmp_path
):
    """`--explain 2`, chunked: per row the two features with the largest |contribution| to the margin, the
    fraud sentences, the scores unchanged. On the dask executor it is refused before anything is written."""
    from champion.loading import load_scoring_model
    from tasks.explain import contributions

    # the module's first 40 days (features read no later row, so the one-go scores of the whole input hold)
    raw = pd.read_parquet(transactions)
    raw = raw[raw["TX_DATETIME"] < raw["TX_DATETIME"].min().normalize() + pd.Timedelta(days=40)]
    assert len(raw) > 3 * 3001  # chunked
    first_days = tmp_path / "first-days.parquet"
    raw.to_parquet(first_days)
    out = tmp_path / "reasons.parquet"
    result = mlops(
        "score", "fraud", "-i", str(first_days), "-o", str(out), "--explain", "2", "--chunk-rows", "3001"
    )
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(out)
    reasons = [f"reason_{i}{part}" for i in (1, 2) for part in ("", "_feature", "_contribution")]
    assert list(scores.columns) == ["TRANSACTION_ID", "fraud_score", "model_version", *reasons]
    assert len(scores) == len(raw) and scores.reason_1.map(type).eq(str).all()
    one_go = reference.loc[scores.TRANSACTION_ID].to_numpy()
    np.testing.assert_allclose(scores.fraud_score.to_numpy(), one_go, rtol=0, atol=1e-6)
    assert (scores.reason_1_contribution.abs() >= scores.reason_2_contribution.abs()).all()
    assert (scores.reason_1_feature != scores.reason_2_feature).all()

    model = load_scoring_model(MODEL, "1")
    features = (
        build_features(raw, delay_days=DELAY_DAYS).set_index("TRANSACTION_ID").loc[scores.TRANSACTION_ID]
    )
    contrib = contributions(model, features[list(model.columns)].to_numpy(np.float32))
    margin = contrib.astype(np.float64).sum(axis=1)  # what the score is the logistic of
    np.testing.assert_allclose(1 / (1 + np.exp(-margin)), scores.fraud_score.to_numpy(), rtol=0, atol=1e-5)
    rank = np.argsort(-np.abs(contrib[:, :-1]), axis=1, kind="stable")
    agree = np.asarray(model.columns)[rank[:, 0]] == scores.reason_1_feature.to_numpy()
    assert agree.mean() > 0.999  # chunked features equal the one-go ones but for last-bit rounding
    own = contrib[np.arange(len(contrib)), [model.columns.index(f) for f in scores.reason_1_feature]]
    np.testing.assert_allclose(scores.reason_1_contribution.to_numpy(), own, rtol=0, atol=1e-4)
    amount = scores.reason_1_feature.eq("TX_AMOUNT") | scores.reason_2_feature.eq("TX_AMOUNT")
    sentences = scores.reason_1.where(scores.reason_1_feature.eq("TX_AMOUNT"), scores.reason_2)[amount]
    assert (
        amount.any() and sentences.str.match(r"amount [\d,]+\.\d\d(, [\d.]+x the customer's 30-day|$)").all()
    )

    dask_out = tmp_path / "dask.parquet"
    refused = mlops(
        "score", "fraud", "-i", str(transactions), "-o", str(dask_out), "--explain", "2", "--executor", "dask"
    )
    assert refused.exit_code == 2 and "not available on the dask executor" in refused.output.replace(
        "\n", " "
    )
    assert not dask_out.exists() and not leftovers(tmp_path)


@pytest.mark.parametrize(
    "args, message",
    [(["--version", "99"], "no version 99"), (["--alias", "nope"], "no alias @nope")],
)
def test_unknown_version_or_alias_exits_2(home, transactions, tmp_path, args, message):
    out = tmp_path / "scores.parquet"
    result = mlops("score", "fraud", "-i", str(transactions), "-o", str(out), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and not out.exists()


@pytest.mark.parametrize("defect", ["negative_amount", "missing_column", "duplicate_ids"])
def test_invalid_input_exits_2_and_writes_nothing(home, transactions, tmp_path, defect):
    raw = pd.read_parquet(transactions)
    if defect == "negative_amount":
        raw.loc[raw.index[-5:], "TX_AMOUNT"] = -1.0  # in the last chunk: earlier chunks were fine
    elif defect == "missing_column":
        raw = raw.drop(columns=["TX_AMOUNT"])
    else:
        raw.loc[raw.index[-1], "TRANSACTION_ID"] = raw.loc[raw.index[-2], "TRANSACTION_ID"]
    bad = tmp_path / "bad.parquet"
    raw.to_parquet(bad)
    out = tmp_path / "out" / "scores.parquet"
    result = mlops("score", "fraud", "-i", str(bad), "-o", str(out), "--chunk-rows", "5000")
    assert result.exit_code == 2, result.output
    assert "input rejected" in result.output
    assert ("TRANSACTION_ID" if defect == "duplicate_ids" else "TX_AMOUNT") in result.output
    assert not out.exists() and not leftovers(out.parent)


def test_unsorted_input_is_refused_when_chunked_and_scored_in_one_piece(
    home, transactions, reference, tmp_path
):
    raw = pd.read_parquet(transactions).sample(frac=1.0, random_state=0)
    shuffled = tmp_path / "shuffled.parquet"
    raw.to_parquet(shuffled)
    out = tmp_path / "scores.parquet"
    refused = mlops("score", "fraud", "-i", str(shuffled), "-o", str(out), "--chunk-rows", "5000")
    assert refused.exit_code == 2 and "sorted by TX_DATETIME" in refused.output.replace("\n", " ")
    assert not out.exists()
    whole = mlops("score", "fraud", "-i", str(shuffled), "-o", str(out), "--chunk-rows", "0")
    assert whole.exit_code == 0, whole.output
    scores = pd.read_parquet(out)
    np.testing.assert_allclose(
        scores.fraud_score.to_numpy(), reference.loc[scores.TRANSACTION_ID].to_numpy(), rtol=0, atol=1e-6
    )


def test_failure_midway_leaves_the_previous_output_untouched(home, transactions, tmp_path, monkeypatch):
    out = tmp_path / "scores.parquet"
    pd.DataFrame({"TRANSACTION_ID": [1], "fraud_score": [0.5], "model_version": ["0"]}).to_parquet(out)
    before = out.read_bytes()
    calls = {"n": 0}
    real_predict = ScoringModel.predict

    def failing_predict(self, frame):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real_predict(self, frame)

    monkeypatch.setattr(ScoringModel, "predict", failing_predict)
    result = mlops("score", "fraud", "-i", str(transactions), "-o", str(out), "--chunk-rows", "5000")
    assert result.exit_code == 1, result.output
    assert "disk on fire" in result.output
    assert out.read_bytes() == before and not leftovers(tmp_path)


def test_unknown_use_case_exits_2(home, transactions, tmp_path):
    result = mlops("score", "nope", "-i", str(transactions), "-o", str(tmp_path / "x.parquet"))
    assert result.exit_code == 2 and "unknown use case" in result.output


def test_scoring_uses_the_training_runs_feature_parameters(home, transactions):
    """The spec is rebuilt with the parameters the version was trained with (here a 3-day label delay), not
    the use case's defaults (7 days)."""
    from champion.loading import load_scoring_model, training_params
    from flows.scoring import spec_for
    from usecases import spec_module

    model = load_scoring_model(MODEL)
    trained_with = training_params(spec_module("fraud"), model.name, model.version, model.run_id)
    assert trained_with.delay_days == DELAY_DAYS
    spec = spec_for("fraud", model)
    assert spec.score_column == "fraud_score" and spec.feature_history == pd.Timedelta(days=30 + DELAY_DAYS)
    defaults = spec_module("fraud").build_spec(spec_module("fraud").Params())
    assert defaults.feature_history == pd.Timedelta(days=37)  # what reading nothing would have given
    # and the features differ: the delay shifts the terminals' risk windows
    raw = pd.read_parquet(transactions)
    ours, theirs = spec.build_features(raw), defaults.build_features(raw)
    assert not ours[list(model.columns)].equals(theirs[list(model.columns)])
    assert os.environ["MLOPS_HOME"] == str(home)


STOCK_MODEL = "stock-volatility-forecaster"


@pytest.fixture(scope="module")
def stock_trained(tmp_path_factory, prefect_server):
    """A registry with the stock use case's champion, trained once for the module by the real pipeline."""
    home = tmp_path_factory.mktemp("stock") / "mlops"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        trained = mlops("run", "stock")
        assert trained.exit_code == 0, trained.output
    mlflow.set_tracking_uri(None)
    return home


@pytest.fixture
def stock_home(stock_trained, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(stock_trained))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{stock_trained / 'mlflow.db'}")
    yield stock_trained
    mlflow.set_tracking_uri(None)


def test_stock_scoring_one_feature_path(stock_home, tmp_path):
    """The stock use case: forecasts from the same features as training, id columns Date and Ticker."""
    from champion.loading import load_scoring_model
    from flows.scoring import spec_for
    from usecases.stock.spec import Params, load

    bars = tmp_path / "bars.parquet"
    load(Params()).to_parquet(bars)
    out = tmp_path / "forecasts.parquet"
    result = mlops("score", "stock", "-i", str(bars), "-o", str(out))
    assert result.exit_code == 0, result.output
    forecasts = pd.read_parquet(out)
    assert list(forecasts.columns) == ["Date", "Ticker", "volatility_forecast", "model_version"]
    model = load_scoring_model(STOCK_MODEL)
    spec = spec_for("stock", model)
    features = spec.build_features(pd.read_parquet(bars))
    reference = mlflow.pyfunc.load_model(f"models:/{STOCK_MODEL}/1").predict(features[list(model.columns)])
    assert len(forecasts) == len(features)
    np.testing.assert_allclose(forecasts.volatility_forecast.to_numpy(), np.asarray(reference), rtol=1e-9)


def several_tickers() -> pd.DataFrame:
    """Three tickers from arch's S&P 500 bars, interleaved by date as a multi-ticker file comes: the index
    itself, and two copies at other price and volume scales whose days move differently (a seeded random
    factor per day on all of that day's prices) and one of which lacks some days."""
    from usecases.stock.spec import Params, load

    spx = load(Params())
    prices = ["Open", "High", "Low", "Close", "Adj Close"]
    rng = np.random.default_rng(5)
    tickers = [spx.assign(Ticker="SPX")]
    for ticker, scale, volume in (("HALF", 0.5, 3.0), ("TENX", 10.0, 0.2)):
        copy = spx.copy()
        factor = scale * np.exp(np.cumsum(rng.normal(0.0, 0.006, len(copy))))
        copy[prices] = copy[prices].mul(factor, axis=0)
        copy["Volume"] = (copy["Volume"] * volume * rng.uniform(0.7, 1.3, len(copy))).round().astype("int64")
        tickers.append(copy.assign(Ticker=ticker))
    tickers[2] = tickers[2].drop(tickers[2].sample(frac=0.02, random_state=1).index)  # days TENX lacks
    return pd.concat(tickers).sort_values(["Date", "Ticker"], kind="stable").reset_index(drop=True)


def test_chunked_stock_scoring_carries_each_tickers_history(stock_home, tmp_path):
    """Chunks of a three-ticker file, cut mid-date, carry each ticker's 252-day history: every forecast
    equals the one-piece forecast for the same date and ticker, and the one-piece features' forecast."""
    from champion.loading import load_scoring_model
    from flows.scoring import spec_for

    raw = several_tickers()
    bars = tmp_path / "bars.parquet"
    raw.to_parquet(bars)
    whole, chunked = tmp_path / "whole.parquet", tmp_path / "chunked.parquet"
    one_piece = batch_scoring("stock", str(bars), str(whole), chunk_rows=None)
    assert one_piece.chunks == 1
    in_chunks = batch_scoring("stock", str(bars), str(chunked), chunk_rows=2_500)  # 2,500 % 3: dates split
    assert in_chunks.chunks >= 6 and in_chunks.rows_in == len(raw)

    keys = ["Date", "Ticker"]
    a = pd.read_parquet(whole).set_index(keys).sort_index()
    b = pd.read_parquet(chunked).set_index(keys).sort_index()
    assert a.index.is_unique and b.index.is_unique
    assert a.index.equals(b.index), a.index.symmetric_difference(b.index)[:10]
    per_ticker = a.groupby(level="Ticker").size()
    assert set(per_ticker.index) == {"SPX", "HALF", "TENX"} and (per_ticker > 4000).all(), per_ticker
    np.testing.assert_allclose(b.volatility_forecast.to_numpy(), a.volatility_forecast.to_numpy(), rtol=1e-9)
    assert (b.model_version == a.model_version).all()
    # the tickers' forecasts differ (their histories differ): a mix-up across tickers would show above
    spx, half = a.xs("SPX", level="Ticker"), a.xs("HALF", level="Ticker")
    assert not np.allclose(spx.volatility_forecast, half.volatility_forecast.reindex(spx.index))

    model = load_scoring_model(STOCK_MODEL)
    features = spec_for("stock", model).build_features(raw).set_index(keys).sort_index()
    assert features.index.equals(a.index)
    reference = np.asarray(model.predict(features.reset_index())).ravel()
    np.testing.assert_allclose(a.volatility_forecast.to_numpy(), reference, rtol=1e-9)
