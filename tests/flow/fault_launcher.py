"""`mlops ...` processes for the fault tests, SIGKILLed at one point of the training flow: fault injection
without production hooks, and without paying the CLI's ~13 s of imports per process.

One launcher process (`python tests/flow/fault_launcher.py serve`, started by `Launcher`) imports the CLI and
everything a run uses once, then forks one child per request: the child becomes its own session and process
group, takes the request's environment, working directory and output file, optionally arms a kill point, and
runs the real CLI (`cli.main:app`) on the real stores and the real Prefect API, then exits as `mlops` would
(interpreter shutdown, atexit handlers). The launcher reports each child's pid when it starts and its exit
status (negative: the signal) once it has reaped it; `Launcher.run` then checks that nothing the child started
outlived it (its process group is empty) and kills the group in any case.

An armed point wraps one callable the flow uses (a stage's function inside its Prefect task, or an MLflow
client call), prints `fault: SIGKILL at POINT` and kills its own process with SIGKILL, as the OOM killer, a
node going away or `kill -9` would: no `finally`, no `atexit`, no Prefect state hook runs. With
MLOPS_FAULT_KILL_PID set, the point kills that process (or process group, if negative) instead, e.g. the
MLflow server the run talks to, and the run goes on.

Also usable on its own, one process per run: `python tests/flow/fault_launcher.py POINT -- run fraud ...`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# point -> (module, attribute, when): "entry" kills before the real call, "exit" right after it returned.
# A stage is wrapped inside its Prefect task (the Task object is shared by whoever imported it), so the kill
# happens in a running task run, as a crash of the stage would.
KILL_POINTS = {
    # the raw data check: the data was read, nothing trained; the MLflow run is RUNNING
    "validate": ("tasks.validate", "validate", "entry"),
    # training: data checked and split, nothing logged as a model yet
    "train": ("tasks.train", "train", "entry"),
    # registration, inside the champion lock: the model is logged and the registered model exists; the
    # version's creation (one registry call with all its tags) is never made
    "register": ("mlflow.tracking.client", "MlflowClient.create_model_version", "entry"),
    # the register stage has created the version with its tags; the alias has not been touched
    "register->promote": ("tasks.register", "register", "exit"),
    # inside the alias move: the history entry and the version's promotion tags are written, the alias is not
    "promote": ("mlflow.tracking.client", "MlflowClient.set_registered_model_alias", "entry"),
    # the alias moved and the champion lock is released; the gate report, the Prefect artifact and event, the
    # run's final status are not written
    "promote->report": ("tasks.report", "report", "entry"),
}
# What a run imports, loaded once by the launcher before it forks (a child imports only what is missing): the
# project's packages (but the Dask executor's, which a local run never loads) and what their stages import
# inside functions.
PROJECT = ("cli", "flows", "tasks", "champion", "usecases", "data_checks")
NOT_PRELOADED = ("tasks.dask",)
PRELOAD = (
    "mlflow",
    "mlflow.xgboost",
    "mlflow.pyfunc",
    "mlflow.tracing",
    "mlflow.utils.git_utils",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "alembic.runtime.migration",
    "sqlalchemy.dialects.sqlite",
    "sqlalchemy.dialects.postgresql.psycopg2",
    "psycopg2",
    "prefect",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.concurrency.sync",
    "prefect.events",
    "prefect.artifacts",
    "prefect.utilities.visualization",
    "xgboost",
    "sklearn.linear_model",
    "sklearn.metrics",
    "sklearn.pipeline",
    "sklearn.preprocessing",
    "great_expectations",
    "pyarrow.parquet",
)


def _preload() -> None:
    import importlib
    import pkgutil

    import matplotlib

    matplotlib.use("Agg")  # what tasks/evaluate.py chooses before it draws
    names = ["matplotlib.pyplot", *PRELOAD]
    for package in PROJECT:
        module = importlib.import_module(package)
        names += [
            info.name
            for info in pkgutil.walk_packages(module.__path__, f"{package}.")
            if not info.name.startswith(NOT_PRELOADED)
        ]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # moved or broken: each child imports what it needs, and reports that
            print(f"fault_launcher: not preloaded: {name}: {exc}", file=sys.stderr, flush=True)


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


def run_cli(args: list[str]) -> int:
    """`mlops ARGS` in this process, with the exit code a `mlops` process would have."""
    import click

    from cli.main import app

    try:
        return app(args, standalone_mode=False) or 0
    except click.ClickException as exc:  # a usage error: click prints it and exits 2, as the console script
        exc.show()
        return exc.exit_code


# --- the launcher process ---------------------------------------------------------------------------------


def _child(request: dict) -> int:
    """In the forked child: become a process group of its own, take the request's setting, run the CLI."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        output = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        for name in request.get("unset", ()):
            os.environ.pop(name, None)
        os.environ.update(request.get("env", {}))
        os.chdir(request.get("cwd") or ROOT)
        if request.get("kill_at"):
            arm(request["kill_at"])
        if request.get("python"):  # the launcher's own tests: a snippet instead of the CLI
            exec(compile(request["python"], "<request>", "exec"), {})
            code = 0
        else:
            code = run_cli(request["args"])
    except BaseException:  # whatever escapes the CLI is the report, as in a `mlops` process
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return code


def serve() -> int:
    """Read one JSON request per line on stdin; answer on stdout: {"ready"}, then per request {"started"}
    and, once reaped, {"exited", "status"}. Returns in the launcher at EOF, in each child with its code."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the imports print goes to the launcher's log, not into the protocol
    from cli.servers import use_prefect_server

    use_prefect_server()  # as `mlops run` does, before anything imports Prefect
    _preload()
    extra = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    assert not extra, f"a thread before fork would be missing in the children: {extra}"
    protocol.write(json.dumps({"ready": os.getpid()}) + "\n")
    children: set[int] = set()
    pending = b""
    open_input = True
    while open_input or children:
        readable, _, _ = select.select([0] if open_input else [], [], [], 0.1)
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                code = os.waitstatus_to_exitcode(status)
                protocol.write(json.dumps({"exited": pid, "status": code}) + "\n")
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:  # the test is done: end what is left
            open_input = False
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            continue
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                protocol.close()
                return _child(request)
            children.add(pid)
            protocol.write(json.dumps({"started": pid}) + "\n")
    return 0


def main(argv: list[str]) -> int:
    if argv == ["serve"]:
        return serve()
    if len(argv) < 2 or argv[1] != "--" or argv[0] not in KILL_POINTS:
        print(
            f"usage: fault_launcher.py serve | {{{'|'.join(KILL_POINTS)}}} -- MLOPS ARGS...", file=sys.stderr
        )
        return 2
    from cli.servers import use_prefect_server

    use_prefect_server()
    arm(argv[0])
    return run_cli(argv[2:])


# --- the test's side --------------------------------------------------------------------------------------


@dataclass
class Finished:
    pid: int
    returncode: int  # negative: killed by that signal
    stdout: str  # stdout and stderr, interleaved as written
    stragglers: bool  # something the process started was still alive after it (then killed)


class Launcher:
    """The test's handle on one launcher process: `run` a command in a fresh child, `start` one and `wait`
    for it, `close` at the end (kills the launcher's and every child's process group)."""

    def __init__(self, env: dict, log: Path, timeout: float = 300):
        self.log = log.open("a")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve"],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,  # its own group: `close` ends it whatever state it is in
        )
        self.children: set[int] = set()
        self.started: list[int] = []
        self.exited: dict[int, int] = {}
        self.changed = threading.Condition()
        self.ready = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self._until(lambda: self.ready, timeout, "the launcher to import everything")

    def _read(self) -> None:
        for line in self.process.stdout:
            message = json.loads(line)
            with self.changed:
                if "ready" in message:
                    self.ready = True
                elif "started" in message:
                    self.started.append(message["started"])
                else:
                    self.exited[message["exited"]] = message["status"]
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def _until(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self.changed:
            while not condition():
                if not self.reader.is_alive():
                    raise AssertionError(
                        f"the launcher exited ({self.process.poll()}) while waiting for {what}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{what}: not after {timeout:.0f} s")
                self.changed.wait(min(remaining, 1.0))
            return condition()

    def start(
        self,
        args: list[str],
        output: Path,
        *,
        env: dict | None = None,
        unset: tuple[str, ...] = (),
        cwd: Path | None = None,
        kill_at: str | None = None,
        python: str | None = None,
    ) -> int:
        """Fork a child running `mlops ARGS` (armed at `kill_at`); its output goes to `output`. Its pid."""
        environment = env or {}
        assert not any(k.startswith("PREFECT_") for k in environment), "Prefect's settings are imported once"
        request = {
            "args": list(args),
            "output": str(output),
            "env": environment,
            "unset": list(unset),
            "cwd": str(cwd or ROOT),
            "kill_at": kill_at,
            "python": python,
        }
        with self.changed:
            count = len(self.started)
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        self._until(lambda: len(self.started) > count, 60, "the fork")
        pid = self.started[count]
        self.children.add(pid)
        return pid

    def wait(self, pid: int, output: Path, timeout: float = 600) -> Finished:
        """The child's exit status and output once the launcher reaped it; then its process group is ended."""
        try:
            self._until(lambda: pid in self.exited, timeout, f"the child {pid} to exit")
        finally:
            stragglers = end_group(pid)
        self.children.discard(pid)
        return Finished(pid, self.exited[pid], Path(output).read_text(errors="replace"), stragglers)

    def run(self, args: list[str], output: Path, timeout: float = 600, **how) -> Finished:
        return self.wait(self.start(args, output, **how), output, timeout)

    def close(self) -> None:
        for pid in list(self.children):
            end_group(pid)
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(30)
        end_group(self.process.pid)
        self.process.wait(30)
        self.log.close()


def end_group(pgid: int) -> bool:
    """SIGKILL whatever is left of process group `pgid`; True if any of it was still running (tests/ports.py,
    imported here: the launcher process itself never needs it)."""
    from ports import end_group as end

    return end(pgid)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
