"""The 15 handbook features in words, each with the comparison an analyst would make.

`UseCaseSpec.reason`: (feature, the row's feature values by name) -> one sentence, for the features with
the largest contributions to a score (tasks/explain.py picks them). The amount is set against the
customer's 30-day average, a short window's spend or count against the 30-day one, a terminal's fraud share
given in % with the transactions behind it. Terminal features read only labels older than the label delay
(the features' definition), so their sentences say "behind the label delay". A value the row lacks is
"unknown"; a comparison whose base is missing or zero is left out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

_WINDOW = re.compile(r"^(CUSTOMER_ID|TERMINAL_ID)_(NB_TX|AVG_AMOUNT|RISK)_(\d+)DAY_WINDOW$")
_LONG = 30  # the window short ones are compared with


def reason_text(feature: str, row: Mapping[str, float]) -> str:
    """A sentence for one handbook feature of one transaction, e.g. "customer's 1-day average spend
    412.50, 4.2x its 30-day average (98.10)"."""
    value = _number(row.get(feature))
    match = _WINDOW.match(feature)
    if value is None:
        return f"{feature} unknown"
    if feature == "TX_AMOUNT":
        return f"amount {value:,.2f}" + _times(value, _number(row.get(_name("CUSTOMER_ID", "AVG_AMOUNT"))))
    if feature == "TX_DURING_WEEKEND":
        return "made at the weekend" if value else "made on a weekday"
    if feature == "TX_DURING_NIGHT":
        return "made at night (00:00-06:59)" if value else "made in the daytime (07:00-23:59)"
    if match is None:
        return f"{feature} = {value:g}"
    entity, kind, days = match.group(1), match.group(2), int(match.group(3))
    if entity == "CUSTOMER_ID":
        return _customer(kind, days, value, row)
    return _terminal(kind, days, value, row)


def _customer(kind: str, days: int, value: float, row: Mapping[str, float]) -> str:
    if kind == "NB_TX":
        return (
            f"customer made {_count(value)} transaction{'s' * (value != 1)} in the last {_days(days)}"
            + _rate(value, days, row, "CUSTOMER_ID", "its")
        )
    spend = f"customer's {days}-day average spend {value:,.2f}"
    if days < _LONG:
        return spend + _times(value, _number(row.get(_name("CUSTOMER_ID", "AVG_AMOUNT"))), "its")
    amount = _number(row.get("TX_AMOUNT"))
    if amount is None or value <= 0:
        return spend
    return f"{spend}; this amount ({amount:,.2f}) is {amount / value:.1f}x it"


def _terminal(kind: str, days: int, value: float, row: Mapping[str, float]) -> str:
    window = f"the {_days(days)} behind the label delay"
    if kind == "NB_TX":
        return f"terminal had {_count(value)} transaction{'s' * (value != 1)} in {window}" + _rate(
            value, days, row, "TERMINAL_ID", "its"
        )
    count = _number(row.get(_name("TERMINAL_ID", "NB_TX", days)))
    if count == 0:
        return f"terminal had no transactions in {window}: no fraud share known (0 %)"
    behind = f" ({_count(count)} transaction{'s' * (count != 1)})" if count is not None else ""
    text = f"terminal's fraud share {100 * value:.1f} % over {window}{behind}"
    longer = _number(row.get(_name("TERMINAL_ID", "RISK")))
    if days < _LONG and longer is not None:
        text += f"; {100 * longer:.1f} % over {_LONG} days"
    return text


def _name(entity: str, kind: str, days: int = _LONG) -> str:
    return f"{entity}_{kind}_{days}DAY_WINDOW"


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _days(days: int) -> str:
    return "day" if days == 1 else f"{days} days"


def _times(value: float, base: float | None, whose: str = "the customer's") -> str:
    """The comparison with a 30-day average (", 4.2x its 30-day average (98.10)"); none without a base."""
    if base is None or base <= 0:
        return ""
    return f", {value / base:.1f}x {whose} {_LONG}-day average ({base:,.2f})"


def _rate(value: float, days: int, row: Mapping[str, float], entity: str, whose: str) -> str:
    """A short window's count as a daily rate against the 30-day one."""
    if days >= _LONG:
        return f" ({value / days:.1f} a day)"
    longer = _number(row.get(_name(entity, "NB_TX")))
    if longer is None or longer <= 0:
        return ""
    rate, base = value / days, longer / _LONG
    per_day = f"{rate:.1f} a day, " if days > 1 else ""
    return f" ({per_day}{rate / base:.1f}x {whose} {_LONG}-day daily rate of {base:.1f})"
