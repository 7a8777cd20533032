"""Run `mlops ...` and SIGKILL the process at one point of the training flow: fault injection without
production hooks.

    python tests/flow/fault_launcher.py KILL_POINT -- run fraud --customers 300 ...

The launcher wraps one callable the flow uses (a stage's function inside its Prefect task, or an MLflow
client call), prints `fault: SIGKILL at KILL_POINT` and kills its own process with SIGKILL, as the OOM
killer, a node going away or `kill -9` would: no `finally`, no `atexit`, no Prefect state hook runs.
Everything else is the real CLI (`cli.main:app`), the real stores and the real Prefect API.

With the environment variable MLOPS_FAULT_KILL_PID set, the point kills that process instead (e.g. the MLflow
server the run talks to) and the run goes on.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

# point -> (module, attribute, when): "entry" kills before the real call, "exit" right after it returned.
# A stage is wrapped inside its Prefect task (the Task object is shared by whoever imported it), so the kill
# happens in a running task run, as a crash of the stage would.
KILL_POINTS = {
    # the raw data check: the data was read, nothing trained; the MLflow run is RUNNING
    "validate": ("tasks.validate", "validate", "entry"),
    # training: data checked and split, nothing logged as a model yet
    "train": ("tasks.train", "train", "entry"),
    # registration: the model is logged and the registered model exists; the version's creation (one registry
    # call with all its tags) is never made
    "register": ("mlflow.tracking.client", "MlflowClient.create_model_version", "entry"),
    # the register stage has created the version with its tags; the alias has not been touched
    "register->promote": ("tasks.register", "register", "exit"),
    # inside the alias move: the history entry and the version's promotion tags are written, the alias is not
    "promote": ("mlflow.tracking.client", "MlflowClient.set_registered_model_alias", "entry"),
    # the alias moved; the gate report, the Prefect artifact and event, the run's final status are not written
    "promote->report": ("tasks.report", "report", "entry"),
}


def _fire(point: str) -> None:
    target = os.environ.get("MLOPS_FAULT_KILL_PID")
    if target:
        print(f"fault: SIGKILL to pid {target} at {point}", flush=True)
        os.kill(int(target), signal.SIGKILL)
        return
    print(f"fault: SIGKILL at {point}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _armed(function, point: str, when: str):
    fired = False

    @functools.wraps(function)  # keeps the signature: Prefect binds a task's parameters by it
    def wrapper(*args, **kwargs):
        nonlocal fired
        if when == "entry" and not fired:
            fired = True
            _fire(point)
        result = function(*args, **kwargs)
        if when == "exit" and not fired:
            fired = True
            _fire(point)
        return result

    return wrapper


def arm(point: str) -> None:
    """Wrap the callable behind `point` so that its first call fires the fault."""
    import importlib

    from prefect import Task

    module_name, attribute, when = KILL_POINTS[point]
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    target = getattr(owner, name)
    if isinstance(target, Task):
        target.fn = _armed(target.fn, point, when)  # fires inside the task run, as a crash in the stage would
    else:
        setattr(owner, name, _armed(target, point, when))


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "--" or argv[0] not in KILL_POINTS:
        print(f"usage: fault_launcher.py {{{'|'.join(KILL_POINTS)}}} -- MLOPS ARGS...", file=sys.stderr)
        return 2
    from cli.servers import use_prefect_server

    use_prefect_server()  # as `mlops run` does, before anything imports Prefect
    arm(argv[0])
    from cli.main import app

    return app(argv[2:], standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
