"""A tuning run's budget: trials started while it lasts (a number of trials, seconds, or both), a few at a
time on the flow's task runner, and a progress line as each ends (how much of the budget it used, why it was
pruned)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from champion.store import run_logger

if TYPE_CHECKING:
    from usecases.params import TuneParams


def run_within_budget(start: Callable[[int], object], options: TuneParams) -> list:
    """Start trials while the budget lasts (no new one after the timeout), print a line as each ends."""
    log = run_logger()
    began, results, running, started = time.monotonic(), [], [], 0

    def budget_left() -> bool:
        in_time = options.timeout is None or time.monotonic() - began < options.timeout
        return in_time and (options.trials is None or started < options.trials)

    while running or budget_left():
        while budget_left() and len(running) < options.parallel:
            started += 1
            running.append(start(started))
        finished = [f for f in running if getattr(f, "wrapped_future", f).done()]
        if not finished:
            time.sleep(0.2)
            continue
        for future in finished:
            running.remove(future)
            result = future.result()
            results.append(result)
            log.info(progress_line(result, len(results), options, time.monotonic() - began))
    return results


def progress_line(result, done: int, options: TuneParams, elapsed: float) -> str:
    """`trial 3/20 (#12) complete: average_precision 0.6712, 14.2 s; budget: 15 % used (this trial 5 %)`."""
    if options.trials is not None:
        share, used = 1 / options.trials, done / options.trials
        of = f"{done}/{options.trials}"
    else:
        share, used, of = result.seconds / options.timeout, elapsed / options.timeout, f"{done}"
    if options.timeout is not None and options.trials is not None:
        used = max(used, elapsed / options.timeout)
    value = "-" if result.value is None else f"{result.value:.6g}"
    note = f"; {result.note}" if result.note else ""
    return (
        f"trial {of} (#{result.number}) {result.state.lower()}: value {value}, {result.seconds:.1f} s; "
        f"budget {min(used, 1):.0%} used (this trial {share:.0%}){note}"
    )
