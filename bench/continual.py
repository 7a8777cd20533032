"""Benchmark: continual learning and transfer, through the pipeline's own stages (in-process, no servers).

Fraud (concept drift): transactions from the handbook's simulator with a new fraud scenario (card testing)
from day 100. A champion is trained before the drift; after it, four ways to get the next model are compared
on the same windows: from scratch on the new training window, `--init champion` (continue boosting),
`--init champion --update refresh` (same trees, leaves refitted), and from scratch on all history. Reported:
average precision on the new test window, on the two old test windows before the drift (backward transfer;
the champion's test window and the week before it), and the training time.

Stock (transfer): the S&P 500 volatility champion (arch's bars, trained up to 2017-06-30) and a second
instrument built from the same bars: daily log returns x 1.5 plus independent Gaussian noise of 0.5 x the
trailing 22-day volatility (so volatility still clusters), prices rebuilt from them, intraday ranges scaled
alike, the S&P's volume. It is a synthetic, more volatile, partly idiosyncratic series, not a real stock.
On its last 375 trading days (2017-07 .. 2018-12) as test: the S&P model as is, scratch on 2 years (504
trading days) of the instrument, the S&P model continued and refreshed on those 2 years, and HAR-RV fitted
on them.

The stages are the ones `mlops run` calls (`tasks.train.train`, the use cases' specs, splits and metrics);
`Parent` is built from the in-memory champion instead of loaded from a registry. The CLI equivalent of the
stock runs: `mlops run stock --data instrument.parquet --train-steps 504 --test-steps 375
--validation-steps 125 --registered-model stock-volatility-synthetic --init
models:/stock-volatility-forecaster@champion [--update refresh]`.

The figures also go to bench/results/continual.json (`--out`); a run of one part keeps the other's table.

    uv run python bench/continual.py [--fraud-only | --stock-only] [--out PATH] [--smoke]

`--smoke`: the fraud world at 300 customers and 600 terminals with at most 30 trees per model, the stock
models without walk-forward selection (fixed depth), the JSON to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # a loaded machine starts it slowly
}.items():
    os.environ.setdefault(_name, _value)
sys.path.append(str(Path(__file__).resolve().parent))  # after the project: bench/serving.py is no `serving`

from _results import add_arguments, carried_over, document, output_path, write  # noqa: E402
from _results import table as results_table  # noqa: E402

from tasks.lineage import Parent  # noqa: E402
from tasks.split import split_frame  # noqa: E402
from tasks.train import train  # noqa: E402
from usecases.spec import SplitSpec  # noqa: E402


def _parent(candidate, mode: str, windows) -> Parent:
    return Parent(
        uri="models:/bench/1",
        requested="champion",
        mode=mode,
        booster=candidate.booster,
        features=candidate.features,
        config=candidate.config,
        params={k: str(v) for k, v in candidate.params.items()},
        trained_on=candidate.trained_on,
    )


def _fit(splits, spec, parent=None):
    started = time.perf_counter()
    candidate = train.fn(splits, spec.model, spec.schema, spec.split, 42, None, parent)
    return candidate, time.perf_counter() - started


def _score(spec, frame: pd.DataFrame, predict, context) -> float:
    return float(
        spec.metrics.compute(frame, np.asarray(predict(frame), float), context)[spec.metrics.primary]
    )


# --- fraud -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FraudWorld:
    """The drifting fraud world: its feature table, the specs and splits before and after the drift, and
    the old windows backward transfer is scored on."""

    start: pd.Timestamp
    drift_date: str  # the first day of card testing
    days: int
    customers: int
    terminals: int
    transactions: int
    table: pd.DataFrame
    old_spec: Any  # the champion's, before the drift
    old: Any
    new_spec: Any  # every other model's, after it
    new: Any
    all_spec: Any  # the new spec trained on all history
    everything: Any
    old_windows: dict


def fraud_world(smoke: bool) -> FraudWorld:
    from usecases.fraud import spec as fraud_spec
    from usecases.fraud.simulator import Drift, simulate_transactions

    start, drift_day, days = pd.Timestamp("2018-04-01"), 100, 150
    customers, terminals = (300, 600) if smoke else (2000, 4000)
    rounds = {"rounds": 30} if smoke else {}  # smoke: at most 30 trees per model
    raw = simulate_transactions(
        n_customers=customers,
        n_terminals=terminals,
        n_days=days,
        seed=42,
        drift=Drift(start=start + pd.Timedelta(days=drift_day), card_testing_cards_per_day=10),
    )
    day = lambda d: str((start + pd.Timedelta(days=d)).date())  # noqa: E731
    old_spec = fraud_spec.build_spec(fraud_spec.Params(end=day(drift_day - 1), **rounds))
    table = old_spec.build_features(raw)
    print(f"fraud: {len(raw):,} transactions, {days} days, card testing (10 cards/day) from {day(drift_day)}")
    new_spec = fraud_spec.build_spec(fraud_spec.Params(end=day(days - 1), **rounds))
    all_spec = fraud_spec.build_spec(fraud_spec.Params(end=day(days - 1), **rounds))
    all_spec = type(all_spec)(
        **{**all_spec.__dict__, "split": SplitSpec(**{**all_spec.split.__dict__, "train": None})}
    )
    old = split_frame(table, old_spec.split, old_spec.time_column, old_spec.target, old_spec.test_filter)
    return FraudWorld(
        start=start,
        drift_date=day(drift_day),
        days=days,
        customers=customers,
        terminals=terminals,
        transactions=len(raw),
        table=table,
        old_spec=old_spec,
        old=old,
        new_spec=new_spec,
        new=split_frame(table, new_spec.split, new_spec.time_column, new_spec.target, new_spec.test_filter),
        all_spec=all_spec,
        everything=split_frame(
            table, all_spec.split, all_spec.time_column, all_spec.target, all_spec.test_filter
        ),
        old_windows={
            "champion's test": old.windows["test"],
            "week before": (day(drift_day - 14), day(drift_day - 8)),
        },
    )


def fraud_runs(world: FraudWorld) -> dict:
    """The champion before the drift and the four ways to the next model after it: name -> (candidate,
    training seconds, the splits it was trained on)."""
    champion, champion_seconds = _fit(world.old, world.old_spec)
    print(
        f"champion: trained {world.old.windows['train']} in {champion_seconds:.1f} s; "
        f"new windows {world.new.windows}"
    )
    new, new_spec = world.new, world.new_spec
    runs = {"champion as is (trained before the drift)": (champion, 0.0, world.old)}
    runs["scratch on the new window"] = (*_fit(new, new_spec), new)
    runs["`--init champion` (continue)"] = (*_fit(new, new_spec, _parent(champion, "continue", None)), new)
    runs["`--init champion --update refresh`"] = (
        *_fit(new, new_spec, _parent(champion, "refresh", None)),
        new,
    )
    runs["scratch on all history"] = (*_fit(world.everything, world.all_spec), world.everything)
    return runs


def fraud_rows(world: FraudWorld, runs: dict) -> list[list]:
    """Each run scored on the new test window and the old ones (printed as a table as it goes)."""
    from tasks.evaluate import score_model

    table, new_spec, everything = world.table, world.new_spec, world.everything

    def window(lo_hi):
        lo, hi = lo_hi
        times = table[new_spec.time_column].dt.normalize()
        rows = table[(times >= lo) & (times <= hi)]
        return new_spec.test_filter(rows, table).reset_index(drop=True)

    olds = {name: window(w) for name, w in world.old_windows.items()}
    champion, _, old = next(iter(runs.values()))
    champion_context = score_model(champion.predict, old, world.old_spec.metrics).context
    header = "| model | trees | AP new test | " + " | ".join(
        f"AP old: {n} {w[0]}..{w[1]}" for n, w in world.old_windows.items()
    )
    print("\n" + header + " | train s |\n|---|---|---|" + "---|" * len(world.old_windows) + "---|")
    rows = []
    for name, (candidate, seconds, splits) in runs.items():
        context = score_model(candidate.predict, splits, new_spec.metrics).context  # its own threshold
        if candidate is champion:
            context = champion_context
        new_ap = _score(new_spec, world.new.test, candidate.predict, context)
        old_aps = [_score(new_spec, f, candidate.predict, context) for f in olds.values()]
        in_sample = "†" if splits is everything else ""
        print(
            f"| {name} | {candidate.booster.num_boosted_rounds()} | {new_ap:.3f} | "
            + " | ".join(f"{a:.3f}{in_sample}" for a in old_aps)
            + f" | {seconds:.1f} |"
        )
        rows.append(
            [
                name
                if splits is not everything
                else f"{name} ({everything.windows['train'][0]} .. {everything.windows['train'][1]})",
                candidate.booster.num_boosted_rounds(),
                new_ap,
                *(f"{a:.3f}{in_sample}" for a in old_aps),
                seconds if candidate is not champion else None,
            ]
        )
    print("† in its training window")
    return rows


def fraud_table(world: FraudWorld, rows: list[list]) -> dict:
    short = lambda d: str(d)[5:10]  # noqa: E731
    old, new = world.old, world.new
    return results_table(
        "Fraud: continual learning under concept drift",
        [
            "model",
            "trees",
            {"name": "AP, new test week", "format": ".3f"},
            *(
                f"AP, {n.replace('test', 'test week')} {short(w[0])} .. {short(w[1])}"
                for n, w in world.old_windows.items()
            ),
            {"name": "training s", "format": ".1f"},
        ],
        rows,
        method=(
            f"the handbook's simulator ({world.customers:,} customers, {world.terminals:,} terminals, "
            f"{world.days} days from {world.start.date()}, {world.transactions:,} transactions) with card "
            f"testing (10 cards a day) from {world.drift_date}; champion trained on "
            f"{old.windows['train'][0]} .. {old.windows['train'][1]}, "
            f"every other model on the windows after the drift (train {new.windows['train'][0]} .. "
            f"{new.windows['train'][1]}, test {new.windows['test'][0]} .. {new.windows['test'][1]}); "
            "average precision on the handbook population; training time on this machine"
        ),
        notes=["† inside its training window: in-sample, not backward transfer"],
    )


def fraud(smoke: bool = False) -> dict:
    world = fraud_world(smoke)
    return fraud_table(world, fraud_rows(world, fraud_runs(world)))


# --- stock -------------------------------------------------------------------------------------------------


def synthetic_instrument(bars: pd.DataFrame, seed: int = 7) -> pd.DataFrame:
    """Returns x 1.5 plus Gaussian noise of 0.5 x trailing 22-day volatility; ranges scaled alike."""
    rng = np.random.default_rng(seed)
    close = bars["Adj Close"].to_numpy(float)
    r = np.diff(np.log(close), prepend=np.log(close[0]))
    vol = pd.Series(r).rolling(22, min_periods=5).std().bfill().to_numpy()
    r2 = 1.5 * r + 0.5 * vol * rng.normal(size=len(r))
    new_close = 50.0 * np.exp(np.cumsum(r2))
    scale = lambda column: np.exp(1.5 * np.log(bars[column].to_numpy(float) / bars["Close"].to_numpy(float)))  # noqa: E731
    out = pd.DataFrame({"Date": bars["Date"].to_numpy()})
    out["Close"] = out["Adj Close"] = new_close
    out["Open"] = new_close * scale("Open")
    out["High"] = np.maximum.reduce([new_close * scale("High"), out["Open"], new_close])
    out["Low"] = np.minimum.reduce([new_close * scale("Low"), out["Open"], new_close])
    out["Volume"] = bars["Volume"].to_numpy()
    return out[["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"]]


def stock(smoke: bool = False) -> dict:
    from arch.data import sp500

    from tasks.evaluate import score_model
    from usecases.stock import spec as stock_spec

    bars = sp500.load().reset_index()
    fixed = {"folds": 0} if smoke else {}  # smoke: no walk-forward selection
    sp_spec = stock_spec.build_spec(stock_spec.Params(end="2017-06-30", **fixed))
    sp_table = sp_spec.build_features(bars).dropna(subset=[sp_spec.target]).reset_index(drop=True)
    sp = split_frame(sp_table, sp_spec.split, sp_spec.time_column)
    champion, seconds = _fit(sp, sp_spec)
    print(
        f"\nstock: S&P 500 champion trained on {sp.windows['train']} ({seconds:.0f} s, "
        f"{champion.booster.num_boosted_rounds()} trees)"
    )

    instrument = synthetic_instrument(bars[bars["Date"] >= "2013-11-01"].reset_index(drop=True))
    params = stock_spec.Params(train_steps=504, validation_steps=125, test_steps=375, **fixed)
    spec = stock_spec.build_spec(params)
    table = spec.build_features(instrument).dropna(subset=[spec.target]).reset_index(drop=True)
    splits = split_frame(table, spec.split, spec.time_column)
    print(f"instrument windows: {splits.windows}")

    rows = {"S&P 500 model as is": (champion, 0.0)}
    rows["scratch on 2 years"] = _fit(splits, spec)
    rows["S&P model continued on 2 years (`--init`)"] = _fit(
        splits, spec, _parent(champion, "continue", None)
    )
    rows["S&P model refreshed on 2 years (`--update refresh`)"] = _fit(
        splits, spec, _parent(champion, "refresh", None)
    )
    print("\n| model | trees | test MAE | test RMSE | train s |\n|---|---|---|---|---|")
    out = []
    for name, (candidate, secs) in rows.items():
        m = score_model(candidate.predict, splits, spec.metrics).metrics
        print(
            f"| {name} | {candidate.booster.num_boosted_rounds()} | {m['mae']:.5f} | {m['rmse']:.5f} "
            f"| {secs:.1f} |"
        )
        out.append([name, candidate.booster.num_boosted_rounds(), m["mae"], m["rmse"], secs or None])
    for baseline in spec.baselines:
        predict = baseline.fit(splits.train, list(spec.features), spec.target)
        m = score_model(predict, splits, spec.metrics).metrics
        print(f"| {baseline.name} (fitted on the 2 years) | - | {m['mae']:.5f} | {m['rmse']:.5f} | - |")
        out.append([f"{baseline.name} (fitted on the 2 years)", None, m["mae"], m["rmse"], None])
    return results_table(
        "Stock: transfer to another instrument",
        [
            "model",
            "trees",
            {"name": "test MAE", "format": ".5f"},
            {"name": "test RMSE", "format": ".5f"},
            {"name": "training s", "format": ".1f"},
        ],
        out,
        method=(
            "the S&P 500 volatility champion (arch's bars, `--end 2017-06-30`: trained on "
            f"{' .. '.join(sp.windows['train'])}) and a synthetic instrument built from the same bars (log "
            "returns x 1.5 plus Gaussian noise of 0.5 x the trailing 22-day volatility); instrument windows: "
            f"train {' .. '.join(splits.windows['train'])}, test {' .. '.join(splits.windows['test'])}"
            + ("; no walk-forward selection (smoke)" if smoke else "")
        ),
    )


def _in_flow(fn, *args):
    """`fn(*args)` inside a Prefect flow run: walk-forward selection submits its folds as task runs of one
    (Prefect's temporary server when none is configured)."""
    from prefect import flow

    return flow(name=f"bench-continual-{fn.__name__}", validate_parameters=False)(fn)(*args)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraud-only", action="store_true")
    parser.add_argument("--stock-only", action="store_true")
    add_arguments(parser, "continual")
    args = parser.parse_args(argv)
    out = output_path(args, "continual")
    tables = {} if args.smoke else carried_over(out)
    if not args.stock_only:
        tables["fraud"] = fraud(args.smoke)
    if not args.fraud_only:
        tables["stock"] = _in_flow(stock, args.smoke)
    flags = [
        f
        for f, on in (
            ("--smoke", args.smoke),
            ("--fraud-only", args.fraud_only),
            ("--stock-only", args.stock_only),
        )
        if on
    ]
    command = " ".join(["uv run python bench/continual.py", *flags])
    doc = document("continual", command, tables, smoke=args.smoke)
    write(out, doc)
    return doc


if __name__ == "__main__":
    main()
