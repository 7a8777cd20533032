"""The study: where it is stored, how it samples and prunes, and how one trial runs against it.

Storage is the store the project already uses, so a study outlives the process that started it (`--study
NAME` continues it after a crash or a stop) and processes on other machines can add trials to it:
MLOPS_STUDY_STORAGE (an SQLAlchemy URL) when set; else the tracking store's Postgres database when MLflow's
tracking URI is one (server mode), in a schema of its own (`optuna`: Optuna and MLflow each keep an
`alembic_version` table); else `optuna.db` beside MLflow's SQLite file under MLOPS_HOME.

A running trial beats a heartbeat into the storage; a trial whose process died (SIGKILL, a lost machine) is
failed by the next trial that starts after MLOPS_STUDY_GRACE seconds without one, and its parameters are
queued again once. The sampler is TPE with the run's seed (shifted by the trials already in the study, so a
resumed study does not sample its first trials again), with the constant liar for trials running at once.
"""

from __future__ import annotations

import fcntl
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from champion import store
from tasks.tuning import TuningError

STORAGE_ENV = "MLOPS_STUDY_STORAGE"
GRACE_ENV = "MLOPS_STUDY_GRACE"  # seconds without a heartbeat before a running trial counts as dead
SCHEMA = "optuna"
# Heartbeats, the retry of dead trials and the matplotlib plots are "experimental" in Optuna 5: said once per
# use, they would drown the progress lines; Optuna's own line per trial repeats ours.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)
# Study attributes: what a study was tuned on (a run continuing it must match) and what it found.
FOLDS_ATTR, DEFAULTS_ATTR, USE_CASE_ATTR, METRIC_ATTR = "folds", "defaults_value", "use_case", "metric"


def storage_url() -> str:
    """Where studies live (see the module docstring)."""
    explicit = os.environ.get(STORAGE_ENV, "").strip()
    if explicit:
        return explicit
    tracking = store.tracking_uri()
    if _is_postgres(tracking):
        return tracking
    return f"sqlite:///{store.mlops_home() / 'optuna.db'}"


def _is_postgres(url: str) -> bool:
    return urlparse(url).scheme.split("+")[0] in ("postgresql", "postgres")


def open_storage(url: str | None = None) -> RDBStorage:
    """The study storage, its tables created once (under a file lock for SQLite: two first runs at once
    would both create them)."""
    url = url or storage_url()
    grace = max(int(float(os.environ.get(GRACE_ENV, "30"))), 2)
    with warnings.catch_warnings():  # "experimental" heartbeats, said on every storage opened
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        options: dict = {
            "heartbeat_interval": max(grace // 3, 1),
            "grace_period": grace,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1),
        }
        return _rdb_storage(url, options)


def _rdb_storage(url: str, options: dict) -> RDBStorage:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # SQLite: writers queue for the file rather than fail at once (trials of several processes).
        engine = {"connect_args": {"timeout": 60}}
        with open(path.parent / f"{path.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return RDBStorage(url, engine_kwargs=engine, **options)
    if _is_postgres(url):
        _ensure_schema(url)
        engine = {"connect_args": {"options": f"-csearch_path={SCHEMA}"}, "pool_pre_ping": True}
        return RDBStorage(url, engine_kwargs=engine, **options)
    return RDBStorage(url, **options)


def _ensure_schema(url: str) -> None:
    import sqlalchemy  # why: Postgres storage only

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    finally:
        engine.dispose()


def study_names(storage: RDBStorage) -> list[str]:
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


def load(name: str, storage: RDBStorage, seed: int = 42, warmup: int = 0) -> optuna.Study:
    """An existing study with the sampler and pruner of this run; `TuningError` names the known ones."""
    if name not in study_names(storage):
        known = ", ".join(study_names(storage)) or "none"
        raise TuningError(f"unknown study {name!r} in {_where(storage)} (studies there: {known})")
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler(seed), pruner=pruner(warmup))


def create_or_continue(
    name: str, storage: RDBStorage, maximize: bool, attrs: dict, seed: int, warmup: int
) -> tuple[optuna.Study, bool]:
    """The study `name`, created with `attrs` or continued; a continued one must have been tuned for the
    same use case, metric and folds (`TuningError` says what differs). Returns it and whether it is new."""
    existing = name in study_names(storage)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize" if maximize else "minimize",
        load_if_exists=True,
        sampler=sampler(seed),
        pruner=pruner(warmup),
    )
    if existing:
        for key, value in attrs.items():
            found = study.user_attrs.get(key)
            if found != value:
                raise TuningError(
                    f"study {name!r} was tuned with {key} {found!r}; this run has {value!r}. "
                    "Give another --study name (or the same data and windows)."
                )
    else:
        for key, value in attrs.items():
            study.set_user_attr(key, value)
    return study, not existing


def sampler(seed: int, shift: int = 0) -> optuna.samplers.TPESampler:
    return optuna.samplers.TPESampler(seed=seed + shift, constant_liar=True)


def pruner(warmup: int) -> optuna.pruners.MedianPruner:
    """Stop a trial whose first fold is below the median of earlier trials at the same round, after 5
    finished trials and `warmup` rounds."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)


def _where(storage: RDBStorage) -> str:
    url = storage.url if hasattr(storage, "url") else storage_url()
    parsed = urlparse(url)
    return url if parsed.scheme.startswith("sqlite") else f"{parsed.scheme}://{parsed.hostname}{parsed.path}"


@dataclass(frozen=True)
class TrialResult:
    """What a trial did, for the progress line and its MLflow child run."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None
    params: dict
    seconds: float
    started: float  # epoch seconds
    note: str = ""  # why it was pruned or failed
    fold_values: tuple[float, ...] = ()
    fold_rounds: tuple[int, ...] = ()


def run_one(study: optuna.Study, objective, seed: int) -> TrialResult:
    """One trial through `study.optimize` (which beats the heartbeat and fails dead trials first):
    `objective(trial)` returns a `tasks.tuning.objective.Scored`. The sampler's seed moves with the study's
    length, so a continued study or a second process does not draw the first trials again, while one process
    alone draws the same sequence every time."""
    study.sampler = sampler(seed, shift=len(study.get_trials(deepcopy=False)))
    scored: dict = {}
    finished: list = []
    failure: list[str] = []
    started = time.time()

    def measured(trial):
        try:
            result = objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            failure.append(f"{type(exc).__name__}: {exc}")
            raise
        scored[trial.number] = result
        return result.value

    study.optimize(
        measured,
        n_trials=1,
        catch=(Exception,),
        callbacks=[lambda _, trial: finished.append(trial)],
        gc_after_trial=False,
    )
    trial = finished[-1]
    return _result(trial, scored.get(trial.number), started, failure[0] if failure else "")


def _result(trial: optuna.trial.FrozenTrial, scored, started: float, failure: str) -> TrialResult:
    state = trial.state.name
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else time.time() - started
    )
    note = failure
    if state == "PRUNED":
        steps = trial.intermediate_values
        last = max(steps) if steps else 0
        value = steps.get(last, float("nan"))
        note = f"pruned at round {last} of fold 1: {value:.4g}, worse than the median of earlier trials there"
    return TrialResult(
        number=trial.number,
        state=state,
        value=trial.value if state == "COMPLETE" else None,
        params=dict(trial.params),
        seconds=seconds,
        started=started,
        note=note,
        fold_values=scored.fold_values if scored else (),
        fold_rounds=scored.fold_rounds if scored else (),
    )
