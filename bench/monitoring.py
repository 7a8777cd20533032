"""Benchmark: how monitoring sees drift, how well it estimates performance before labels, what it costs.

Three parts, each printing a table (`--part simulator|handbook|stock|all`):

- simulator: per seed, a fraud champion trained on 100 simulated days (`mlops run fraud`, the gated flow),
  then 12 weekly monitoring windows with each kind of drift injected from week 2 (amount x1.6, activity
  shifted 6 hours earlier, 40 % new terminals, 30 % new customers, card testing on 60 cards a day) and with
  none: detection delay in weeks, false alarms on clean weeks, mean absolute error of the estimated average
  precision against the realised one, and, on the card-testing world, average precision before and after
  retraining (`mlops run fraud` again once the next training window holds the drifted weeks' labels);
- handbook: a champion trained up to 2018-08-31 on the handbook's transactions, watched on September as it
  is and on a copy whose amounts are shifted; and the wall time of one `mlops monitor` on ~1 M rows;
- stock: the S&P 500 volatility champion trained up to 2017-12-29, watched on 2018.

The weekly windows are assessed with the monitoring stage's own functions (`tasks.monitoring.stages`: the
window cut, `assess`), so the figures are those `mlops monitor` would print; only the Prefect/MLflow
bookkeeping of each weekly run is skipped. The handbook and stock parts run the real `mlops monitor` command.
The figures also go to bench/results/monitoring.json (`--out`); a run of some parts keeps the other parts'
tables from the file it replaces.

    uv run python bench/monitoring.py [--part all] [--seeds 3] [--out PATH] [--smoke]

`--smoke`: one seed in this process on a small simulated world (6 weeks, drift from week 1, the card-testing
and clean worlds only, retraining after 3 weeks; absolute gates off, at most 30 trees), the stock part on one
year with a shorter training window and no model selection, no handbook part; the JSON to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after the project: bench/serving.py is no `serving`
os.environ.setdefault("MLOPS_PREFECT_SERVER", "ephemeral")  # one temporary server for this process
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from _results import (  # noqa: E402
    HANDBOOK,
    SMOKE_FRAUD_OPTIONS,
    SMOKE_STOCK_OPTIONS,
    add_arguments,
    carried_over,
    document,
    output_path,
    table,
    write,
)

# 100 days before the champion's end: its training window then starts after the features' 37-day warm-up
# (30-day terminal windows behind the 7-day label delay), as on real data.
FULL = {
    "sim": {"n_customers": 2000, "n_terminals": 4000},
    "train_days": 100,
    "drift_week": 2,
    "weeks": 12,
    # weeks after the drift began: the next training window (21 days, 7-day gaps) then holds it
    "retrain_after": 6,
    "kinds": None,  # all
    "options": [],
}
SMOKE = {
    "sim": {"n_customers": 300, "n_terminals": 600},
    "train_days": 100,
    "drift_week": 1,
    "weeks": 6,
    "retrain_after": 3,
    "kinds": ("none", "card testing 60/day"),
    "options": SMOKE_FRAUD_OPTIONS,
}
CFG = dict(FULL)
START_DATE = "2018-04-01"  # the simulator's first day


def _train_end() -> str:
    import pandas as pd

    return (pd.Timestamp(START_DATE) + pd.Timedelta(days=CFG["train_days"] - 1)).date().isoformat()


def _sim() -> dict:
    return {**CFG["sim"], "n_days": CFG["train_days"] + 7 * CFG["weeks"]}


def _mlops(*args: str) -> int:
    from cli.main import app

    return app(list(args), standalone_mode=False) or 0


def _champion(home: Path, use_case: str = "fraud"):
    from champion import store
    from champion.loading import load_scoring_model, spec_for, training_params
    from tasks.monitoring.reference import reference_profile
    from usecases import default_registered_model, spec_module

    os.environ["MLOPS_HOME"] = str(home)
    store.configure()
    model = load_scoring_model(default_registered_model(use_case))
    spec = spec_for(use_case, model)
    params = training_params(spec_module(use_case), model.name, model.version, model.run_id)
    profile, _ = reference_profile.fn(model, spec, params)
    return model, spec, profile


def _weekly(model, spec, profile, raw, start: str):
    """Assess each week from `start` on; returns one row per week."""
    import pandas as pd

    from tasks.monitoring.stages import Window, assess, thresholds_for
    from usecases.params import MonitorParams

    table_ = spec.build_features(raw)
    times = table_[spec.time_column]
    thresholds = thresholds_for(spec, MonitorParams())
    rows = []
    for week in range(CFG["weeks"]):
        lo = pd.Timestamp(start) + pd.Timedelta(days=7 * week)
        window = Window(table_, table_.loc[(times >= lo) & (times < lo + pd.Timedelta(days=7))], lo, "bench")
        a = assess.fn(profile, window, model, spec, thresholds)
        rows.append(
            {
                "week": week,
                "status": a.verdict.status,
                "estimated": a.verdict.estimated_value,
                "realised": a.verdict.realised_value,
                "drifted": a.drifted,
            }
        )
    return rows


def _kinds(drift_day: str) -> dict:
    from usecases.fraud.simulator import Drift

    kinds = {
        "none": None,
        "amount x1.6": Drift(start=drift_day, amount_factor=1.6),
        "hours -6": Drift(start=drift_day, hour_shift=-6),
        "new terminals 40%": Drift(start=drift_day, new_terminal_share=0.4),
        "new customers 30%": Drift(start=drift_day, new_customer_share=0.3),
        "card testing 60/day": Drift(start=drift_day, card_testing_cards_per_day=60),
    }
    return {k: v for k, v in kinds.items() if CFG["kinds"] is None or k in CFG["kinds"]}


def simulate_seed(seed: int) -> dict:
    """One seed's world: train, then the weekly verdicts under every kind of drift (run in its own process,
    so each seed has a fresh MLflow store and Prefect state)."""
    import pandas as pd

    from usecases.fraud.simulator import simulate_transactions

    train_end = _train_end()
    start = (pd.Timestamp(train_end) + pd.Timedelta(days=1)).date().isoformat()
    drift_day = (pd.Timestamp(start) + pd.Timedelta(days=7 * CFG["drift_week"])).date().isoformat()
    out = {"seed": seed, "weeks": {}, "retrain": None}
    with tempfile.TemporaryDirectory(prefix=f"bench-monitoring-{seed}-", ignore_cleanup_errors=True) as tmp:
        tmp = Path(tmp)
        clean = simulate_transactions(**_sim(), seed=seed)
        clean.to_parquet(tmp / "clean.parquet")
        os.environ["MLOPS_HOME"] = str(tmp / "home")
        options = ["--data", str(tmp / "clean.parquet"), "--end", train_end, *CFG["options"]]
        code = _mlops("run", "fraud", *options)
        if code != 0:
            out["error"] = f"the champion was not promoted (exit {code})"
            return out
        model, spec, profile = _champion(tmp / "home")
        for kind, drift in _kinds(drift_day).items():
            raw = clean if drift is None else simulate_transactions(**_sim(), seed=seed, drift=drift)
            weeks = _weekly(model, spec, profile, raw, start)
            out["weeks"][kind] = weeks
            if kind == "card testing 60/day":
                out["retrain"] = _retrain(tmp, raw, weeks, start, model, spec, profile)
    return out


def _seed_results(seeds: int, in_process: bool) -> list[dict]:
    """Every seed's world (`simulate_seed`), each in its own process unless `in_process`."""
    import subprocess

    results = []
    for seed in range(seeds):
        if in_process:
            results.append(json.loads(json.dumps(simulate_seed(seed), default=str)))
            continue
        done = subprocess.run(
            [sys.executable, __file__, "--part", "seed", "--seed", str(seed)], capture_output=True, text=True
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("SEED ")]
        if not lines:
            print(f"seed {seed} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
            continue
        results.append(json.loads(lines[-1][5:]))
    return results


def _detection(results: list[dict]) -> list[list]:
    """Per kind of drift, each seed's weeks to an alarm and the alarms before it; the clean worlds'."""
    drift_week = CFG["drift_week"]
    print(f"{'drift':24}{'detected after (weeks), per seed':36}{'alarms before it':>18}")
    detection = []
    for kind in (k for k in _kinds("2018-01-01") if k != "none"):
        delays, early = [], 0
        for r in (r for r in results if not r.get("error")):
            alarms = [w["week"] for w in r["weeks"].get(kind, []) if w["status"] != "healthy"]
            early += sum(1 for a in alarms if a < drift_week)
            after = [a for a in alarms if a >= drift_week]
            delays.append(str(after[0] - drift_week) if after else "missed")
        print(f"{kind:24}{', '.join(delays):36}{early:>18}")
        detection.append([kind, ", ".join(delays), early])
    clean = [w for r in results for w in r["weeks"].get("none", [])]
    alarms = sum(w["status"] != "healthy" for w in clean)
    print(f"clean worlds: {alarms} alarm(s) in {len(clean)} weeks")
    detection.append(["none (clean worlds)", f"{alarms} alarms in {len(clean)} weeks", None])
    return detection


def _estimate(results: list[dict]) -> list[list]:
    """Estimated against realised average precision, clean weeks."""
    import numpy as np

    clean = [w for r in results for w in r["weeks"].get("none", [])]
    errors = [abs(w["estimated"] - w["realised"]) for w in clean if w["estimated"] and w["realised"]]
    if not errors:
        return []
    print(
        f"estimated vs realised average precision, clean weeks: MAE {np.mean(errors):.3f} "
        f"(max {np.max(errors):.3f}, {len(errors)} weeks)"
    )
    return [[len(errors), float(np.mean(errors)), float(np.max(errors))]]


def _retrained(results: list[dict]) -> tuple[list[list], list[str]]:
    """Each seed's retraining on the card-testing world, and a note for every seed that failed."""
    rows, notes = [], []
    for r in results:
        if r.get("error"):
            print(f"seed {r['seed']}: {r['error']}; its world is left out above")
            notes.append(f"seed {r['seed']}: {r['error']}; its world is left out")
        t = r.get("retrain")
        if t and "before" not in t:
            print(f"seed {r['seed']}, card testing: retraining after week {t['week']}: {t['decision']}")
            rows.append([r["seed"], t["week"], None, None, t["decision"]])
        elif t:
            print(
                f"seed {r['seed']}, card testing: retrained after week {t['week']}; average precision on "
                f"the weeks after: {t['before']:.3f} (old champion) -> {t['after']:.3f} ({t['decision']})"
            )
            rows.append([r["seed"], t["week"], t["before"], t["after"], t["decision"]])
    return rows, notes


def simulator(seeds: int, in_process: bool = False) -> dict:
    started = time.perf_counter()
    results = _seed_results(seeds, in_process)
    took, drift_week, weeks = time.perf_counter() - started, CFG["drift_week"], CFG["weeks"]
    print(
        f"\n== simulator: {seeds} seed(s), {weeks} weekly windows, drift from week {drift_week} ({took:.0f}s)"
    )
    detection = _detection(results)
    estimate_rows = _estimate(results)
    retrain_rows, notes = _retrained(results)
    setup = (
        f"{seeds} seed(s); a champion trained on {CFG['train_days']} simulated days "
        f"({CFG['sim']['n_customers']:,} customers, {CFG['sim']['n_terminals']:,} terminals), then {weeks} "
        f"weekly windows, drift injected from week {drift_week}; verdicts from the monitoring stage's own "
        "functions"
    )
    return {
        "simulator": table(
            "Drift detection on the simulator",
            ["drift", "detected after (weeks), per seed", "alarms before it"],
            detection,
            method=setup,
            notes=notes,
        ),
        "estimate": table(
            "Estimated against realised average precision, clean weeks",
            ["weeks", {"name": "mean absolute error", "format": ".3f"}, {"name": "max", "format": ".3f"}],
            estimate_rows,
            method="estimated before labels from the calibrated scores; realised once the labels are known",
        ),
        "retrain": table(
            "Retraining on the card-testing world",
            [
                "seed",
                "retrained after week",
                {"name": "AP on the weeks after, old champion", "format": ".2f"},
                {"name": "AP on the weeks after, retrained", "format": ".2f"},
                "decision",
            ],
            retrain_rows,
            method=(
                f"`mlops run fraud` again {CFG['retrain_after']} weeks after the drift began, once the "
                "drifted weeks' labels fill a training window; average precision on the weeks after"
            ),
        ),
    }


def _retrain(tmp: Path, raw, weeks, start: str, model, spec, profile) -> dict | None:
    """Retrain when the labels of the drifted weeks fill a training window; compare on the weeks after."""
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient

    from champion.loading import load_scoring_model

    drift_week = CFG["drift_week"]
    if not any(w["status"] != "healthy" and w["week"] >= drift_week for w in weeks):
        return None
    week = drift_week + CFG["retrain_after"]
    end = (pd.Timestamp(start) + pd.Timedelta(days=7 * week - 1)).date().isoformat()
    path = tmp / "drifted.parquet"
    raw.to_parquet(path)
    code = _mlops("run", "fraud", "--data", str(path), "--end", end, *CFG["options"])
    versions = MlflowClient().search_model_versions(f"name = '{model.name}'")
    newest = max(versions, key=lambda v: int(v.version))
    if str(newest.version) == str(model.version):
        return {"week": week, "decision": f"not registered (exit {code})"}
    candidate = load_scoring_model(model.name, version=newest.version)
    _, _, candidate_profile = _champion(tmp / "home")  # the profile of whichever version is champion now
    later = (pd.Timestamp(end) + pd.Timedelta(days=1)).date().isoformat()
    old = _weekly(model, spec, profile, raw, later)[: CFG["weeks"] - week]
    new = _weekly(candidate, spec, candidate_profile, raw, later)[: CFG["weeks"] - week]

    def mean(rows):
        values = [r["realised"] for r in rows if r["realised"] is not None]
        return float(np.nanmean(values)) if values else None

    client = MlflowClient()
    experiment = client.get_experiment_by_name("fraud").experiment_id
    last = client.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=1)[0]
    summary = last.data.tags.get("decision.summary", "")
    decision = "promoted" if code == 0 else f"exit {code}: {summary}"
    return {"week": week, "before": mean(old), "after": mean(new), "decision": decision}


def _monitor(*args: str) -> tuple[int, float]:
    started = time.perf_counter()
    code = _mlops("monitor", *args)
    return code, time.perf_counter() - started


def _last_assessment(home: Path, use_case: str) -> dict:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    runs = mlflow.search_runs(
        experiment_names=[f"{use_case}-monitoring"],
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return json.loads(mlflow.artifacts.load_text(f"runs:/{runs[0].info.run_id}/assessment.json"))


def _row(label: str, a: dict, seconds: float) -> list:
    v = a["verdict"]
    drifted = [f["feature"] for f in a["features"] if f["drifted"]]
    est, real = v.get("estimated_value"), v.get("realised_value")
    nan = float("nan")
    print(
        f"{label:34}{v['status']:>10}{a['rows']:>11,}{est if est is not None else nan:>11.4g}"
        f"{real if real is not None else nan:>10.4g}{seconds:>8.1f}  {', '.join(drifted[:3]) or '-'}"
    )
    listed = ", ".join(drifted[:3]) + (f" ({len(drifted)} of {len(a['features'])})" if drifted else "")
    return [label, v["status"], a["rows"], est, real, seconds, listed or "-"]


def handbook() -> dict:
    import pandas as pd

    if not HANDBOOK.exists():
        print(f"handbook data not found at {HANDBOOK}: part skipped")
        return {}
    folder = tempfile.TemporaryDirectory(prefix="bench-monitoring-handbook-", ignore_cleanup_errors=True)
    tmp = Path(folder.name)
    os.environ["MLOPS_HOME"] = str(tmp / "home")
    code = _mlops("run", "fraud", "--data", str(HANDBOOK), "--end", "2018-08-31")
    print(f"\n== handbook: champion trained up to 2018-08-31 (exit {code}), watched on September")
    frame = pd.read_parquet(HANDBOOK)
    shifted = frame.copy()
    september = shifted["TX_DATETIME"] >= "2018-09-01"
    shifted.loc[september, "TX_AMOUNT"] = (shifted.loc[september, "TX_AMOUNT"] * 1.3).round(2)
    shifted.to_parquet(tmp / "shifted.parquet")
    print(f"{'':34}{'verdict':>10}{'rows':>11}{'est. AP':>11}{'real AP':>10}{'s':>8}  drifted (worst first)")
    rows = []
    for label, path, since in (
        ("September, unchanged", HANDBOOK, "2018-09-01"),
        ("September, amounts x1.3", tmp / "shifted.parquet", "2018-09-01"),
        ("~1 M rows (2018-06-19 ..)", HANDBOOK, "2018-06-19"),
    ):
        code, seconds = _monitor("fraud", "--data", str(path), "--since", since)
        rows.append(_row(label, _last_assessment(tmp / "home", "fraud"), seconds))
    folder.cleanup()
    return {
        "handbook": table(
            "The handbook's transactions, a champion trained up to 2018-08-31",
            [
                "window",
                "verdict",
                "rows",
                {"name": "estimated AP", "format": ".3f"},
                {"name": "realised AP", "format": ".3f"},
                {"name": "wall time (in-process), s", "format": ".1f"},
                "drifted, worst first",
            ],
            rows,
            method=(
                "`mlops monitor fraud --data ... --since ...` in a warm process (features included; the CLI "
                "adds its start-up); rows are the monitored window, the metrics are on its test population "
                "(the known-compromised filter), whose labels are all known in the handbook file"
            ),
        )  # fmt: skip
    }


def stock(smoke: bool = False) -> dict:
    """A calm year after a calm training period, and 2018 (February's volatility spike, the Q4 sell-off)."""
    from arch.data import sp500

    print("\n== stock: the S&P 500 volatility champion, watched on the year after its training data")
    header = f"{'':34}{'verdict':>10}{'rows':>11}{'est. MAE':>11}{'real MAE':>10}{'s':>8}"
    print(header + "  drifted (worst first)")
    windows = (
        ("2016-12-30", "2017-01-01", "2017-2018, trained to 2016"),
        ("2017-12-29", "2018-01-01", "2018, trained to 2017"),
    )
    if smoke:
        windows = windows[1:]
    rows = []
    for end, since, label in windows:
        # One folder per champion, all kept until the end: MLflow keeps its SQLite engines for the process.
        tmp = Path(tempfile.mkdtemp(prefix=f"stock-{since[:4]}-"))
        os.environ["MLOPS_HOME"] = str(tmp / "home")
        code = _mlops("run", "stock", "--end", end, *(SMOKE_STOCK_OPTIONS if smoke else []))
        if code != 0:
            print(f"{label:34}champion not promoted (exit {code})")
            rows.append([label, f"champion not promoted (exit {code})", None, None, None, None, "-"])
            continue
        sp500.load().reset_index().to_parquet(tmp / "sp500.parquet")
        data = ["--data", str(tmp / "sp500.parquet"), "--since", since, "--min-rows", "100"]
        code, seconds = _monitor("stock", *data)
        rows.append(_row(label, _last_assessment(tmp / "home", "stock"), seconds))
    return {
        "stock": table(
            "Stock: the S&P 500 volatility champion on the year after its training data",
            [
                "window",
                "verdict",
                "rows",
                {"name": "estimated MAE", "format": ".5f"},
                {"name": "realised MAE", "format": ".5f"},
                {"name": "wall time (in-process), s", "format": ".1f"},
                "drifted, worst first",
            ],
            rows,
            method="`mlops monitor stock --since ... --min-rows 100` (a year is ~250 daily rows)",
        )  # fmt: skip
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["simulator", "handbook", "stock", "all", "seed"], default="all")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="with --part seed: one seed's world, as JSON")
    add_arguments(parser, "monitoring")
    args = parser.parse_args(argv)
    CFG.clear()
    CFG.update(SMOKE if args.smoke else FULL)
    if args.part == "seed":
        print("SEED " + json.dumps(simulate_seed(args.seed), default=str))
        return {}
    out = output_path(args, "monitoring")
    tables = {} if args.smoke else carried_over(out)  # a partial run keeps the other parts' tables
    if args.part in ("simulator", "all"):
        tables.update(simulator(1 if args.smoke else args.seeds, in_process=args.smoke))
    if args.part in ("handbook", "all") and not args.smoke:
        tables.update(handbook())
    if args.part in ("stock", "all"):
        tables.update(stock(args.smoke))
    command = "uv run python bench/monitoring.py" + (" --smoke" if args.smoke else f" --part {args.part}")
    doc = document("monitoring", command, tables, smoke=args.smoke)
    write(out, doc)
    return doc


if __name__ == "__main__":
    main()
