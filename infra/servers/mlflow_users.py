"""The runner's MLflow user: a non-admin user that `mlops serve` and its flow runs log as, created (or its
password reset) by the admin through MLflow's auth REST API, and given write access to what the deployments
write (each use case's registered model and experiments) and nothing more."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from base64 import b64encode
from collections.abc import Iterable, Mapping

from infra.servers.health import mlflow_healthy
from infra.servers.processes import wait_until
from infra.servers.settings import NotYet, ServerError, Settings
from usecases import SPEC_MODULES, spec_module


def _basic(username: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + b64encode(f"{username}:{password}".encode()).decode()}


def http_json(
    method: str, url: str, body: Mapping | None, headers: Mapping[str, str], timeout: float = 15.0
) -> tuple[int, dict]:
    """(status, decoded JSON body or {}) of one request; HTTP errors are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={**headers, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return 0, {"message": str(getattr(exc, "reason", exc))}
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"message": raw.decode(errors="replace")[:300]}


def ensure_runner_user(settings: Settings) -> str:
    """Create the runner's MLflow user (not an admin) through MLflow's auth REST API, as the admin; when it
    exists, set its password to the configured one. Returns "created" or "updated".

    In MLflow's basic-auth app the creator of an experiment or registered model gets MANAGE on it, so this
    user can log runs to the experiments and set aliases on the models it creates, and reads the rest with
    MLFLOW_AUTH_DEFAULT_PERMISSION; it cannot manage users or change what others created.
    """
    admin = _basic(settings.mlflow_admin_username, settings.mlflow_admin_password or "")
    base = f"{settings.mlflow_url}/api/2.0/mlflow/users"
    user = {"username": settings.mlflow_runner_username, "password": settings.mlflow_runner_password}
    status, body = http_json("POST", f"{base}/create", user, admin)
    if status == 200:
        return "created"
    if body.get("error_code") != "RESOURCE_ALREADY_EXISTS":
        raise _user_error("creating", user["username"], status, body)
    status, body = http_json("PATCH", f"{base}/update-password", user, admin)
    if status != 200:
        raise _user_error("updating", user["username"], status, body)
    status, body = http_json("GET", f"{base}/get?username={user['username']}", None, admin)
    if status == 200 and body.get("user", {}).get("is_admin"):
        raise ServerError(f"MLflow user {user['username']} is an admin; the runner must not be one")
    return "updated"


def _user_error(doing: str, username: str, status: int, body: Mapping) -> ServerError:
    """The error (never the request: it holds the password); retried when the server is not ready yet."""
    message = str(body.get("message") or body.get("error_code") or body)[:300]
    error = NotYet if status in (0, 401, 502, 503, 504) else ServerError
    return error(f"MLflow: {doing} user {username} failed (HTTP {status or 'none'}: {message})")


def wait_for_runner_user(settings: Settings, timeout: float) -> str:
    """`ensure_runner_user` once MLflow answers (compose: a one-shot service after the server is healthy)."""
    wait_until(lambda: mlflow_healthy(settings), timeout, "MLflow server")
    deadline = time.monotonic() + 60
    while True:  # a fresh server's workers may still be setting up the admin user behind the health check
        try:
            return ensure_runner_user(settings)
        except NotYet:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def factory_resources() -> list[tuple[str, str, str]]:
    """(use case, registered model, its description) for every use case, from each spec's defaults."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # import-time chatter of the use cases' libraries
        found = []
        for use_case in SPEC_MODULES:
            module = spec_module(use_case)
            params = module.Params()
            found.append((use_case, module.registered_model(params), module.build_spec(params).description))
    return found


def ensure_runner_resources(settings: Settings, resources: Iterable[tuple[str, str, str]]) -> list[str]:
    """Make the runner user able to write what the deployments write, and nothing more; returns what changed.

    - Each use case's registered model is created as the runner user when missing, so it owns it (MANAGE).
      (MLflow answers a non-admin's question about a registered model that does not exist yet, such as "where
      does @champion point", with 403 rather than 404: the model must exist before the first run.)
    - A registered model or experiment of the factory that someone else created first (say, an `mlops run`
      from the admin's shell) gets an EDIT grant for the runner, so it can log runs, register versions and
      move aliases there.
    """
    admin = _basic(settings.mlflow_admin_username, settings.mlflow_admin_password or "")
    api = f"{settings.mlflow_url}/api/2.0/mlflow"
    changed = []
    for use_case, model, description in resources:
        status, _ = http_json(
            "GET", f"{api}/registered-models/get?name={urllib.parse.quote(model)}", None, admin
        )
        if status == 404:
            changed.append(_create_model(settings, model, description))
        elif status == 200:
            changed += _grant_edit(settings, "registered_model", model, f"registered model {model}")
        else:
            raise ServerError(f"MLflow: reading registered model {model} failed (HTTP {status})")
        for experiment in (use_case, f"{use_case}-monitoring"):
            query = urllib.parse.urlencode({"experiment_name": experiment})
            status, body = http_json("GET", f"{api}/experiments/get-by-name?{query}", None, admin)
            if status == 200:
                experiment_id = body["experiment"]["experiment_id"]
                changed += _grant_edit(settings, "experiment", experiment_id, f"experiment {experiment}")
    return changed


def _create_model(settings: Settings, model: str, description: str) -> str:
    """Create registered model `model` as the runner user, so it owns it."""
    runner = _basic(settings.mlflow_runner_username, settings.mlflow_runner_password or "")
    created = {"name": model, "description": description}
    status, body = http_json(
        "POST", f"{settings.mlflow_url}/api/2.0/mlflow/registered-models/create", created, runner
    )
    if status != 200:
        raise ServerError(f"MLflow: creating registered model {model} failed (HTTP {status}: {body})")
    return f"created registered model {model}"


def _grant_edit(settings: Settings, resource_type: str, resource_id: str, label: str) -> list[str]:
    """Grant the runner EDIT on a resource as the admin, unless it has EDIT or MANAGE; what changed."""
    admin = _basic(settings.mlflow_admin_username, settings.mlflow_admin_password or "")
    permissions = f"{settings.mlflow_url}/api/3.0/mlflow/users/permissions"
    resource = {
        "username": settings.mlflow_runner_username,
        "resource_type": resource_type,
        "resource_id": resource_id,
    }
    status, body = http_json("GET", f"{permissions}/get?{urllib.parse.urlencode(resource)}", None, admin)
    if status == 200 and body.get("permission") in ("EDIT", "MANAGE"):
        return []
    status, body = http_json("POST", f"{permissions}/grant", {**resource, "permission": "EDIT"}, admin)
    if status != 200:
        raise ServerError(f"MLflow: granting the runner EDIT on {label} failed (HTTP {status}: {body})")
    return [f"granted EDIT on {label}"]
