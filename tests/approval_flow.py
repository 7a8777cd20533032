"""A flow run that pauses for no input: what `mlops approve` must refuse to answer (started as a process by
tests/server/test_server_mode.py).

    python tests/approval_flow.py --timeout SECONDS
"""

from __future__ import annotations

import argparse

from prefect import flow
from prefect.flow_runs import pause_flow_run


@flow(name="other-pause")
def other_pause(timeout_seconds: float) -> None:
    pause_flow_run(timeout=int(timeout_seconds), poll_interval=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, required=True, help="seconds before the pause expires")
    other_pause(parser.parse_args().timeout)


if __name__ == "__main__":
    main()
