"""The comparison as a flow (flows/challenger.py) on a Prefect test server: the deployment's form flow with
`decide` off reports and moves nothing; `mlops compare --json` then promotes the better challenger, and the
run leaves its markdown artifact. The statistics and the refusals are tested in tests/unit/test_compare.py."""

from __future__ import annotations

import json

import typer
from mlflow import MlflowClient
from typer.testing import CliRunner
from unit.test_compare import RULE, gated_version, paired, record_pairs

from champion import store
from champion.challenger import current_challenger, set_challenger
from champion.promotion import current_champion, promote

NAME = "challenger-flow"


def test_the_form_flow_reports_and_the_command_promotes_on_the_same_evidence(
    prefect_server, mlops_home, monkeypatch
):
    from cli import compare
    from flows.challenger import CHALLENGER_FLOWS
    from usecases.fraud import spec as fraud

    monkeypatch.setattr(fraud, "CHALLENGER", RULE)
    store.configure()
    client = MlflowClient()
    client.create_registered_model(NAME)
    for number in (1, 2):
        gated_version(client, NAME, "challenger-flow", number)
    promote(NAME, "1", compared_with=None, run_id="run-1")
    set_challenger(NAME, "2", "shadow it", by="test")
    frame = paired(1000, champion=1.0, challenger=2.0)
    record_pairs(NAME, frame, labels=frame)

    reported = CHALLENGER_FLOWS["fraud"](registered_model=NAME, decide=False)
    assert reported.decision.outcome == "reported" and reported.verdict.action == "promote"
    assert current_champion(client, NAME) == "1" and current_challenger(client, NAME) == "2"

    app = typer.Typer()
    compare.register_commands(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["compare", "fraud", "--registered-model", NAME, "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    assert record["decision"]["outcome"] == "promoted" and record["counts"]["compared"] == 1000
    assert current_champion(client, NAME) == "2" and current_challenger(client, NAME) is None

    from prefect.artifacts import Artifact

    artifact = Artifact.get("challenger-fraud")
    assert artifact is not None and artifact.data.startswith(f"## {NAME}: promoted")
    assert record["mlflow_run_id"] in artifact.data


def test_each_use_case_gets_a_daily_challenger_deployment_whose_form_is_compare_params():
    from prefect.utilities.callables import parameter_schema

    from infra.deployments import all_plans

    plans = [p for p in all_plans() if p.kind == "challenger"]
    assert {p.use_case for p in plans} == {"fraud", "stock"}
    for plan in plans:
        assert (
            plan.full_name == f"{plan.use_case}-challenger/{plan.use_case}"
            and plan.timing.cron == "0 6 * * *"
        )
        assert (
            plan.entrypoint == f"flows.challenger.{plan.use_case}_challenger" and plan.concurrency is not None
        )
        form = parameter_schema(plan.flow).model_dump()["properties"]
        assert list(form) == ["since", "labels", "decide", "registered_model"]
        assert form["decide"]["default"] is True and form["since"]["pattern"].startswith("^$|")
