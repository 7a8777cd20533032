"""The Fraud Detection Handbook's 15 baseline features, vectorised.

Chapter 3.4 "Baseline feature transformation" of Le Borgne et al. computes them with a pandas
groupby-apply over customers and terminals (~1 minute on the 1.75 M handbook transactions). Here every
entity is handled at once: rows are sorted by (entity, time), each rolling window's first row comes from
one `np.searchsorted` over entity-offset keys, and counts/sums are differences of cumulative sums.

Window semantics are pandas' time-based `rolling(f"{N}d")` on a frame sorted by (TX_DATETIME,
TRANSACTION_ID): the window of a row covers (t - N days, t] and contains the rows of that interval that
come up to and including the row itself in that order. So with tied timestamps a row sees the tied rows
sorted before it (smaller TRANSACTION_ID) and not those after it; the handbook sorts with an unstable
quicksort, which leaves that order arbitrary, so we fix it by TRANSACTION_ID.

Labels arrive late (the delay), so at scoring or monitoring time the newest rows may have no label yet:
TX_FRAUD may hold missing values, or be absent altogether. Terminal risks read only known labels; with
the usual delay the unknown labels are the ones the features would not have read anyway.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

WINDOWS: tuple[int, ...] = (1, 7, 30)

FEATURES: tuple[str, ...] = (
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    *(f"CUSTOMER_ID_{kind}_{n}DAY_WINDOW" for n in WINDOWS for kind in ("NB_TX", "AVG_AMOUNT")),
    *(f"TERMINAL_ID_{kind}_{n}DAY_WINDOW" for n in WINDOWS for kind in ("NB_TX", "RISK")),
)

KEYS: tuple[str, ...] = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_FRAUD")
LABEL = "TX_FRAUD"

_NS_PER_DAY = 86_400 * 1_000_000_000
_NS_PER_HOUR = 3_600 * 1_000_000_000


def build_features(transactions: pd.DataFrame, delay_days: int = 7) -> pd.DataFrame:
    """Return KEYS + FEATURES, one row per transaction, sorted by (TX_DATETIME, TRANSACTION_ID).

    - TX_DURING_WEEKEND: weekday >= 5; TX_DURING_NIGHT: hour <= 6 (00:00-06:59), both 0/1 int64.
    - CUSTOMER_ID_NB_TX / _AVG_AMOUNT_{N}DAY_WINDOW: count and mean TX_AMOUNT of the customer's
      transactions in (t - N days, t], the current one included.
    - TERMINAL_ID_NB_TX / _RISK_{N}DAY_WINDOW: the terminal's transactions in (t - (D + N) days, t - D days]
      (computed, as in the handbook, as the (D + N)-day rolling window minus the D-day one) and the share
      of them that are fraud (0 when there are none). Labels only become usable `delay_days` after the
      transaction, so neither a row's own label nor any label from the last D days is ever read. With
      D = 0 the handbook's formula (pandas' "0D" window holds only the row itself) gives the rows of
      (t - N days, t] sorted before the current one: all labels so far except its own.

    Unknown labels: TX_FRAUD may contain missing values (NaN, None, pd.NA), or be absent (every label
    unknown). RISK is then known frauds / transactions with a known label in the window (0 when no label
    there is known); NB_TX still counts every transaction. When every label is known this is exactly the
    above. The returned TX_FRAUD keeps the input's column as it is (absent: all NaN, float64; object
    with missing values: float64), so a fully labelled int64 column stays int64.

    Only the KEYS columns and TX_AMOUNT are read; other columns (TX_FRAUD_SCENARIO in particular, the
    simulator's answer key) are ignored and never returned. TX_AMOUNT and TX_DATETIME must be complete.
    """
    transactions, delay_days = _checked(transactions, delay_days)
    times = transactions["TX_DATETIME"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    order = np.lexsort((transactions["TRANSACTION_ID"].to_numpy(), times))
    frame = transactions[list(KEYS)].iloc[order].reset_index(drop=True)
    t = times[order]
    amount = transactions["TX_AMOUNT"].to_numpy(dtype=np.float64)[order]
    fraud = pd.to_numeric(transactions[LABEL]).to_numpy(dtype=np.float64, na_value=np.nan)[order]

    out: dict[str, np.ndarray] = {"TX_AMOUNT": amount}
    weekend, night = calendar_flags(t)
    out["TX_DURING_WEEKEND"] = weekend.astype(np.int64)
    out["TX_DURING_NIGHT"] = night.astype(np.int64)
    out.update(_customer_features(frame["CUSTOMER_ID"].to_numpy(), t, amount))
    out.update(_terminal_features(frame["TERMINAL_ID"].to_numpy(), t, fraud, delay_days))

    for name in FEATURES:
        frame[name] = out[name]
    return frame


def calendar_flags(t):
    """(weekend, night) for int64 nanosecond times, arrays or scalars: weekday >= 5, hour <= 6."""
    days_since_epoch = t // _NS_PER_DAY
    weekend = (days_since_epoch + 3) % 7 >= 5  # 1970-01-01 was a Thursday
    night = (t - days_since_epoch * _NS_PER_DAY) // _NS_PER_HOUR <= 6
    return weekend, night


def online_features(event, earlier, delay_days: int) -> dict[str, float]:
    """The 15 features of one transaction from its card's and terminal's earlier events, the model server's
    path (`usecases.spec.OnlineSpec`): the windows of `build_features`, one row at a time.

    `event` has `t` (int64 ns), `id`, TX_AMOUNT; `earlier["CUSTOMER_ID"]` / `earlier["TERMINAL_ID"]` hold that
    card's and terminal's events sorted before it in (time, id) order, with `t`, TX_AMOUNT and `label` (NaN:
    not known yet). Equal to `build_features` on the same rows (tests/flow/test_realtime.py replays data).
    """
    t = int(event["t"])
    amount = float(event["TX_AMOUNT"])
    weekend, night = calendar_flags(t)
    out = {"TX_AMOUNT": amount, "TX_DURING_WEEKEND": float(weekend), "TX_DURING_NIGHT": float(night)}
    card = earlier["CUSTOMER_ID"]
    for n in WINDOWS:
        inside = card["t"] > t - n * _NS_PER_DAY  # (t - N days, t], the event itself included below
        nb_tx = int(inside.sum()) + 1
        out[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = float(nb_tx)
        spent = float(card["TX_AMOUNT"][inside].sum()) + amount
        out[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = spent / nb_tx
    terminal = earlier["TERMINAL_ID"]
    behind = terminal["t"] <= t - delay_days * _NS_PER_DAY  # with no delay: every earlier event
    for n in WINDOWS:
        inside = behind & (terminal["t"] > t - (delay_days + n) * _NS_PER_DAY)
        labels = terminal["label"][inside]
        known = ~np.isnan(labels)
        nb_known = int(known.sum())
        out[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = float(inside.sum())
        out[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = float(labels[known].sum()) / nb_known if nb_known else 0.0
    return out


def _checked(transactions: pd.DataFrame, delay_days: int) -> tuple[pd.DataFrame, int]:
    """The input with its label column as `build_features` reads it, or a ValueError saying what is wrong."""
    if int(delay_days) != delay_days or delay_days < 0:
        raise ValueError(f"delay_days must be a non-negative integer, got {delay_days!r}")
    required = [*(c for c in KEYS if c != LABEL), "TX_AMOUNT"]
    missing = [c for c in required if c not in transactions.columns]
    if missing:
        raise ValueError(f"transactions lacks columns {missing}")
    for column in ("TX_AMOUNT", "TX_DATETIME"):
        n_missing = int(transactions[column].isna().sum())
        if n_missing:
            raise ValueError(f"{column} must not contain missing values ({n_missing:,} missing)")
    if LABEL not in transactions.columns:
        transactions = transactions.assign(**{LABEL: np.nan})
    elif transactions[LABEL].dtype == object and transactions[LABEL].isna().any():
        transactions = transactions.assign(**{LABEL: pd.to_numeric(transactions[LABEL]).astype(np.float64)})
    return transactions, int(delay_days)


def _customer_features(customers: np.ndarray, t: np.ndarray, amount: np.ndarray) -> dict[str, np.ndarray]:
    """CUSTOMER_ID_NB_TX / _AVG_AMOUNT_{N}DAY_WINDOW, in the time order of `t`."""
    out = {}
    customer = _RollingWindows(customers, t)
    amount_cumsum = customer.cumsum_within_entity(amount)
    for n in WINDOWS:
        first = customer.window_start(n * _NS_PER_DAY)
        nb_tx = (customer.position - first + 1).astype(np.float64)
        total = amount_cumsum - np.where(first > customer.entity_start, amount_cumsum[first - 1], 0.0)
        out[f"CUSTOMER_ID_NB_TX_{n}DAY_WINDOW"] = customer.scatter(nb_tx)
        out[f"CUSTOMER_ID_AVG_AMOUNT_{n}DAY_WINDOW"] = customer.scatter(total / nb_tx)
    return out


def _terminal_features(
    terminals: np.ndarray, t: np.ndarray, fraud: np.ndarray, delay_days: int
) -> dict[str, np.ndarray]:
    """TERMINAL_ID_NB_TX / _RISK_{N}DAY_WINDOW behind the label delay, in the time order of `t`; `fraud`
    holds NaN where the label is unknown."""
    out = {}
    known = ~np.isnan(fraud)
    terminal = _RollingWindows(terminals, t)
    # Known frauds and known labels before each row in entity order (exclusive prefixes): labels are 0/1,
    # float sums stay exact. An unknown label counts in neither.
    fraud_before = np.concatenate(([0.0], np.cumsum(np.where(known, fraud, 0.0)[terminal.order])))
    known_before = np.concatenate(([0], np.cumsum(known[terminal.order])))
    # pandas' rolling("0D") holds just the row itself, so with no delay the window is the rows before it.
    delay_first = terminal.window_start(delay_days * _NS_PER_DAY) if delay_days else terminal.position
    for n in WINDOWS:
        first = terminal.window_start((delay_days + n) * _NS_PER_DAY)
        # Rows [first, delay_first) in entity order: time in (t - (D + N), t - D], all strictly before
        # the current row, so its own label never enters.
        nb_tx = (delay_first - first).astype(np.float64)
        nb_fraud = fraud_before[delay_first] - fraud_before[first]
        nb_known = (known_before[delay_first] - known_before[first]).astype(np.float64)  # nb_tx if all known
        risk = np.divide(nb_fraud, nb_known, out=np.zeros_like(nb_known), where=nb_known > 0)
        out[f"TERMINAL_ID_NB_TX_{n}DAY_WINDOW"] = terminal.scatter(nb_tx)
        out[f"TERMINAL_ID_RISK_{n}DAY_WINDOW"] = terminal.scatter(risk)
    return out


class _RollingWindows:
    """Time-based rolling windows for every entity at once, on rows already sorted by time.

    `order` is a stable sort by entity of the time-sorted rows, so within an entity rows stay in
    (time, TRANSACTION_ID) order. Times are replaced by their dense rank among the distinct times, which
    keeps comparisons exact (int64 nanoseconds) while leaving room to offset each entity by
    (number of distinct times + 1): then keys increase along `order` and one searchsorted over all rows
    finds, for every row, the first row of its entity inside its window.
    """

    def __init__(self, entity: np.ndarray, t: np.ndarray) -> None:
        """`entity`: ids per row; `t`: int64 nanosecond times, non-decreasing (rows sorted by time)."""
        codes, _ = pd.factorize(entity, sort=False)
        self.order = np.argsort(codes, kind="stable")
        self.position = np.arange(t.size)
        new_time = np.concatenate(([True], t[1:] != t[:-1])) if t.size else np.zeros(0, dtype=bool)
        self._distinct_times = t[new_time]
        time_rank = np.cumsum(new_time)  # 1-based rank of each (sorted) time among the distinct times
        self._t_sorted = t
        self._offset = codes[self.order].astype(np.int64) * (self._distinct_times.size + 1)
        self._keys = self._offset + time_rank[self.order]
        self._codes_sorted = codes_sorted = codes[self.order]
        is_start = np.concatenate(([True], codes_sorted[1:] != codes_sorted[:-1])) if t.size else new_time
        self.entity_start = np.maximum.accumulate(np.where(is_start, self.position, 0))

    def window_start(self, width_ns: int) -> np.ndarray:
        """For each row in entity order, the position of the first row of its entity with time > t - width."""
        # Queried in time order (monotone, hence cache-friendly), then moved to entity order.
        rank_at_most = np.searchsorted(self._distinct_times, self._t_sorted - width_ns, side="right")
        return np.searchsorted(self._keys, self._offset + rank_at_most[self.order], side="right")

    def cumsum_within_entity(self, values: np.ndarray) -> np.ndarray:
        """Inclusive cumulative sum per entity, in entity order (per-entity restart: small rounding)."""
        return pd.Series(values[self.order]).groupby(self._codes_sorted, sort=False).cumsum().to_numpy()

    def scatter(self, values: np.ndarray) -> np.ndarray:
        """Back from entity order to time order."""
        result = np.empty_like(values)
        result[self.order] = values
        return result
