"""Train on the Dask executor: the candidate with `xgboost.dask`, on the windows the workers hold.

`DaskQuantileDMatrix` quantises the training and validation windows as the workers read them, and
`xgb.dask.train` runs the spec's parameters, seed and early stopping on validation; the booster is cut back to
its best iteration like the local candidate (`tasks.candidate.Candidate`). Baselines are not here: they are
`tasks.train.train_baselines`, each a task run sent to a worker (`executor.DaskStages.train_baselines`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from champion.store import run_logger
from tasks.candidate import OBJECTIVES, Candidate
from tasks.stage import stage

if TYPE_CHECKING:
    from tasks.dask.split import DistributedWindows
    from tasks.split import Splits
    from usecases.spec import UseCaseSpec


@stage
def train_distributed(splits: Splits, windows: DistributedWindows, spec: UseCaseSpec, seed: int, client):
    """The candidate with `xgboost.dask`: the spec's parameters, seed and early stopping on validation; cut
    back to its best iteration like the local candidate."""
    # why: Dask loads only when a run uses it
    import xgboost as xgb
    import xgboost.dask  # noqa: F401  (explicitly: the Dask interface is a submodule)

    log = run_logger()
    model, features, target = spec.model, list(spec.features), spec.target
    # Each worker trains with its own threads (nthread in the spec is sized for one process).
    params = {k: v for k, v in model.params.items() if k != "nthread"}
    full_params = {"tree_method": "hist", "seed": seed, **OBJECTIVES[spec.problem], **params}
    if spec.problem == "binary" and model.balance_classes:
        positives = max(windows.positives["train"], 1)
        full_params.setdefault("scale_pos_weight", (windows.rows["train"] - positives) / positives)
    train, validation = windows.train, windows.validation
    log.info(
        "training XGBoost on the workers (xgboost.dask): %s rows in %d partitions, %d features",
        f"{windows.rows['train']:,}",
        train.npartitions,
        len(features),
    )
    with client.as_current():
        # Quantised as they are read (the hist method's bins): no float copy of the workers' share beside it.
        dtrain = xgb.dask.DaskQuantileDMatrix(client, train[features], train[target])
        dval = xgb.dask.DaskQuantileDMatrix(client, validation[features], validation[target], ref=dtrain)
        output = xgb.dask.train(
            client,
            full_params,
            dtrain,
            num_boost_round=model.num_boost_round,
            evals=[(dval, "validation")],
            early_stopping_rounds=model.early_stopping_rounds,
            verbose_eval=False,
        )
    booster = output["booster"]
    rounds, best = booster.num_boosted_rounds(), booster.best_iteration
    score = float(booster.best_score)
    booster = booster[: best + 1]
    log.info("best iteration %d of %d trained", best, rounds)
    lo, hi = splits.windows["train"]
    return Candidate(
        booster,
        tuple(features),
        full_params,
        best,
        rounds,
        validation_score=score,
        trained_on=((str(lo), str(hi)),),
    )
