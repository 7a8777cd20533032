"""`mlops compact` end to end: a small fraud champion is trained through the CLI, then compacted into
`fraud-detector-compact@champion`; a candidate held to more than the teacher can give is refused with the
registry untouched; the compact model loads with MLflow alone and scores through `mlops score --model`."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_FRAUD_RUN
from conftest import registry_client as client

from cli.main import app
from usecases.fraud.features import build_features
from usecases.fraud.simulator import simulate_transactions

TEACHER, COMPACT = "fraud-detector", "fraud-detector-compact"
DELAY_DAYS = 3  # not the default: scoring the compact model must read the teacher's feature parameters
# A small plan keeps the test quick (the defaults run in bench/compact.py). A week of a small simulation
# holds a few dozen frauds, so its AP moves by more than 2 % between models as good as each other: this test
# is about registration, promotion and loading, and holds candidates to 80 % of the teacher.
PLAN = ("--students", "2x30,3x30", "--cuts", "0.5", "--prune-depths", "3")
LENIENT = ("--min-ratio", "0.8")

pytestmark = [
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]


def mlops(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = app(list(args), standalone_mode=False)
    return code or 0, capsys.readouterr().out


def registry_state(home: Path) -> dict:
    c = client(home)
    state = {}
    for model in c.search_registered_models():
        versions = c.search_model_versions(f"name = '{model.name}'")
        state[model.name] = {
            "versions": sorted(str(v.version) for v in versions),
            "aliases": {k: str(v) for k, v in dict(model.aliases).items()},
            "tags": {str(v.version): dict(v.tags) for v in versions},
        }
    return state


@pytest.fixture(scope="module")
def compacted(tmp_path_factory, registry_template):
    """A small fraud champion (the session's template of SMALL_FRAUD_RUN with a 3-day label delay, copied),
    then `mlops compact fraud` on it; MLOPS_HOME points at it for the module."""
    from stores import copy_home

    template = registry_template(*SMALL_FRAUD_RUN, "--delay-days", str(DELAY_DAYS))
    home = copy_home(template, tmp_path_factory.mktemp("compact") / "mlops")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(home))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        code = app(["compact", "fraud", *PLAN, *LENIENT], standalone_mode=False)
        yield home, code or 0
    mlflow.set_tracking_uri(None)


@pytest.fixture
def home(compacted, monkeypatch):
    path, _ = compacted
    monkeypatch.setenv("MLOPS_HOME", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{path / 'mlflow.db'}")
    return path


def test_compact_registers_the_compact_champion_with_lineage_and_card(compacted, home):
    assert compacted[1] == 0
    c = client(home)
    version = c.get_model_version_by_alias(COMPACT, "champion")
    teacher = c.get_model_version_by_alias(TEACHER, "champion")
    tags = version.tags
    assert tags["lineage.teacher"] == f"{TEACHER}/{teacher.version}"
    assert tags["lineage.teacher_run_id"] == teacher.run_id
    assert tags["lineage.data_digest"] == teacher.tags["lineage.data_digest"]
    assert tags["compact.method"] in ("distilled", "cut", "depth-pruned")
    assert tags["gates"].startswith("passed "), tags["gates"]
    assert float(tags["compact.size_kb"]) < float(c.get_run(version.run_id).data.metrics["teacher.size_kb"])
    # the model card: a table of the teacher and every candidate with size, latency and quality
    card = version.description
    assert "| model |" in card and "| teacher |" in card and "**chosen**" in card and "p50 us" in card

    run = c.get_run(version.run_id)
    assert run.data.tags["decision"] == "promoted"
    assert run.data.params["param.delay_days"] == str(DELAY_DAYS)  # the teacher's, for scoring
    report = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="compact_report.json")
        ).read_text()
    )
    chosen = [r for r in report["candidates"] if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["size_kb"] == min(
        r["size_kb"]
        for r in report["candidates"]
        if all(g["passed"] for g in r["gates"] if g["name"] != "teacher.champion")
    )

    # UBJ booster as the model of record, the compiled library beside it, nothing pickled
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{COMPACT}@champion"))
    assert (local / "model.ubj").exists() and not list(local.rglob("*.pkl"))
    platform = json.loads((local / "compiled" / "platform.json").read_text())
    assert platform["quantize"] == 1 and (local / "compiled" / platform["library"]).exists()
    assert platform["max_abs_margin_diff"] < 1e-5


def test_mlflow_alone_loads_and_predicts_with_the_compact_model(home, tmp_path):
    """In a fresh interpreter where none of the project's packages can be imported."""
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{COMPACT}@champion", dst_path=str(tmp_path)))
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("tasks", "flows", "champion", "cli", "usecases", "serving", "infra", "data_checks"):
            sys.modules[name] = None  # the project is not installed here
        import mlflow, numpy as np, pandas as pd
        model = mlflow.pyfunc.load_model({str(local)!r})
        scores = np.asarray(model.predict(pd.DataFrame(model.input_example))).ravel()
        assert ((scores >= 0) & (scores <= 1)).all(), scores
        print("ok", len(scores))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]


def test_score_with_the_compact_model(home, tmp_path, capsys):
    raw = simulate_transactions(n_customers=300, n_terminals=600, n_days=45, seed=11)
    source, out = tmp_path / "transactions.parquet", tmp_path / "scores.parquet"
    raw.to_parquet(source)
    code, output = mlops(capsys, "score", "fraud", "--model", COMPACT, "-i", str(source), "-o", str(out))
    assert code == 0, output
    scores = pd.read_parquet(out)
    version = client(home).get_model_version_by_alias(COMPACT, "champion").version
    assert (scores.model_version == str(version)).all()
    model = mlflow.pyfunc.load_model(f"models:/{COMPACT}/{version}")
    columns = [c.name for c in model.metadata.get_input_schema().inputs]
    features = build_features(raw, delay_days=DELAY_DAYS)  # the teacher's delay, not the default
    reference = pd.Series(np.asarray(model.predict(features[columns])).ravel(), index=features.TRANSACTION_ID)
    np.testing.assert_allclose(scores.fraud_score, reference.loc[scores.TRANSACTION_ID], rtol=0, atol=1e-6)


def test_a_candidate_that_loses_too_much_is_refused_and_nothing_moves(home, capsys):
    before = registry_state(home)
    code, output = mlops(capsys, "compact", "fraud", *PLAN, "--min-ratio", "1.5")
    assert code == 3, output
    assert "refused" in output and "min ratio 1.5" in output
    assert registry_state(home) == before
    c = client(home)
    runs = c.search_runs(
        [c.get_experiment_by_name("fraud-compaction").experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert (
        runs[0].data.tags["decision"] == "refused"
        and "nothing registered" in runs[0].data.tags["decision.summary"]
    )


def test_unknown_teacher_version_exits_2(home, capsys):
    before = registry_state(home)
    code, output = mlops(capsys, "compact", "fraud", "--version", "99")
    assert code == 2 and "no version 99" in output
    assert registry_state(home) == before
