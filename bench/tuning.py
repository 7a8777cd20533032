"""Tuning benchmark: what an Optuna study over the fraud search space buys on the handbook data.

    uv run python bench/tuning.py [--data PATH] [--checkpoints 20,50,100] [--timing-trials N] [--out PATH]
        [--smoke]

One study (`mlops tune fraud`'s flow, the winner not trained) grown to 20, 50 and 100 trials. At each
checkpoint the best trial's parameters and the spec's defaults are each fitted as a run fits its candidate
(the training window with replay and recency, early stopping on the validation window) and scored by average
precision on the validation window and on the test window (the handbook's protocol: cards already known to
be compromised left out). Selection reads only the walk-forward folds inside the training window; the test
window is scored for this table, never used to choose. Wall time: the local study (trials on 2 threads) and
the first checkpoint again on a 2-worker Dask LocalCluster; the share of trials pruned.

`--smoke`: the simulated smoke data, checkpoints of 1 and 2 trials, Dask with 1 trial on 1 worker; JSON to a
temp folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}.items():
    os.environ.setdefault(_name, _value)
sys.path.append(str(Path(__file__).resolve().parent))  # after the project: bench/serving.py is no `serving`

from _results import HANDBOOK, add_arguments, document, output_path, smoke_fraud_data, write  # noqa: E402
from _results import table as results_table  # noqa: E402

CHECKPOINTS, SMOKE_CHECKPOINTS = (20, 50, 100), (1, 2)


def fitted_scores(spec, table) -> tuple[float, float]:
    """Validation and test average precision of `spec`'s candidate fitted as a run fits it."""
    from tasks.candidate import fit_candidate
    from tasks.split import split_frame

    splits = split_frame(table, spec.split, spec.time_column, spec.target, spec.test_filter, spec.continual)
    model = replace(spec.model, search={}, folds=0)
    candidate = fit_candidate(splits, model, spec.schema, dict(model.params), 42)
    metrics, scores = spec.metrics, {}
    validation = candidate.predict(splits.validation)
    context = metrics.calibrate(splits.validation, validation)
    scores["validation"] = metrics.compute(splits.validation, validation, context)[metrics.primary]
    scores["test"] = metrics.compute(splits.test, candidate.predict(splits.test), context)[metrics.primary]
    return float(scores["validation"]), float(scores["test"])


def study_run(data: str, study: str, trials: int, executor: str = "local"):
    from flows.form import to_form
    from flows.tuning import TUNING_FLOWS
    from usecases.params import TuneParams

    options = TuneParams(data=data, study=study, trials=trials, executor=executor, train_winner=False)
    started = time.perf_counter()
    outcome = TUNING_FLOWS["fraud"](**to_form(options))
    return outcome, time.perf_counter() - started


def run(data: str, checkpoints: tuple[int, ...], dask_trials: int) -> dict:
    from tasks.split import with_known_target
    from tasks.tuning.apply import tuned_spec
    from usecases.fraud import spec as fraud

    params = fraud.Params(data=data)
    defaults_spec = fraud.build_spec(params)
    table = with_known_target(defaults_spec.build_features(defaults_spec.load(params)), defaults_spec.target)
    default_val, default_test = fitted_scores(defaults_spec, table)
    rows, wall, done, pruned, total = [], 0.0, 0, 0, 0
    study = f"bench-{int(time.time())}"
    defaults_cv = None
    for checkpoint in checkpoints:
        outcome, seconds = study_run(data, study, checkpoint - done)
        done, wall = checkpoint, wall + seconds
        pruned += sum(r.state == "PRUNED" for r in outcome.trials)
        total += len(outcome.trials)
        defaults_cv = outcome.defaults_value
        spec = tuned_spec(fraud.build_spec, params, fraud.TUNING.space, outcome.best_params)
        val, test = fitted_scores(spec, table)
        rows.append([f"tuned, {checkpoint} trials", outcome.best_value, val, test, wall, pruned / total])
    rows.insert(0, ["spec defaults", defaults_cv, default_val, default_test, None, None])
    from tasks.dask.cluster import DaskSettings

    workers = DaskSettings.from_env().workers  # what the dask executor's LocalCluster will start
    _, dask_seconds = study_run(data, f"{study}-dask", dask_trials, executor="dask")
    _, local_seconds = study_run(data, f"{study}-local", dask_trials)
    quality = results_table(
        "Average precision: spec defaults vs the study's best after N trials",
        [
            "model",
            {"name": "folds AP (selection)", "format": ".4f"},
            {"name": "validation AP", "format": ".4f"},
            {"name": "test AP", "format": ".4f"},
            {"name": "study wall s (cumulative)", "format": ".0f"},
            {"name": "pruned share", "format": ".0%"},
        ],
        rows,
        method="One study grown to each checkpoint (TPE, seed 42, 2 trials at a time, median pruning on the "
        "first fold). Folds AP: the mean over 3 walk-forward folds inside the training window, what the "
        "study maximises. Validation and test AP: the parameters fitted as a run fits its candidate, "
        "scored on the run's validation window and its test window (known compromised cards left out).",
    )
    timing = results_table(
        f"Wall time of {dask_trials} trials: local threads vs a {workers}-worker Dask LocalCluster",
        ["executor", {"name": "wall s", "format": ".1f"}],
        [["local (2 threads)", local_seconds], [f"dask ({workers} process workers)", dask_seconds]],
        method="Each a new study on the same folds; Dask's time includes starting the cluster and sending "
        "the folds to each worker once.",
    )
    return {"quality": quality, "timing": timing}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(HANDBOOK), help="fraud transactions (default: the handbook)")
    parser.add_argument(
        "--checkpoints",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        default=CHECKPOINTS,
        help="trials at which the study's best is scored, comma-separated (default: 20,50,100)",
    )
    parser.add_argument(
        "--timing-trials",
        type=int,
        default=None,
        help="trials timed local vs Dask (default: the first checkpoint)",
    )
    add_arguments(parser, "tuning")
    args = parser.parse_args(argv)
    out = output_path(args, "tuning")
    home = Path(tempfile.mkdtemp(prefix="mlops-bench-tuning-"))
    os.environ["MLOPS_HOME"] = str(home / "mlops")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    data = str(smoke_fraud_data(home)) if args.smoke else args.data
    if args.smoke:  # one process worker proves the path (each imports the stack)
        os.environ["MLOPS_DASK_WORKERS"] = "1"  # tasks/dask/cluster.py: ENV_WORKERS
    checkpoints = SMOKE_CHECKPOINTS if args.smoke else args.checkpoints
    timing = 1 if args.smoke else args.timing_trials or checkpoints[0]
    tables = run(data, checkpoints, timing)
    options = [f"--checkpoints {','.join(map(str, checkpoints))}", f"--timing-trials {timing}"]
    command = " ".join(["uv run python bench/tuning.py", *(["--smoke"] if args.smoke else options)])
    doc = document("tuning", command, tables, smoke=args.smoke)
    write(out, doc)
    return doc


if __name__ == "__main__":
    main()
