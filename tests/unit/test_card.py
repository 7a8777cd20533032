"""The version record: its few tags and the markdown card's parts (tasks/card.py)."""

from pathlib import Path

from tasks.card import gates_summary, metrics_table, version_tags
from tasks.gate import GateResult, GateVerdict
from usecases.vocabulary import refused_gates


def _verdict(*passed: bool) -> GateVerdict:
    kinds = ("absolute", "baseline", "champion")
    return GateVerdict(
        tuple(
            GateResult(f"{kind}.ap", kind, "ap", 0.5, float("nan") if kind == "champion" else 0.3, ok, "why")
            for kind, ok in zip(kinds, passed, strict=True)
        )
    )


def test_the_gates_tag_is_one_line_that_names_what_refused():
    assert gates_summary(_verdict(True, True, True)) == "passed 3/3"
    assert gates_summary(_verdict(True, False, False)) == "refused 2/3: baseline.ap, champion.ap"
    assert refused_gates({"gates": "refused 2/3: baseline.ap, champion.ap"}) == ["baseline.ap", "champion.ap"]
    assert refused_gates({"gates": "passed 3/3"}) == []
    # versions registered before the summary tag carry one tag per gate
    assert refused_gates({"gate.absolute.ap": "passed: x", "gate.champion": "refused: y"}) == ["champion"]
    assert refused_gates({"use_case": "fraud"}) is None


def test_version_tags_keep_lineage_and_leave_the_rest_to_the_card():
    record = {
        "use_case": "fraud",
        "lineage.run_id": "r1",
        "lineage.data_digest": "d",
        "lineage.data_source": "/data/x.parquet",
        "lineage.code_version": "c",
        "lineage.windows": "{}",
        "lineage.trained_on": "a..b",
        "lineage.fingerprint": "f",
        "lineage.init": "scratch",
        "validation.raw": "passed 3/3 expectations (raw)",
        "test_ap": "0.5",
    }
    tags = version_tags(record, _verdict(True, True, True), "ap")
    assert set(tags) == {
        "use_case",
        "lineage.data_digest",
        "lineage.code_version",
        "lineage.windows",
        "lineage.trained_on",
        "lineage.fingerprint",
        "test_ap",
        "gates",
    }


def test_metrics_table_gives_counts_as_integers_and_missing_values_as_a_dash():
    table = metrics_table(
        {"candidate": {"ap": 0.71234, "tn": 7164.0}, "champion v1": {"ap": float("nan"), "tn": 7000.0}},
        ["ap", "tn"],
    ).splitlines()
    assert table[0] == "| metric | candidate | champion v1 |"
    assert table[2] == "| ap | 0.7123 | - |"
    assert table[3] == "| tn | 7,164 | 7,000 |"


def test_a_card_longer_than_the_registry_holds_goes_whole_to_the_run(mlops_home):
    """A database registry keeps at most 5,000 characters of a version's description: a longer card is
    logged whole as `model_card.md` and the description says where it is (a short one is left as it is)."""
    import mlflow
    from conftest import registry_client

    from tasks.register import MAX_DESCRIPTION, fitted_card

    client = registry_client(mlops_home)
    with mlflow.start_run() as run:
        pass
    long_card = "# card\n" + "a line of the card\n" * 400
    fitted = fitted_card(client, long_card, run.info.run_id)
    assert len(long_card) > MAX_DESCRIPTION >= len(fitted) and fitted.startswith("# card\n")
    assert f"`model_card.md` of run {run.info.run_id}" in fitted
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model_card.md")
    assert Path(path).read_text() == long_card
    assert fitted_card(client, "# short", run.info.run_id) == "# short"
