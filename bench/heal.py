"""Benchmark: does the weekly loop heal after a new fraud pattern, and does it forget the old ones?

Worlds: the handbook's simulator (`usecases/fraud/simulator.py`) with a 7-day label delay and a weekly run,
without drift and with three concept drifts that start on the same Monday, each a fraud pattern the 15
features can express but no earlier label shows: card testing (scenario 4: bursts of payments under 5),
night raids (scenario 5: bursts of 30-150 payments between 00:00 and 06:59) and bust-out (scenario 6: bursts
of purchases of 150-219.99, just under the 220 rule every earlier label calls genuine). Their rows are added
to the world's, labelled fraud; every row before the drift is the one simulated without it.

Strategies, each a set of overrides of fraud's `Params` (the spec the CLI builds from them): calendar (today):
no refit, replay nor holdout, the model trained on the window that ends 28 days before the newest label is
served; sliding window: that candidate refit on every labelled row up to the newest label (49 days) and
served, no held-out cards (the gates then compare on days neither model trained on, often none: the champion
gate falls back to the test window, the forgetting gate is skipped); refit after gating: the refit with a
tenth of the cards held out of every training; replay + recency: no refit, 56 days of older history replayed
(every fraud, a tenth of the negatives weighted x10) and a 14-day half-life; default loop: fraud's `Params`
defaults as they are in the code (printed with the table).

Each week, per (world, seed, strategy), the stages `mlops run fraud` calls, in the flow's order
(`flows/gated_training.py`): split with the spec's continual settings, `train`, the baseline, scoring
(`tasks.evaluate.score_model`), `refit`, the champion re-scored on the same windows, `compare`, `gate`;
the served model is promoted when the verdict is promotable. A trade-off (`awaiting_approval`) is refused, as
an unattended run refuses it, and counted as sent for approval. The feature table is built once per world
and seed on the whole simulation (features read only labels older than the delay, so they are what each
week would compute); the run on Monday R sees the rows before R - 7 days (the last 7 days have no label: they
are history only, never a target). The runs whose data ends before the drift are shared by all worlds.

Measured, per world and strategy over the seeds, from the first run that sees drifted labels on: plasticity,
the serving champion's average precision on the week after each run (walk-forward, every row, true labels);
the oracle's (the sliding-window recipe with every label up to that week, no delay) and the runs until the
champion is within 0.02 of it (1 = that first run; ">N": never); stability, the same weeks' AP without the
new scenario's rows (old patterns alone), beside the pre-drift champion's (the one serving when the first
drifted labels arrived) on the same rows, their difference being forgetting; the gates' decisions of runs
R1.. (promoted / refused / a trade-off, refused unattended); the fitting time per run (candidate and refit).
The plasticity/stability view of Lebichot et al., ESWA 249 (2024) 123445 (forgetting in card fraud).

Excluded: the registry and Prefect bookkeeping (no MLflow run, registration, alias move nor pause: the stages
are called with `.fn` in this process), the slice gates (`gate(..., slices=None)`), the data checks and the
rolled-back hold. XGBoost runs on one thread (only the time changes: two spin on a shared 2-core machine).
The figures go to bench/results/heal.json (`--out`).

    uv run python bench/heal.py [--seeds 3] [--strategies NAME ...] [--worlds NAME ...] [--variants]
        [--raw PATH] [--out PATH] [--smoke]

`--smoke`: one seed, 300 customers / 600 terminals, the clean and card-testing worlds, four weekly runs,
calendar retraining and the default loop only, the absolute gates off and at most 30 trees; the JSON to a
temporary folder. `--variants`: also a few variants of the default loop, named as such.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the project: bench/serving.py is no `serving`

from _results import add_arguments, document, output_path, render_table, table, write  # noqa: E402

START = pd.Timestamp("2018-04-01")  # the simulator's first day
HEALED = 0.02  # within this much average precision of the oracle
FULL = {
    "sim": {"n_customers": 1000, "n_terminals": 2000},
    # The first run: 37 days of feature warm-up, then the 49 days a split needs, and most of the replay.
    "first_run": 126,
    "runs": 8,  # weekly runs R0 .. R7; the drift starts on R1's Monday
    "worlds": {"no drift": {}, "card testing": {"card_testing_cards_per_day": 30}},
    "options": {},
}
FULL["worlds"].update(
    {"night raids": {"night_raid_cards_per_day": 15}, "bust-out": {"bust_out_cards_per_day": 10}}
)
SMOKE = {
    "sim": {"n_customers": 300, "n_terminals": 600},
    "first_run": 98,
    "runs": 4,
    "worlds": {"no drift": {}, "card testing": {"card_testing_cards_per_day": 10}},
    "options": {"min_average_precision": 0.0, "min_roc_auc": 0.0, "rounds": 30},
    "strategies": ("calendar (today)", "default loop"),  # the smoke proves the code path, not the figures
}
NEW_SCENARIOS = {"card testing": 4, "night raids": 5, "bust-out": 6}
STRATEGIES = {
    "calendar (today)": {"refit": False, "replay": 0, "holdout_share": 0.0, "half_life": None},
    "sliding window": {"refit": True, "replay": 0, "holdout_share": 0.0, "half_life": None},
    "refit after gating": {"refit": True, "replay": 0, "holdout_share": 0.1, "half_life": None},
    "replay + recency": {"refit": False, "replay": 56, "replay_negatives": 0.1, "half_life": 14.0}
    | {"holdout_share": 0.0},
    "default loop": {},
}
VARIANTS = {
    "default, no half-life": {"half_life": None},
    "default, half-life 7": {"half_life": 7.0},
    "default, half-life 28": {"half_life": 28.0},
    "default, replay 28": {"replay": 28},
}
ORACLE = STRATEGIES["sliding window"]
CFG = dict(FULL)


def day(d: int) -> pd.Timestamp:
    return START + pd.Timedelta(days=d)


def run_day(k: int) -> int:
    return CFG["first_run"] + 7 * k


def spec_for(overrides: dict):
    from usecases.fraud import spec as fraud_spec

    spec = fraud_spec.build_spec(fraud_spec.Params(**{**overrides, **CFG["options"]}))
    # One XGBoost thread: on a shared 2-core machine two threads spin against other work (5-10x slower).
    model = replace(spec.model, params={**spec.model.params, "nthread": 1})
    return replace(spec, model=model)


@dataclass
class Served:
    """The champion as the registry would hold it: the model, the days it trained on, its holdout."""

    model: object
    ranges: tuple
    holdout: str
    version: int


@dataclass
class Track:
    """One strategy's history in one world: its champion, each week's decision, AP and fitting time."""

    champion: Served | None = None
    decisions: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    served: list = field(default_factory=list)  # the champion after each run
    refusals: list = field(default_factory=list)  # the gates that refused, per run

    def copy(self) -> Track:
        return Track(
            self.champion, list(self.decisions), list(self.seconds), list(self.served), list(self.refusals)
        )


def world_table(seed: int, kwargs: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """A world's feature table (all rows, all labels) and each row's fraud scenario."""
    from usecases.fraud.simulator import Drift, simulate_transactions

    drift = Drift(day(run_day(1)), **kwargs) if kwargs else None
    n_days = run_day(CFG["runs"])
    raw = simulate_transactions(**CFG["sim"], n_days=n_days, seed=seed, drift=drift)
    features = spec_for({}).build_features(raw)
    scenario = raw.set_index("TRANSACTION_ID")["TX_FRAUD_SCENARIO"].reindex(features["TRANSACTION_ID"])
    return features, scenario.to_numpy()


def known(features: pd.DataFrame, k: int, delay: int = 7) -> pd.DataFrame:
    """What the run on Monday R_k trains on: the rows whose label is known by then (before R_k - delay);
    the later rows were history for the features, never a target (`with_known_target`)."""
    from tasks.split import with_known_target

    cut = features[features["TX_DATETIME"] < day(run_day(k) - delay)]
    return with_known_target(cut, "TX_FRAUD").reset_index(drop=True)


def candidate_for(spec, splits, seed: int, cache: dict, key) -> tuple:
    """The candidate, its baseline and their scores (shared by strategies that train alike)."""
    from tasks.evaluate import Evaluation, score_model
    from tasks.train import train

    if key in cache:
        return cache[key]
    started = time.perf_counter()
    candidate = train.fn(splits, spec.model, spec.schema, spec.split, seed)
    seconds = time.perf_counter() - started
    baselines = {
        b.name: score_model(b.fit(splits.train, list(spec.features), spec.target), splits, spec.metrics)
        for b in spec.baselines
    }
    evaluation = Evaluation(score_model(candidate.predict, splits, spec.metrics), baselines)
    cache[key] = (candidate, evaluation, seconds)
    return cache[key]


def weekly_run(spec, table_k: pd.DataFrame, track: Track, seed: int, cache: dict, key) -> None:
    """One weekly run in the flow's order; the champion moves when the verdict is promotable."""
    from tasks.compare import compare
    from tasks.evaluate import ChampionScore, score_model
    from tasks.gate import gate
    from tasks.lineage import format_ranges
    from tasks.refit import refit
    from tasks.split import split_frame
    from usecases.vocabulary import HOLDOUT_TAG, TRAINED_ON_TAG

    splits = split_frame(table_k, spec.split, spec.time_column, spec.target, spec.test_filter, spec.continual)
    continual = spec.continual
    trained_alike = replace(continual, refit=False)  # the refit flag does not change the candidate
    candidate, evaluation, seconds = candidate_for(spec, splits, seed, cache, (*key, trained_alike))
    started = time.perf_counter()
    refitted = refit.fn(candidate, table_k, splits, evaluation, spec)
    served, judged = refitted.served, refitted.evaluation or evaluation
    seconds += time.perf_counter() - started
    champion = ChampionScore(None)
    if track.champion is not None:
        c = track.champion
        scored = score_model(c.model.predict, splits, spec.metrics)
        tags = {TRAINED_ON_TAG: format_ranges(c.ranges), HOLDOUT_TAG: c.holdout}
        champion = ChampionScore(str(c.version), scored.metrics, scored=scored, model=c.model, tags=tags)
    context = evaluation.candidate.context
    comparison = compare.fn(spec, table_k, splits, served, context, champion, 3)
    verdict = gate.fn(spec.gates, spec.metrics, judged, champion, comparison, None)
    if verdict.promotable:
        holdout = continual.holdout.label if continual.holdout is not None else ""
        version = 1 + (track.champion.version if track.champion else 0)
        track.champion = Served(served, tuple(served.trained_on), holdout, version)
        track.decisions.append("promoted")
    else:
        track.decisions.append("approval" if verdict.awaiting_approval else "refused")
    track.seconds.append(seconds)
    track.refusals.append([r.name for r in verdict.refusals])
    track.served.append(track.champion)


def oracle(features: pd.DataFrame, k: int, seed: int):
    """The sliding-window recipe with every label up to the evaluated week (no delay): what the loop could
    at best serve that week."""
    from tasks.evaluate import Evaluation, score_model
    from tasks.refit import refit
    from tasks.split import split_frame
    from tasks.train import train

    spec = spec_for(ORACLE)
    table_k = known(features, k, delay=0)
    splits = split_frame(table_k, spec.split, spec.time_column, spec.target, spec.test_filter, spec.continual)
    candidate = train.fn(splits, spec.model, spec.schema, spec.split, seed)
    scored = Evaluation(score_model(candidate.predict, splits, spec.metrics), {})  # no holdout: not judged
    return refit.fn(candidate, table_k, splits, scored, spec).served


def week_rows(features: pd.DataFrame, scenario: np.ndarray, k: int, new: int | None):
    """The week after run k: its rows, and which of them are old patterns (not the new scenario)."""
    times = features["TX_DATETIME"]
    inside = ((times >= day(run_day(k))) & (times < day(run_day(k) + 7))).to_numpy()
    rows = features[inside]
    old = np.ones(len(rows), dtype=bool) if new is None else scenario[inside] != new
    return rows, old


def ap(model, rows: pd.DataFrame) -> float:
    from sklearn.metrics import average_precision_score

    y = rows["TX_FRAUD"].to_numpy()
    if model is None or y.min() == y.max():
        return float("nan")
    return float(average_precision_score(y, np.asarray(model.predict(rows), float)))


def first_known() -> int:
    """The first run that sees drifted labels: its data (labels before R_k - 7) reaches past R_1."""
    return next(k for k in range(CFG["runs"]) if run_day(k) - 7 > run_day(1))


def run_seed(seed: int, strategies: dict) -> dict:
    """Every world and strategy for one seed: per world and strategy, per run, what was measured."""
    shared = first_known()  # runs before it see only pre-drift data: the same in every world
    out: dict = {}
    tables = {name: world_table(seed, kwargs) for name, kwargs in CFG["worlds"].items()}
    clean = tables["no drift"][0]
    prefix: dict[str, Track] = {}
    cache: dict = {}
    for name, overrides in strategies.items():
        started, track, spec = time.perf_counter(), Track(), spec_for(overrides)
        for k in range(shared):
            weekly_run(spec, known(clean, k), track, seed, cache, ("shared", k))
        prefix[name] = track
        print(
            f"  seed {seed}, {name}: runs R0..R{shared - 1} (all worlds) {time.perf_counter() - started:.0f}s"
        )
    for world, (features, scenario) in tables.items():
        new = NEW_SCENARIOS.get(world)
        oracles = {}
        if new is not None:
            oracles = {k: oracle(features, k, seed) for k in range(shared, CFG["runs"])}
        for name, overrides in strategies.items():
            started, track, spec = time.perf_counter(), prefix[name].copy(), spec_for(overrides)
            for k in range(shared, CFG["runs"]):
                weekly_run(spec, known(features, k), track, seed, cache, (world, k))
            out[(world, name)] = measure(features, scenario, new, track, oracles)
            print(
                f"  seed {seed}, {world}, {name}: {track.decisions[shared:]} "
                f"{time.perf_counter() - started:.0f}s",
                flush=True,
            )
    return out


def measure(features, scenario, new, track: Track, oracles: dict) -> dict:
    """Per run from the first that sees drifted labels: AP on the week after, the oracle's, and AP on the
    old patterns for this champion and the pre-drift one."""
    shared = first_known()
    before = track.served[shared - 1]
    rows_out = []
    for k in range(shared, CFG["runs"]):
        rows, old = week_rows(features, scenario, k, new)
        model = track.served[k].model if track.served[k] else None
        oracle_ap = ap(oracles[k], rows) if k in oracles else None
        before_ap = ap(before.model if before else None, rows[old])
        rows_out.append({"run": k, "ap": ap(model, rows), "oracle": oracle_ap, "old": ap(model, rows[old])})
        rows_out[-1]["old_before"] = before_ap
    # R0 has no champion to beat: the decisions counted are those of R1 on, the weekly runs with one.
    return {
        "weeks": rows_out,
        "decisions": track.decisions[1:],
        "refusals": track.refusals[1:],
        "seconds": track.seconds,
    }


def healed_after(weeks: list[dict]) -> int | None:
    """Runs from the first with drifted labels until the champion is within HEALED of the oracle."""
    for i, w in enumerate(weeks, 1):
        if w["oracle"] is not None and w["ap"] >= w["oracle"] - HEALED:
            return i
    return None


def summarise(results: list[dict], strategies: dict) -> tuple[list[list], list[list]]:
    """The summary table (world x strategy, over seeds) and the week-by-week one."""
    summary, weekly = [], []
    for world in CFG["worlds"]:
        for name in strategies:
            per_seed = [r[(world, name)] for r in results if (world, name) in r]
            weeks = [w for s in per_seed for w in s["weeks"]]
            mean = lambda key, ws=weeks: float(np.nanmean([w[key] for w in ws]))  # noqa: E731
            heal = [healed_after(s["weeks"]) for s in per_seed]
            runs = CFG["runs"] - first_known()
            decisions = [d for s in per_seed for d in s["decisions"]]
            summary.append(
                [
                    world,
                    name,
                    mean("ap"),
                    mean("oracle") if world in NEW_SCENARIOS else None,
                    ", ".join(str(h) if h else f">{runs}" for h in heal) if world in NEW_SCENARIOS else None,
                    mean("old"),
                    mean("old_before"),
                    mean("old") - mean("old_before"),
                    [decisions.count("promoted"), decisions.count("refused"), decisions.count("approval")],
                    float(np.mean([t for s in per_seed for t in s["seconds"]])),
                ]
            )
            by_week = [float(np.nanmean([s["weeks"][i]["ap"] for s in per_seed])) for i in range(runs)]
            weekly.append([world, name, *by_week])
        if world in NEW_SCENARIOS:
            per_seed = [r[(world, next(iter(strategies)))] for r in results]
            oracle_weeks = [float(np.mean([s["weeks"][i]["oracle"] for s in per_seed])) for i in range(runs)]
            weekly.append([world, "oracle (no label delay)", *oracle_weeks])
    return summary, weekly


def checks(summary: list[list], seeds: int) -> list[list]:
    """The issue's three criteria for the default loop, read off the summary."""
    rows = {(r[0], r[1]): r for r in summary}
    out = []
    default = rows.get(("card testing", "default loop"))
    if default:
        heal = default[4].split(", ")
        ok = all(h.isdigit() and int(h) <= 2 for h in heal)
        out.append(
            ["card testing: healed within two runs of the first drifted labels, every seed", ok, default[4]]
        )
    clean, calendar = rows.get(("no drift", "default loop")), rows.get(("no drift", "calendar (today)"))
    if clean and calendar:
        out.append(
            [
                "no drift: AP not lower than calendar retraining",
                clean[2] >= calendar[2],
                f"{clean[2]:.3f} vs {calendar[2]:.3f}",
            ]
        )
    for world in CFG["worlds"]:
        r = rows.get((world, "default loop"))
        if r:
            out.append(
                [
                    f"{world}: old-pattern AP within 0.02 of the pre-drift champion",
                    r[7] >= -0.02,
                    f"{r[7]:+.3f}",
                ]
            )
    return out


def tables_for(summary, weekly, check_rows, seeds: int, took: float) -> dict:
    runs = CFG["runs"] - first_known()
    first = first_known()
    sim = CFG["sim"]
    defaults = {k: v for k, v in spec_for({}).continual.__dict__.items() if k != "approval_timeout"}
    setup = (
        f"{seeds} seed(s); simulator with {sim['n_customers']:,} customers and {sim['n_terminals']:,} "
        f"terminals, {run_day(CFG['runs'])} days from {START.date()}; weekly runs "
        f"R0..R{CFG['runs'] - 1} from {day(run_day(0)).date()}, the drift from R1 "
        f"({day(run_day(1)).date()}); the weeks after runs "
        f"R{first}..R{CFG['runs'] - 1} ({runs} weeks: R{first} is the first run that sees drifted labels); "
        f"drifts per day: "
        + ", ".join(f"{w}: {k}" for w, k in CFG["worlds"].items() if k)
        + f"; default loop: {defaults}; {took / 60:.0f} min on this machine"
    )
    return {
        "summary": table(
            "Healing: plasticity (new weeks) against stability (old patterns), per world and strategy",
            [
                "world",
                "strategy",
                {"name": "AP, weeks after (plasticity)", "format": ".3f"},
                {"name": "oracle AP", "format": ".3f"},
                "runs to heal, per seed",
                {"name": "AP old patterns (stability)", "format": ".3f"},
                {"name": "pre-drift champion, same rows", "format": ".3f"},
                {"name": "forgetting", "format": "+.3f"},
                {"name": "gates: promoted / refused / for approval", "format": "{:d} / {:d} / {:d}"},
                {"name": "fit s per run", "format": ".1f"},
            ],
            summary,
            method=setup,
            excluded="registry and Prefect bookkeeping, slice gates, data checks (stages called in-process)",
            notes=[
                "AP: average precision of the serving champion on every row of the week after each run "
                "(walk-forward), mean over those weeks and the seeds",
                "oracle: the sliding-window recipe with every label up to the evaluated week (no delay); "
                f"runs to heal: the first run (1 = R{first}) whose champion is within {HEALED} of it",
                "old patterns: the same weeks without the new scenario's rows; pre-drift champion: the one "
                f"serving after R{first - 1}, the last run without drifted labels; forgetting: the "
                "difference (negative: forgot)",
                "gates: every weekly run R1.. of every seed; for approval: a trade-off, refused unattended",
            ],
        ),
        "weekly": table(
            "Healing: average precision of the serving champion, week by week (mean over seeds)",
            ["world", "strategy", *({"name": f"after R{first + i}", "format": ".3f"} for i in range(runs))],
            weekly,
            method=setup,
        ),
        "checks": table(
            "Healing: the issue's criteria for the default loop",
            ["criterion", "met", "figures"],
            check_rows,
        ),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategies", nargs="*", default=None, help="names of strategies (default all)")
    parser.add_argument("--variants", action="store_true", help="also variants of the default loop")
    parser.add_argument("--worlds", nargs="*", default=None, help="names of worlds (default all)")
    parser.add_argument("--raw", type=Path, default=None, help="also every week's figures, as JSON, here")
    add_arguments(parser, "heal")
    args = parser.parse_args(argv)
    CFG.clear()
    CFG.update(SMOKE if args.smoke else FULL)
    every = {**STRATEGIES, **(VARIANTS if args.variants else {})}
    chosen = args.strategies if args.strategies is not None else CFG.get("strategies")
    strategies = {k: v for k, v in every.items() if chosen is None or k in chosen}
    unknown = set(args.strategies or ()) - set(every)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}; known: {sorted(every)}")
    unknown = set(args.worlds or ()) - set(CFG["worlds"])
    if unknown or (args.worlds is not None and "no drift" not in args.worlds):
        parser.error(f'--worlds: {sorted(CFG["worlds"])}, "no drift" among them (the shared runs use it)')
    if args.worlds is not None:
        CFG["worlds"] = {k: v for k, v in CFG["worlds"].items() if k in args.worlds}
    seeds = 1 if args.smoke else args.seeds
    out = output_path(args, "heal")
    started = time.perf_counter()
    results = []
    for seed in range(seeds):
        print(f"seed {seed}:", flush=True)
        results.append(run_seed(seed, strategies))
        if args.raw is not None:  # every week's figures, to read beyond the tables
            args.raw.write_text(json.dumps([{" | ".join(k): v for k, v in r.items()} for r in results]))
    took = time.perf_counter() - started
    summary, weekly = summarise(results, strategies)
    tables = tables_for(summary, weekly, checks(summary, seeds), seeds, took)
    for t in tables.values():
        print(f"\n{t['title']}\n\n{render_table(t)}")
    flags = " --smoke" if args.smoke else f" --seeds {seeds}" + (" --variants" if args.variants else "")
    doc = document("heal", "uv run python bench/heal.py" + flags, tables, smoke=args.smoke)
    write(out, doc)
    return doc


if __name__ == "__main__":
    main()
