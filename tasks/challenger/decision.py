"""The decision: what the use case's `ChallengerRule` makes of the evidence, and the alias move it asks for.

judge (pure): wait (too few labelled pairs or positives, saying how many more; or not conclusive yet),
promote (better by at least the rule's gain, the bootstrap interval above zero), retire (the interval
below zero; or still not better after the rule's number of pairs)
act: promote through `champion.challenger.promote_challenger` (the champion's compare-and-set against
the champion the evidence was gathered on), retire through `retire_challenger(expected=...)`; when the
champion or the challenger moved meanwhile nothing moves and the decision is to wait, saying why. With
`decide` off the verdict is reported and nothing moves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from champion.challenger import ChallengerRefused, promote_challenger, retire_challenger
from champion.promotion import StaleChampionError
from tasks.challenger.evidence import Evidence
from tasks.stage import stage


@dataclass(frozen=True)
class Verdict:
    """What the rule says: `action`, why, and for a wait on too little evidence how much more it needs."""

    action: Literal["promote", "retire", "wait"]
    reason: str
    more_pairs: int = 0
    more_positives: int = 0


@dataclass(frozen=True)
class Decision:
    """What happened: `outcome` promoted, retired, waiting (nothing moved) or reported (decide off)."""

    outcome: Literal["promoted", "retired", "waiting", "reported"]
    verdict: Verdict
    reason: str
    champion: str  # the champion after the decision

    @property
    def moved(self) -> bool:
        return self.outcome in ("promoted", "retired")


def _signed(value: float, digits: int = 4) -> str:
    return f"{value:+.{digits}g}"


def summary(e: Evidence) -> str:
    """One line a person reads: the metric for both, the gain, its interval and the rows it rests on."""
    m, champion, challenger = e.metric, e.metrics["champion"], e.metrics["challenger"]
    low, high = e.interval
    positives = f", {e.positives:,} positive" if e.positives is not None else ""
    relative = "" if not math.isfinite(e.relative_gain) else f" ({e.relative_gain:+.1%})"
    return (
        f"{m} {challenger[m]:.4g} (challenger v{e.challenger}) vs {champion[m]:.4g} (champion "
        f"v{e.champion}): gain {_signed(e.gain)}{relative}, {e.rule.confidence:.0%} interval "
        f"{_signed(low)} .. {_signed(high)}, challenger better in {e.win_share:.0%} of "
        f"{e.rule.resamples:,} resamples; on {e.compared:,} labelled pairs{positives}"
    )


def judge(e: Evidence) -> Verdict:
    """The rule's verdict on the evidence (see the module docstring); moves nothing."""
    rule, n = e.rule, e.compared
    more_pairs = max(rule.min_pairs - n, 0)
    more_positives = max(rule.min_positives - (e.positives or 0), 0) if e.problem == "binary" else 0
    if more_pairs or more_positives:
        needs = [f"{more_pairs:,} more labelled pairs"] if more_pairs else []
        needs += [f"{more_positives:,} more positives"] if more_positives else []
        have = f"{n:,} labelled pairs" + (f" ({e.positives:,} positive)" if e.positives is not None else "")
        return Verdict(
            "wait",
            f"not enough evidence yet: {have}; the rule needs {rule.min_pairs:,}"
            + (f" with {rule.min_positives:,} positives" if e.problem == "binary" else "")
            + f", so {' and '.join(needs)}",
            more_pairs,
            more_positives,
        )
    if e.gain is None or e.interval is None or not all(map(math.isfinite, e.interval)):
        return Verdict("wait", f"{e.metric} is undefined on these {n:,} pairs (one class only?)")
    low, high = e.interval
    if high < 0:
        return Verdict("retire", f"worse: {summary(e)}")
    if low > 0 and e.relative_gain >= rule.min_gain:
        return Verdict("promote", f"better: {summary(e)}")
    if rule.retire_after_pairs is not None and n >= rule.retire_after_pairs:
        return Verdict("retire", f"not better after {rule.retire_after_pairs:,} labelled pairs: {summary(e)}")
    needed = f"a gain of at least {rule.min_gain:.1%} with the interval above 0"
    later = f"; retired if not better after {rule.retire_after_pairs:,}" if rule.retire_after_pairs else ""
    return Verdict("wait", f"not conclusive yet ({needed}{later}): {summary(e)}")


@stage
def act(e: Evidence, verdict: Verdict, run_id: str, decide: bool = True) -> Decision:
    """Carry out `verdict` (when `decide`): the promotion or the retirement, or nothing."""
    if not decide:
        return Decision("reported", verdict, f"report only: the rule says {verdict.action}", e.champion)
    if verdict.action == "wait":
        return Decision("waiting", verdict, verdict.reason, e.champion)
    name = e.registered_model
    try:
        if verdict.action == "promote":
            promote_challenger(name, e.challenger, e.champion, verdict.reason, run_id)
            return Decision("promoted", verdict, verdict.reason, e.challenger)
        retired = retire_challenger(name, verdict.reason, by=f"run {run_id}", expected=e.challenger)
    except (StaleChampionError, ChallengerRefused) as exc:
        return Decision("waiting", verdict, f"nothing moved: {exc}", e.champion)
    if retired is None:
        return Decision("waiting", verdict, f"nothing moved: {name} has no challenger any more", e.champion)
    return Decision("retired", verdict, verdict.reason, e.champion)
