"""The `challenger` alias (champion/challenger.py): set, replace, retire and promote it under the champion
lock, with its history; refusals that move nothing; the training flow's automatic challenger
(tasks/promote.py); `mlops challenge` and `mlops status`. Versions are registered directly with the tags the
pipeline writes, in a SQLite MLflow store of each test's own (no model is trained: nothing here loads one)."""

from __future__ import annotations

import itertools
import math

import pytest
import typer
from mlflow import MlflowClient
from typer.testing import CliRunner

from champion.challenger import (
    ChallengerRefused,
    current_challenger,
    promote_challenger,
    retire_challenger,
    set_challenger,
)
from champion.promotion import StaleChampionError, current_champion, promote, read_history
from usecases.vocabulary import (
    CHALLENGER_HISTORY_PREFIX,
    CHALLENGER_TAG,
    FINGERPRINT_TAG,
    GATES_TAG,
    PROMOTION_TAG,
)

GATED = {GATES_TAG: "refused 1/6: champion", FINGERPRINT_TAG: "fp", "use_case": "fraud"}
NAMES = itertools.count(1)


@pytest.fixture(scope="module")
def store_run(tmp_path_factory):
    """One SQLite store for the module (creating its schema takes seconds) and a run to register from."""
    import mlflow

    from champion import store

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(tmp_path_factory.mktemp("challenger") / "mlops"))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        store.configure()
        yield MlflowClient().create_run(store.experiment_id("challenger-unit"))
    mlflow.set_tracking_uri(None)


@pytest.fixture
def registry(store_run):
    """A registered model of this test's own with versions 1 to 4: v1 champion, v2 and v3 passed their
    registration gates (the champion gate refused them), v4 failed its baseline gate."""
    client, run_id = MlflowClient(), store_run.info.run_id
    name = f"challenger-unit-{next(NAMES)}"
    client.create_registered_model(name, description="a test model")
    for number in range(1, 5):
        tags = {**GATED, FINGERPRINT_TAG: f"fp-{number}"}
        if number == 1:
            tags[GATES_TAG] = "passed 6/6"
        if number == 4:
            tags[GATES_TAG] = "refused 2/6: baseline.average_precision.prior, champion"
        source = f"{store_run.info.artifact_uri}/model-{number}"
        client.create_model_version(name, source, run_id=run_id, tags=tags, await_creation_for=0)
    promote(name, "1", compared_with=None, run_id="run-1")
    return client, run_id, name


def history(client, name) -> list[tuple[str, str, str]]:
    entries = read_history(client, name, CHALLENGER_HISTORY_PREFIX)
    return [(e["action"], e["previous"], e["version"]) for e in entries]


def test_set_replace_and_retire_are_recorded_on_the_versions_and_in_the_history(registry):
    client, _, name = registry
    first = set_challenger(name, "2", "try it live", by="alice")
    assert (first.version, first.previous) == ("2", None)
    assert current_challenger(client, name) == "2" and current_champion(client, name) == "1"
    assert client.get_model_version(name, "2").tags[CHALLENGER_TAG] == f"since {first.at}: try it live"

    again = set_challenger(name, "2", "once more", by="alice")  # already: nothing moves, nothing recorded
    assert again.previous == again.version == "2" and len(history(client, name)) == 1

    second = set_challenger(name, 3, "a better one", by="bob")
    assert (second.version, second.previous) == ("3", "2")
    assert client.get_model_version(name, "2").tags[CHALLENGER_TAG] == f"retired {second.at}: replaced by v3"
    assert client.get_model_version(name, "3").tags[CHALLENGER_TAG].endswith(": a better one")

    with pytest.raises(ChallengerRefused, match="is v3, not v2"):
        retire_challenger(name, "worse", expected="2")  # a decision about v2 does not retire v3
    assert current_challenger(client, name) == "3"
    assert retire_challenger(name, "worse on live pairs", by="carol", expected="3") == "3"
    assert current_challenger(client, name) is None and current_champion(client, name) == "1"
    assert client.get_model_version(name, "3").tags[CHALLENGER_TAG].startswith("retired ")
    assert retire_challenger(name, "again") is None  # nothing to retire

    assert history(client, name) == [("set", "", "2"), ("set", "2", "3"), ("retired", "3", "")]
    entries = read_history(client, name, CHALLENGER_HISTORY_PREFIX)
    assert [e["by"] for e in entries] == ["alice", "bob", "carol"]
    assert entries[-1]["reason"] == "worse on live pairs"
    assert [e["version"] for e in read_history(client, name)] == ["1"]  # the champion's history untouched
    description = client.get_registered_model(name).description
    champion_table, challenger_table = description.split("## Champion history")[1].split(
        "## Challenger history"
    )
    assert description.startswith("a test model\n\n## Champion history") and "| v1 | none |" in champion_table
    assert (
        "| 3 |" in challenger_table
        and "| retired | none | v3 | carol | worse on live pairs |" in challenger_table
    )


def test_refused_versions_move_nothing(registry):
    client, _, name = registry
    set_challenger(name, "2", "in shadow")
    for version, message in (
        ("42", "has no version 42"),
        ("4", "refused by gate baseline.average_precision.prior"),
        ("1", "@champion: a challenger must be another version"),
    ):
        with pytest.raises(ChallengerRefused, match=message):
            set_challenger(name, version, "no")
    assert current_challenger(client, name) == "2" and current_champion(client, name) == "1"
    assert history(client, name) == [("set", "", "2")]


def test_a_version_the_pipeline_never_registered_is_refused(registry):
    client, run_id, name = registry
    created = client.create_model_version(name, "file:///elsewhere", run_id=run_id, await_creation_for=0)
    with pytest.raises(ChallengerRefused, match="not registered by the gated pipeline"):
        set_challenger(name, created.version, "no")
    assert current_challenger(client, name) is None and history(client, name) == []


def test_promotion_moves_champion_by_compare_and_set_and_closes_the_challenger(registry):
    client, _, name = registry
    set_challenger(name, "2", "held back by champion")
    with pytest.raises(StaleChampionError, match="compared against v3"):
        promote_challenger(name, "2", champion_was="3", evidence="ap +8%", run_id="cmp-0")
    with pytest.raises(ChallengerRefused, match="is v2, not v3"):
        promote_challenger(name, "3", champion_was="1", evidence="ap +8%", run_id="cmp-0")
    assert current_champion(client, name) == "1" and current_challenger(client, name) == "2"  # nothing moved
    assert len(read_history(client, name)) == 1 and history(client, name) == [("set", "", "2")]

    done = promote_challenger(name, "2", champion_was="1", evidence="ap +8% on 4,000 pairs", run_id="cmp-1")
    assert (done.version, done.previous, done.moved) == ("2", "1", True)
    assert current_champion(client, name) == "2" and current_challenger(client, name) is None
    tags = client.get_model_version(name, "2").tags
    assert tags["previous_champion"] == "1" and tags["promoted_by_run"] == "cmp-1"
    assert "on live evidence" in tags[PROMOTION_TAG]
    assert tags[CHALLENGER_TAG].startswith("promoted ") and tags[CHALLENGER_TAG].endswith("4,000 pairs")
    (*_, moved) = read_history(client, name)
    assert (moved["action"], moved["previous"], moved["version"]) == ("promoted on live evidence", "1", "2")
    assert history(client, name) == [("set", "", "2"), ("promoted", "2", "")]

    retried = promote_challenger(name, "2", champion_was="1", evidence="ap +8%", run_id="cmp-1")
    assert (retried.previous, retried.moved) == ("1", True)  # the move that landed, not a second one
    assert len(read_history(client, name)) == 2 and len(history(client, name)) == 2


def test_an_alias_write_that_fails_takes_the_record_back(registry, monkeypatch):
    client, _, name = registry
    set_challenger(name, "2", "first")

    def refused(self, name, alias, version):
        raise ConnectionError("the server went away")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refused)
    with pytest.raises(ConnectionError):
        set_challenger(name, "3", "second")
    assert current_challenger(client, name) == "2" and history(client, name) == [("set", "", "2")]
    assert client.get_model_version(name, "2").tags[CHALLENGER_TAG].startswith("since ")
    assert CHALLENGER_TAG not in client.get_model_version(name, "3").tags


def test_a_move_its_process_never_finished_is_taken_back_by_the_next(registry):
    from champion.promotion import append_history

    client, _, name = registry
    append_history(client, name, {"action": "set", "version": "3", "previous": ""}, CHALLENGER_HISTORY_PREFIX)
    set_challenger(name, "2", "after a crash")
    assert history(client, name) == [("set", "", "2")]


def test_status_shows_the_challenger(registry):
    from champion.lifecycle import model_status

    client, _, name = registry
    assert model_status(name)["challenger"] is None
    move = set_challenger(name, "3", "held back by champion: ap 0.61 not >= 0.63", by="run abc")
    challenger = model_status(name)["challenger"]
    assert (challenger["version"], challenger["since"], challenger["by"]) == ("3", move.at, "run abc")
    assert challenger["reason"] == "held back by champion: ap 0.61 not >= 0.63"


def _verdict(*refused: tuple[str, bool]):
    from tasks.gate import GateResult, GateVerdict

    passed = GateResult("absolute.average_precision", "absolute", "ap", 0.6, 0.3, True, "ok")
    results = [passed] + [
        GateResult(name, "champion", "ap", 0.5, math.nan, False, f"{name} said no", needs_approval=ask)
        for name, ask in refused
    ]
    return GateVerdict(tuple(results))


@pytest.mark.parametrize(
    "refused, held",
    [
        ((("champion", False),), True),
        ((("champion", False), ("forgetting.average_precision", False)), True),
        ((("forgetting.average_precision", False),), True),
        ((("champion", False), ("slice.terminal", False)), False),  # a slice refused: not worth shadowing
        ((("champion.rolled_back", False),), False),  # a person rolled it back
        ((), False),  # promotable: nothing held back
    ],
)
def test_only_champion_and_forgetting_refusals_hold_a_candidate(refused, held):
    from tasks.promote import held_back

    assert bool(held_back(_verdict(*refused))) is held


def test_the_flow_makes_a_held_back_candidate_challenger_and_says_so_on_the_run(registry):
    from tasks.promote import hold_as_challenger

    client, run_id, name = registry
    said = hold_as_challenger(name, "2", _verdict(("champion", False)), run_id)
    assert current_challenger(client, name) == "2" and said.startswith(f"v2 is {name}@challenger")
    assert client.get_run(run_id).data.tags[CHALLENGER_TAG] == said
    entry = read_history(client, name, CHALLENGER_HISTORY_PREFIX)[-1]
    assert entry["reason"] == "held back by champion: champion said no" and entry["by"] == f"run {run_id}"

    # refused (the champion itself) or failing: the run goes on, the run says why
    said = hold_as_challenger(name, "1", _verdict(("champion", False)), run_id)
    assert said.startswith("not made challenger") and current_challenger(client, name) == "2"
    assert hold_as_challenger(name, "3", _verdict(("slice.terminal", False)), run_id) is None
    # judged on live traffic and retired: an identical rerun does not hold it again
    retire_challenger(name, "worse on live pairs", expected="2")
    said = hold_as_challenger(name, "2", _verdict(("champion", False)), run_id)
    assert (
        "was retired" in said and "worse on live pairs" in said and current_challenger(client, name) is None
    )


# --------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli():
    from cli import challenge, models

    app = typer.Typer()
    challenge.register_commands(app)
    models.register_commands(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_mlops_challenge_sets_and_retires_and_status_shows_it(registry, cli):
    client, _, name = registry
    done = cli("challenge", "fraud", "--version", "2", "--reason", "try it", "--registered-model", name)
    assert done.exit_code == 0, done.output
    assert "v2 in shadow" in done.output and current_challenger(client, name) == "2"
    shown = cli("status", "--model", name)
    assert shown.exit_code == 0 and "challenger v2 since" in shown.output and "try it" in shown.output

    done = cli("challenge", "fraud", "--retire", "--reason", "enough", "--model", name)
    assert done.exit_code == 0 and "retired" in done.output, done.output
    assert current_challenger(client, name) is None
    assert "no challenger" in cli("status", "--model", name).output


BAD_INPUT = [
    (("fraud",), "--version N (set) or --retire"),
    (("fraud", "--version", "2", "--retire", "--reason", "x"), "one of them"),
    (("fraud", "--retire"), "--retire needs --reason"),
    (("fraud", "--retire", "--reason", "  "), "--retire needs --reason"),
    (("fraud", "--version", "two"), "must be a version number"),
    (("fraud", "--version", "9"), "has no version 9"),
    (("fraud", "--version", "4"), "refused by gate baseline"),
    (("fraud", "--version", "1"), "@champion: a challenger must be another version"),
    (("fraud", "--retire", "--reason", "x"), "nothing to retire"),
    (("nofraud", "--version", "2"), "unknown use case"),
]


def test_mlops_challenge_refuses_bad_input_with_exit_2_and_moves_nothing(registry, cli):
    client, _, name = registry
    for args, message in BAD_INPUT:
        result = cli("challenge", *args, "--model", name)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
    assert current_challenger(client, name) is None and current_champion(client, name) == "1"
    assert history(client, name) == []
