"""Lineage for continual learning: the model a run starts from, and the windows earlier versions were tested
and trained on.

`--init champion|models:/NAME/VERSION|models:/NAME@ALIAS` resolves to one registry version, loaded from its
artifacts: the booster in XGBoost's UBJ format and, for a pyfunc version, its JSON config (features, target
transform, base margin) — never a pickle. Its feature list must be this run's (`ParentMismatchError`
otherwise: bad input, exit 2), and its training parameters come from the version's logged model, since a
booster cut back to its best round no longer carries them (a refresh with XGBoost's default eta of 0.3
would scale every refitted leaf wrongly).

Windows live on versions as tags: `lineage.windows` (this version's train/validation/test bounds) and
`lineage.trained_on` (every training window behind its trees, its parents' included).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import Model

from champion.loading import ModelNotFoundError, resolve_version
from champion.store import run_logger
from tasks.stage import stage
from usecases.vocabulary import CHAMPION, TRAINED_ON_TAG, WINDOWS_TAG


class ParentMismatchError(ValueError):
    """The model to start from cannot be continued on this run's data (other features)."""


@dataclass(frozen=True)
class Parent:
    """A registry version to fine-tune, loaded: booster, config and what it was trained with."""

    uri: str  # models:/NAME/VERSION, the resolved version
    requested: str  # what --init said
    mode: Literal["continue", "refresh"]
    booster: object  # xgb.Booster
    features: tuple[str, ...]
    # {"features", "target_transform", "offset"} as in tasks/pyfunc_model.py; identity/None for xgboost.
    config: dict
    # The parent's own training parameters (eta, max_delta_step, ...), as logged with its model.
    params: dict = field(default_factory=dict)
    update_rounds: int | None = None
    windows: dict = field(default_factory=dict)
    trained_on: tuple[tuple[str, str], ...] = ()

    @property
    def trees(self) -> int:
        return int(self.booster.num_boosted_rounds())


def parse_windows(text: str | None) -> dict[str, tuple[str, str]]:
    """`lineage.windows` ("{'train': ('2018-06-13', '2018-07-03'), ...}") as a dict; {} if unreadable."""
    if not text:
        return {}
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {}
    return {k: (str(v[0]), str(v[1])) for k, v in value.items()} if isinstance(value, dict) else {}


def parse_ranges(text: str | None) -> tuple[tuple[str, str], ...]:
    """`lineage.trained_on` ("2018-06-13..2018-07-03;...") as ((lo, hi), ...)."""
    return tuple(tuple(part.split("..", 1)) for part in (text or "").split(";") if ".." in part)


def format_ranges(ranges) -> str:
    return ";".join(f"{lo}..{hi}" for lo, hi in dict.fromkeys(tuple(r) for r in ranges))


def trained_on(tags: dict) -> tuple[tuple[str, str], ...]:
    """Every training window behind a version's trees: its `lineage.trained_on`, else its own train window."""
    ranges = parse_ranges(tags.get(TRAINED_ON_TAG))
    if ranges:
        return ranges
    train = parse_windows(tags.get(WINDOWS_TAG)).get("train")
    return (train,) if train else ()


def _version(registered_model: str, init: str):
    """The registry version `init` names; None for `champion` when there is none."""
    if init == "champion":
        try:
            return resolve_version(registered_model, alias=CHAMPION)
        except ModelNotFoundError:
            return None
    name, _, rest = init.removeprefix("models:/").partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        return resolve_version(name, alias=alias)
    return resolve_version(name, version=rest)


def _logged_params(client, version) -> dict:
    """The parent's training parameters: its logged model's params, else its run's `model.*` params."""
    source = str(version.source or "")
    model_id = getattr(version, "model_id", None) or (
        source.removeprefix("models:/") if source.startswith("models:/m-") else None
    )
    if model_id:
        try:
            return dict(client.get_logged_model(model_id).params)
        except Exception:  # an older store without logged models: the run's params below
            pass
    try:
        recorded = client.get_run(version.run_id).data.params
    except Exception:
        return {}
    return {k.removeprefix("model."): v for k, v in recorded.items() if k.startswith("model.")}


@stage
def resolve_parent(
    init: str,
    registered_model: str,
    features: tuple[str, ...],
    mode: Literal["continue", "refresh"] = "continue",
    update_rounds: int | None = None,
) -> Parent | None:
    """Load the version to start from (None: scratch, or `champion` when there is no champion yet)."""
    import xgboost as xgb  # lazy: only to load a parent; the monitoring flow imports this module without it

    log = run_logger()
    if init == "scratch":
        return None
    version = _version(registered_model, init)
    if version is None:
        log.warning("--init champion: %s has no champion yet, training from scratch", registered_model)
        return None
    uri = f"models:/{version.name}/{version.version}"
    local = Path(mlflow.artifacts.download_artifacts(uri))
    ubj = sorted(local.rglob("*.ubj"))
    if not ubj:
        raise ParentMismatchError(f"{uri} holds no XGBoost UBJ booster: cannot be continued")
    booster = xgb.Booster()
    booster.load_model(str(ubj[0]))
    # Attributes of the parent's own early stopping would confuse this run's.
    booster.set_attr(best_iteration=None, best_score=None)
    configs = [p for p in local.rglob("config.json") if p.parent.name == "artifacts"] or list(
        local.rglob("config.json")
    )
    config = json.loads(configs[0].read_text()) if configs and len(ubj) == 1 and _is_pyfunc(local) else {}
    parent_features = tuple(config.get("features") or booster.feature_names or ())
    if parent_features != tuple(features):
        missing = [f for f in features if f not in parent_features]
        extra = [f for f in parent_features if f not in features]
        raise ParentMismatchError(
            f"--init {init}: {uri} was trained on other features than this run's "
            f"({len(parent_features)} vs {len(features)}; missing there: {missing or '-'}; only there: "
            f"{extra or '-'}{'; same names, other order' if not missing and not extra else ''})"
        )
    config = {
        "features": list(parent_features),
        "target_transform": config.get("target_transform", "identity"),
        "offset": config.get("offset"),
    }
    tags = dict(version.tags)
    client = MlflowClient()
    parent = Parent(
        uri=uri,
        requested=init,
        mode=mode,
        booster=booster,
        features=parent_features,
        config=config,
        params=_logged_params(client, version),
        update_rounds=update_rounds,
        windows=parse_windows(tags.get(WINDOWS_TAG)),
        trained_on=trained_on(tags),
    )
    log.info(
        "starting from %s (%d trees, %s; trained on %s): %s",
        uri,
        parent.trees,
        "pyfunc: its offset and transform kept"
        if config["offset"] or config["target_transform"] != "identity"
        else "xgboost",
        format_ranges(parent.trained_on) or "unknown windows",
        mode,
    )
    return parent


def _is_pyfunc(local: Path) -> bool:
    return "xgboost" not in Model.load(str(local)).flavors


def in_ranges(times: pd.Series, ranges) -> pd.Series:
    """Rows whose day (or time step) falls inside any of the (lo, hi) ranges, inclusive."""
    keys = pd.to_datetime(times).dt.normalize()  # windows are recorded as dates, whatever the unit
    inside = pd.Series(False, index=times.index)
    for lo, hi in ranges:
        inside |= (keys >= pd.Timestamp(lo)) & (keys <= pd.Timestamp(hi))
    return inside
