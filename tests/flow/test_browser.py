"""What people see, in a real browser: the decision on the Prefect flow-run page, the model card's metrics
table on the MLflow model-version page, and the Resume form of a run that waits for a person's approval.

A local Prefect server (infra/prefect_local.py, UI included) and an `mlflow server` on SQLite start on free
ports under a temporary folder, once for the module; one small fraud training runs through the CLI against
them, and a run pauses for approval (tests/approval_runs.py); then headless Chromium (Debian's `chromium`,
driven by Playwright) opens the pages as a person does. The page helpers are infra/screenshots.py's, so the
README's pictures are taken the way this test looks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid

import approval_runs
import httpx
import pytest
from conftest import SMALL_FRAUD_RUN, needs
from ports import owned_by_group

from infra import screenshots
from infra.servers.processes import Managed


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The local stack, shared by this module's tests (its servers take a while to start)."""
    if not screenshots.chromium_path():
        needs("Chromium", "no `chromium` on PATH (`apt-get install chromium`; .ci/run installs it)")
    failures, folder = [], tmp_path_factory.mktemp("browser")
    for attempt in range(3):  # the stack picks free ports; one may be taken before its server binds it
        base = folder / f"stack-{attempt}"
        base.mkdir()
        with contextlib.ExitStack() as started:
            try:
                stack = started.enter_context(screenshots.local_stack(base))
            except Exception as exc:  # a server did not come up: another port, a few times
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            port = int(stack.mlflow_url.rsplit(":", 1)[1])
            if not owned_by_group(port, Managed("mlflow", base).pid() or -1):
                failures.append(f"another program answered on the MLflow server's port {port}")
                continue
            yield stack
            return
    pytest.fail("the local stack did not start: " + "; ".join(failures))


@pytest.fixture
def trained(local):
    return local, screenshots.run_training(local, SMALL_FRAUD_RUN, timeout=420)


@pytest.mark.timeout(600)
def test_the_decision_and_the_model_card_show_in_the_uis(trained):
    stack, run = trained
    message = run["state"]["message"]
    assert run["state_type"] == "COMPLETED", run["state"]
    assert message.startswith("promoted: fraud-detector v1 is champion"), message

    with screenshots.browser() as chromium:
        # Prefect: the flow run's page says what the gates decided (its state message), not just "Completed".
        page = screenshots.prefect_page(chromium, stack)
        shown = screenshots.open_flow_run(page, stack, run["id"])
        assert shown.is_visible()
        assert shown.inner_text().strip() == message

        # MLflow: the model card is markdown rendered as HTML; its metrics table is a real <table>.
        page = screenshots.mlflow_page(chromium, stack)
        card = screenshots.open_model_version(page, stack, "fraud-detector", "1")
        tables = card.locator("table")
        headers = [tables.nth(i).locator("th").all_inner_texts() for i in range(tables.count())]
        metrics = [
            i for i, cells in enumerate(headers) if [c.strip() for c in cells[:2]] == ["metric", "candidate"]
        ]
        assert metrics, f"no metrics table in the card; its tables' headers: {headers}"
        table = tables.nth(metrics[0])
        assert table.is_visible()
        rows = {
            cells[0].strip(): cells[1].strip()
            for cells in (row.locator("td").all_inner_texts() for row in table.locator("tbody tr").all())
            if len(cells) >= 2
        }
        assert 0 < float(rows["average_precision"]) <= 1, rows
        assert "roc_auc" in rows, rows
        assert "| metric" not in card.inner_text()  # no markdown left unrendered


@pytest.mark.timeout(900)
def test_a_trade_off_is_approved_in_the_prefect_ui_form(local, tmp_path):
    """A run paused for approval (tests/approval_runs.py says which) shows the trade-off table in the Prefect
    UI's Resume form; switching Approve on and giving a reason resumes it, and the run records the approval,
    by the form, on the version and its MLflow run."""
    name, log = f"approval-ui-{uuid.uuid4().hex[:6]}", tmp_path / "run.log"
    process = approval_runs.start(approval_runs.command(name, 300), local.env, log)
    try:
        api = screenshots.prefect_api(local)
        mlflow = httpx.Client(base_url=f"{local.mlflow_url}/api/2.0/mlflow", timeout=30)
        paused = approval_runs.wait_until_paused(mlflow, api, name, process, log, 600)
        reason = "the new pattern costs more than the old week"
        with screenshots.browser() as chromium:
            page = screenshots.prefect_page(chromium, local)
            form = _open_resume_form(page, local, paused.flow_run_id)
            table = form.locator("table").first  # the markdown table, rendered
            assert [h.strip() for h in table.locator("th").all_inner_texts()][:4] == [
                "window",
                "rows",
                "candidate",
                "champion",
            ]
            assert f"mlops approve fraud --run {paused.flow_run_id}" in form.inner_text()
            approve = form.get_by_role("switch")
            approve.click()
            assert approve.get_attribute("aria-checked") == "true"
            form.get_by_label("Reason", exact=True).fill(reason)
            form.get_by_role("button", name="Resume", exact=True).click()
            form.wait_for(state="hidden")
        assert process.wait(120) == approval_runs.EXIT_CODES["approved"], approval_runs.tail(log)
        on_version, on_run = approval_runs.recorded(mlflow, name, paused.version, paused.run_id)
        assert on_version == on_run, (on_version, on_run)
        assert on_version["approval"] == "approved", on_version
        assert (on_version["approval.by"], on_version["approval.reason"]) == ("Prefect UI form", reason)
        assert api.get(f"/flow_runs/{paused.flow_run_id}").json()["state_type"] == "COMPLETED"
    finally:
        if process.poll() is None:  # only the run this test started, should a step have failed
            os.killpg(process.pid, signal.SIGKILL)


def _open_resume_form(page, stack, flow_run_id: str):
    """The flow run's page -> its menu (top right) -> Resume, as a person does; returns the dialog once the
    trade-off table in it shows."""
    page.goto(f"{stack.prefect_url}/")  # the UI a person opens (Prefect 3.9 sends `/` to its V2 UI)
    ui = page.url.split("?")[0].rstrip("/")
    page.goto(f"{ui}/runs/flow-run/{flow_run_id}")
    page.get_by_text("Paused", exact=True).first.wait_for()
    page.get_by_role("button", name="Open menu").first.click()
    page.get_by_role("menuitem", name="Resume").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("table").first.wait_for()
    return dialog
