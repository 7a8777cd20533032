"""What people see, in a real browser: the decision on the Prefect flow-run page, and the model card's
metrics table on the MLflow model-version page.

A local Prefect server (infra/prefect_local.py, UI included) and an `mlflow server` on SQLite start on free
ports under a temporary folder; one small fraud training runs through the CLI against them; then headless
Chromium (Debian's `chromium`, driven by Playwright) opens the pages as a person does. The page helpers are
infra/screenshots.py's, so the README's pictures are taken the way this test looks.
"""

from __future__ import annotations

import contextlib

import pytest
from conftest import SMALL_FRAUD_RUN, needs
from ports import owned_by_group

from infra import screenshots
from infra.servers.processes import Managed


@pytest.fixture
def trained(tmp_path):
    if not screenshots.chromium_path():
        needs("Chromium", "no `chromium` on PATH (`apt-get install chromium`; .ci/run installs it)")
    failures = []
    for attempt in range(3):  # the stack picks free ports; one may be taken before its server binds it
        base = tmp_path / f"stack-{attempt}"
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
            run = screenshots.run_training(stack, SMALL_FRAUD_RUN, timeout=420)
            yield stack, run
            return
    pytest.fail("the local stack did not start: " + "; ".join(failures))


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
