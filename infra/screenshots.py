"""Screenshots of the Prefect and MLflow UIs as a user meets them, for the README ("What you see").

    uv run python -m infra.screenshots                  # a throwaway `make up`: Postgres, auth, `mlops serve`
    uv run python -m infra.screenshots --stack local    # no Postgres: SQLite MLflow server + local Prefect
    uv run python -m infra.screenshots --stack running  # the `make up` running now (its registry gets a run)

It trains `fraud-detector` once on the defaults (simulated transactions): in server mode through the
deployment, run by `mlops serve` as a Custom run with the defaults would be; with `--stack local` through
`mlops run fraud`. Then headless Chromium (Debian's `chromium`, driven by Playwright; nothing downloads a
browser) opens, at 1280x1000, what a person opens, and saves to `infra/screenshots/` (`--out`):

    prefect-flow-run.png      Runs -> the training's flow run, Details tab: the task graph and the state
                              message, which is the decision
    prefect-decision.png      that run's `decision-fraud` artifact: the gates and the test metrics
    prefect-custom-run.png    Deployments -> fraud-detector -> Run -> Custom run: the typed form
    mlflow-model-version.png  Models -> fraud-detector -> the version: `@champion` and the model card

Every picture is taken after the page shows what it is meant to show (a selector or a text, then a page that
stopped changing), within `--timeout`; a login page or a spinner fails the script instead of being saved.
The throwaway stack (temporary folder, databases `mlops_shots_<random>_*`, free ports) is stopped and its
databases dropped afterwards, also on failure. `tests/flow/test_browser.py` checks the same pages.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from infra import prefect_local
from infra.servers.processes import Managed, http_ok, wait_until
from infra.servers.settings import NO_MLFLOW_JOBS, PROJECT_ROOT, QUIET, Settings, read_env_file
from infra.servers.stack import discard_stack

OUT = Path(__file__).resolve().parent / "screenshots"
VIEWPORT = {"width": 1280, "height": 1000}
USE_CASE, DEPLOYMENT, MODEL = "fraud", "fraud-training/fraud-detector", "fraud-detector"
# Software WebGL, so the flow run's task graph (a canvas) renders without a GPU.
CHROMIUM_ARGS = ["--enable-unsafe-swiftshader", "--use-angle=swiftshader"]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
MLOPS = [sys.executable, "-m", "cli.main"]


class ScreenshotError(RuntimeError):
    """A page did not show what it should, or the stack or the training run did not come up."""


@dataclass
class Stack:
    """Where the two UIs are, and what a client needs to use them (a shell after `source client.env`)."""

    prefect_url: str  # the UI root, http://127.0.0.1:<port>; the API is <prefect_url>/api
    mlflow_url: str
    env: dict[str, str] = field(default_factory=dict)  # PREFECT_API_*, MLFLOW_TRACKING_*, MLOPS_HOME ...
    runner: bool = False  # `mlops serve` executes deployment runs

    @property
    def prefect_api(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def prefect_auth(self) -> str | None:
        return self.env.get("PREFECT_API_AUTH_STRING") or None

    @property
    def mlflow_credentials(self) -> dict[str, str] | None:
        user, password = self.env.get("MLFLOW_TRACKING_USERNAME"), self.env.get("MLFLOW_TRACKING_PASSWORD")
        return {"username": user, "password": password} if user and password else None

    def prefect_headers(self) -> dict[str, str]:
        auth = self.prefect_auth
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_env(**values: str) -> dict[str, str]:
    """This process's environment without any Prefect, MLflow or `make up` choice, plus `values`."""
    chosen = ("PREFECT_", "MLFLOW_", "MLOPS_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(chosen)}, **QUIET, **values}


# -- the stacks ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def local_stack(base: Path, timeout: float = 180.0) -> Iterator[Stack]:
    """`mlflow server` on SQLite and the local Prefect server (infra/prefect_local.py), under `base`, on free
    ports; stopped on exit. No Postgres, no auth, no runner: runs go through `mlops run`."""
    home, mlflow_port = base / "mlops", free_port()
    env = client_env(
        MLOPS_HOME=str(home),
        MLOPS_SERVERS_DIR=str(base / "no-make-up"),  # never `make up`'s servers, should they run here
        MLOPS_ENV_FILE="",
        **{prefect_local.PORT_ENV: str(free_port())},
    )
    mlflow = Managed("mlflow", base)
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        *("server", "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}"),
        *("--artifacts-destination", str(base / "mlflow-artifacts")),
        *("--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"),
    ]
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    try:
        mlflow.start(command, {**QUIET, **NO_MLFLOW_JOBS})  # starts while Prefect starts
        with _environ(env):
            prefect = prefect_local.start()
        wait_until(lambda: http_ok(f"{mlflow_url}/health"), timeout, "MLflow server", mlflow)
        env.update(PREFECT_API_URL=prefect.url, MLFLOW_TRACKING_URI=mlflow_url)
        yield Stack(prefect.ui, mlflow_url, env, runner=False)
    finally:
        with _environ(env):
            prefect_local.stop()
        mlflow.stop(timeout=15)


@contextlib.contextmanager
def temp_servers_stack(base: Path, timeout: float = 300.0) -> Iterator[Stack]:
    """What `make up` runs (`python -m infra.servers up`), in `base`: MLflow and Prefect with auth on fresh
    Postgres databases and free ports, and `mlops serve`; `down --purge` on exit."""
    env = client_env(
        MLOPS_ENV_FILE="",
        MLOPS_SERVERS_DIR=str(base / "servers"),
        MLOPS_DB_PREFIX=f"mlops_shots_{secrets.token_hex(6)}",
        MLOPS_MLFLOW_PORT=str(free_port()),
        MLOPS_PREFECT_PORT=str(free_port()),
        MLOPS_REDIS_PORT=str(free_port()),
        MLOPS_MLFLOW_WORKERS="1",
        MLOPS_HOME=str(base / "mlops"),
        MLOPS_DATA_ROOTS=str(base / "data"),
        PREFECT_HOME=str(base / "prefect-home"),
        PREFECT_RUNNER_POLL_FREQUENCY="2",  # the runner picks the run up quickly
    )
    settings = Settings.from_env(env)
    try:
        up = subprocess.run(
            [sys.executable, "-m", "infra.servers", "up", "--timeout", str(int(timeout))],
            env=env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout + 120,
        )
        if up.returncode != 0:
            raise ScreenshotError(f"`infra.servers up` failed:\n{up.stdout}\n{up.stderr}")
        env.update(read_env_file(settings.state_dir / "client.env"))
        yield Stack(settings.prefect_url, settings.mlflow_url, env, runner=True)
    finally:
        discard_stack(settings, env)


@contextlib.contextmanager
def running_stack() -> Iterator[Stack]:
    """The `make up` servers that run now, used as a person's shell would (`client.env`)."""
    settings = Settings.from_env()
    client = read_env_file(settings.state_dir / "client.env")
    if Managed("prefect", settings.state_dir).pid() is None or not client:
        raise ScreenshotError(f"no `make up` runs here ({settings.state_dir}): run `make up` first")
    runner = Managed("serve", settings.state_dir).pid() is not None
    yield Stack(settings.prefect_url, settings.mlflow_url, client_env(**client), runner=runner)


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """os.environ replaced by `values` for the block (what infra.prefect_local reads), then restored."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# -- one training run ----------------------------------------------------------------------------------------
def prefect_api(stack: Stack):
    return httpx.Client(base_url=stack.prefect_api, headers=stack.prefect_headers(), timeout=30)


def run_training(stack: Stack, options: list[str] | None = None, timeout: float = 900.0) -> dict:
    """Train `fraud-detector` once and return the finished flow run (Prefect's JSON).

    With a runner: a run of the deployment with its defaults (what **Quick run** does), executed by
    `mlops serve`. Without: `mlops run fraud [options]` against the stack.
    """
    api = prefect_api(stack)
    if stack.runner:
        deployment = api.get(f"/deployments/name/{DEPLOYMENT}")
        deployment.raise_for_status()
        created = api.post(f"/deployments/{deployment.json()['id']}/create_flow_run", json={})
        created.raise_for_status()
        run_id = created.json()["id"]
        deadline = time.monotonic() + timeout
        while (run := api.get(f"/flow_runs/{run_id}").json())["state_type"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise ScreenshotError(f"flow run {run_id} not finished after {timeout:.0f} s: {run['state']}")
            time.sleep(2)
        return run
    done = subprocess.run(
        [*MLOPS, "run", USE_CASE, *(options or [])],
        env=stack.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    found = api.post(
        "/flow_runs/filter",
        json={"flows": {"name": {"any_": [f"{USE_CASE}-training"]}}, "sort": "START_TIME_DESC", "limit": 1},
    ).json()
    if not found or found[0]["state_type"] not in TERMINAL:
        raise ScreenshotError(
            f"`mlops run {USE_CASE}` left no finished flow run:\n{done.stdout}\n{done.stderr}"
        )
    return found[0]


def deploy(stack: Stack) -> None:
    """Register the deployments (the runner of a `make up` did already)."""
    done = subprocess.run(
        [*MLOPS, "deploy"], env=stack.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise ScreenshotError(f"`mlops deploy` failed:\n{done.stdout}\n{done.stderr}")


# -- the browser ---------------------------------------------------------------------------------------------
def chromium_path() -> str | None:
    """Debian's `chromium` (`apt-get install chromium`; .ci/run installs it), or MLOPS_CHROMIUM."""
    return os.environ.get("MLOPS_CHROMIUM") or shutil.which("chromium")


@contextlib.contextmanager
def browser(executable: str | None = None):
    """Headless Chromium through Playwright, on the machine's own browser (nothing is downloaded)."""
    from playwright.sync_api import sync_playwright  # lazy: a dev-only dependency, only to take pictures

    executable = executable or chromium_path()
    if not executable:
        raise ScreenshotError("no `chromium` on PATH: `apt-get install chromium` (or set MLOPS_CHROMIUM)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def prefect_page(chromium, stack: Stack, timeout: float = 60.0):
    """A page signed in to the Prefect UI: the auth string is where the UI's sign-in page keeps it (the
    browser's local storage, base64, key `prefect-password`)."""
    context = chromium.new_context(viewport=VIEWPORT)
    context.set_default_timeout(timeout * 1000)
    if stack.prefect_auth:
        stored = base64.b64encode(stack.prefect_auth.encode()).decode()
        context.add_init_script(f"window.localStorage.setItem('prefect-password', '{stored}')")
    return context.new_page()


def mlflow_page(chromium, stack: Stack, timeout: float = 60.0):
    """A page on the MLflow UI, answering its basic-auth prompt with the stack's user when it has one."""
    context = chromium.new_context(viewport=VIEWPORT, http_credentials=stack.mlflow_credentials)
    context.set_default_timeout(timeout * 1000)
    return context.new_page()


def open_flow_run(page, stack: Stack, flow_run_id: str):
    """Runs -> the flow run, Details tab, as the UI's entry page (/) leads to it; returns the state message's
    element once it shows. Waits for the task graph's data too, so the picture has the graph."""
    page.goto(f"{stack.prefect_url}/")  # the UI a person opens (Prefect 3.9 sends `/` to its V2 UI)
    ui = page.url.split("?")[0].rstrip("/")
    with page.expect_response(lambda r: "/graph" in r.url and r.ok):
        page.goto(f"{ui}/runs/flow-run/{flow_run_id}?tab=Details")
    message = page.locator("dl", has=page.get_by_text("State Message", exact=True)).locator("dd")
    message.wait_for()
    return message


def open_decision(page, stack: Stack, flow_run_id: str):
    """From the flow run, Artifacts tab -> `decision-fraud`; returns the rendered artifact's first heading."""
    open_flow_run(page, stack, flow_run_id)
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text(f"decision-{USE_CASE}", exact=True).first.click()
    heading = page.get_by_role("heading").filter(has_text=MODEL)
    heading.wait_for()
    return heading


def open_custom_run(page, stack: Stack, deployment: str = MODEL):
    """Deployments -> the deployment -> Run -> Custom run, clicked as a person does; returns the form."""
    page.goto(f"{stack.prefect_url}/")
    page.get_by_role("link", name="Deployments").first.click()
    page.get_by_role("link", name=deployment, exact=True).first.click()
    page.get_by_role("button", name="Run").first.click()
    page.get_by_text("Custom run").first.click()
    form = page.locator("form").filter(has_text="Customers")
    form.wait_for()
    return form


def open_model_version(page, stack: Stack, name: str, version: str):
    """Models -> the registered model -> the version; returns the rendered model card (the description)."""
    page.goto(f"{stack.mlflow_url}/#/models/{name}/versions/{version}")
    card = page.get_by_test_id("note-editor-preview-content")
    card.locator("h1, h2, table").first.wait_for()
    close = page.get_by_role(
        "button", name="Close", exact=True
    )  # MLflow's assistant panel, opened on first visit
    if close.count():
        close.first.click()
    return card


def settle(page, timeout: float = 30.0, interval: float = 0.5) -> bytes:
    """The page once two pictures in a row are the same (rendering and animations done), within `timeout`."""
    deadline = time.monotonic() + timeout
    previous = page.screenshot()
    while time.monotonic() < deadline:
        page.wait_for_timeout(interval * 1000)
        current = page.screenshot()
        if current == previous:
            return current
        previous = current
    raise ScreenshotError(f"{page.url} kept changing for {timeout:.0f} s")


def in_view(page, element) -> None:
    """Fail unless `element` is inside the viewport (in the picture, not only on the page)."""
    box = element.bounding_box()
    if box is None or box["y"] < 0 or box["y"] + box["height"] > page.viewport_size["height"]:
        raise ScreenshotError(f"{element} is not in view on {page.url}: {box}")


def save(page, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(settle(page))
    print(f"  saved {path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path}")
    return path


# -- the command ---------------------------------------------------------------------------------------------
def take(stack: Stack, out: Path, timeout: float) -> list[Path]:
    if not stack.runner:
        print("registering the deployments (`mlops deploy`) ...", flush=True)
        deploy(stack)
    print("training fraud-detector on the defaults ...", flush=True)
    began = time.monotonic()
    run = run_training(stack, timeout=max(timeout, 900.0))
    took = time.monotonic() - began
    print(f"  flow run {run['name']}: {run['state_type']}, {run['state']['message']} ({took:.0f} s)")
    version = _registered_version(run)
    saved = []
    with browser() as chromium:
        page = prefect_page(chromium, stack, timeout)
        message = open_flow_run(page, stack, run["id"])
        if run["state"]["message"] and message.inner_text().strip() != run["state"]["message"].strip():
            raise ScreenshotError(f"the flow run page shows {message.inner_text()!r}")
        message.scroll_into_view_if_needed()  # under the graph; the run's header stays in view at 1000 px
        in_view(page, message)
        in_view(page, page.get_by_text(run["name"], exact=True).first)
        saved.append(save(page, out / "prefect-flow-run.png"))
        open_decision(page, stack, run["id"])
        saved.append(save(page, out / "prefect-decision.png"))
        open_custom_run(page, stack)
        saved.append(save(page, out / "prefect-custom-run.png"))
        if version is not None:
            page = mlflow_page(chromium, stack, timeout)
            open_model_version(page, stack, MODEL, version)
            saved.append(save(page, out / "mlflow-model-version.png"))
        else:
            print("  no version registered by this run: no MLflow picture")
    return saved


def _registered_version(run: dict) -> str | None:
    """The version the decision names (`... fraud-detector v3 is champion ...`)."""
    found = re.search(rf"{MODEL} v(\d+)", run["state"].get("message") or "")
    return found.group(1) if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.screenshots",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stack",
        choices=("temp", "local", "running"),
        default="temp",
        help="temp: a throwaway `make up` (Postgres); local: SQLite MLflow + the local Prefect server; "
        "running: the `make up` running now (default: temp)",
    )
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the PNGs go (default: {OUT})")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a page may take (default: 60)")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="mlops-shots-") as tmp:
            if args.stack == "running":
                stacks = running_stack()
            elif args.stack == "local":
                stacks = local_stack(Path(tmp))
            else:
                print("starting a throwaway `make up` (Postgres databases mlops_shots_*) ...", flush=True)
                stacks = temp_servers_stack(Path(tmp))
            with stacks as stack:
                print(f"Prefect UI {stack.prefect_url}, MLflow UI {stack.mlflow_url}", flush=True)
                take(stack, args.out, args.timeout)
    except ScreenshotError as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
