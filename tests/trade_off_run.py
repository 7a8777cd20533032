"""A training run that makes a true trade-off, for the approval tests (tests/approval_runs.py starts it).

    python tests/trade_off_run.py --registered-model NAME --timeout SECONDS
        [--world PATH] [--only champion|run] [--seed N]

In one process (the imports paid once): a small simulated world where card testing begins on its last week
(`Drift`), a champion of NAME trained up to the week before (`mlops run fraud --end`), then the run under
test. Its refit learns the new pattern from the newest week's labels but, with no replay and a 4-day
recency half-life, forgets the older weeks: on held-out cards it gains ~200 % on the newest window and loses
~40 % on the earlier ones, far past the default margins (10 % adapting, 5 % tolerance), so the gates send it
to a person and nothing else refuses it (slices left to report: the candidate they judge is trained on the
old window). Half the cards are held out so that a week of them holds enough frauds to judge on.

`--only champion` trains the champion into `--world` and stops; `--only run` reads that world and makes only
the run under test (several of them can then pause side by side against one champion; `--seed` tells their
versions apart). Its exit code is that run's: 0 promoted (approved), 3 refused (rejected or timed out);
10 + the champion run's code should that one fail.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.main import app  # noqa: E402
from usecases.fraud.simulator import Drift, simulate_transactions  # noqa: E402

DRIFT = Drift(start="2018-06-17", card_testing_cards_per_day=5)
CHAMPION_END = "2018-06-16"
COMMON = ("--min-roc-auc", "0", "--min-average-precision", "0", "--holdout-share", "0.5")
TRADE_OFF = ("--replay", "0", "--half-life", "4", "--slice-margin", "1")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registered-model", required=True)
    parser.add_argument("--timeout", type=float, default=300, help="seconds the run waits for a person")
    parser.add_argument("--world", type=Path, help="the simulated data (default: a temporary file)")
    parser.add_argument("--only", choices=("champion", "run"), help="one of the two steps (default: both)")
    parser.add_argument("--seed", type=int, default=42, help="the run under test's training seed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        world = args.world or Path(folder) / "world.parquet"
        common = ("run", "fraud", "--data", str(world), "--registered-model", args.registered_model, *COMMON)
        if args.only != "run":
            simulate_transactions(
                n_customers=400, n_terminals=800, n_days=84, seed=5, drift=DRIFT
            ).to_parquet(world)
            code = app([*common, "--end", CHAMPION_END], standalone_mode=False) or 0
            if code != 0 or args.only == "champion":
                return code and 10 + code
        hours = f"{args.timeout / 3600:.6f}"
        run = [*common, *TRADE_OFF, "--seed", str(args.seed), "--approval-hours", hours]
        return app(run, standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
