"""Vectorised re-implementation of the Fraud Detection Handbook's transaction simulator.

Le Borgne et al., "Reproducible Machine Learning for Credit Card Fraud Detection - Practical Handbook",
chapter 3 "Transaction data simulator". The handbook loops in Python over customers, days and
transactions (minutes at its 5,000 customers x 183 days size); this version draws everything as numpy
arrays from one seeded generator, so the handbook-sized table takes a couple of seconds.

The output follows the handbook's *distributions* and fraud scenarios, not its exact random stream (the
handbook re-seeds per customer and per fraud-injection day); rows, fraud rate and scenario mix match the
published table statistically, not row for row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

SECONDS_PER_DAY = 86_400

COLUMNS: tuple[str, ...] = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_TIME_SECONDS",
    "TX_TIME_DAYS",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)

# Handbook constants (chapter 3.2/3.3).
_FRAUD_AMOUNT_THRESHOLD = 220.0
_TERMINALS_PER_DAY, _TERMINAL_COMPROMISE_DAYS = 2, 28
_CUSTOMERS_PER_DAY, _CUSTOMER_COMPROMISE_DAYS = 3, 14
_CUSTOMER_FRAUD_AMOUNT_FACTOR = 5

# Card testing (drift scenario 4): a burst of 3-10 small payments, 5 s to 2 min apart, at random terminals.
CARD_TESTING_SCENARIO = 4
_CARD_TESTING_BURST = (3, 10)
_CARD_TESTING_GAP_SECONDS = (5, 120)


@dataclass(frozen=True)
class _Burst:
    """A concept drift made of bursts: per day, distinct cards each get `size` payments `gap` seconds apart
    (inclusive ranges), within `hours` [start, end) seconds of the day, at random terminals."""

    scenario: int
    size: tuple[int, int]
    gap: tuple[int, int]
    hours: tuple[int, int]


# Night raids (drift scenario 5): 3-8 mid-sized payments, 1-20 min apart, between 00:00 and 06:59 (the night
# flag). Bust-out (drift scenario 6): 4-10 purchases just under scenario 1's 220, 5-45 min apart, 08:00-20:00.
NIGHT_RAID_SCENARIO, BUST_OUT_SCENARIO = 5, 6
_NIGHT_RAID = _Burst(NIGHT_RAID_SCENARIO, (3, 8), (60, 1200), (1, 7 * 3600))
_BUST_OUT = _Burst(BUST_OUT_SCENARIO, (4, 10), (300, 2700), (8 * 3600, 20 * 3600))


@dataclass(frozen=True)
class Drift:
    """A change of the simulated world from `start` on, for `simulate_transactions(..., drift=Drift(...))`.

    Drift applies to the simulated days that begin at or after `start` (day d begins at
    start_date + d days); every transaction before that is exactly the one simulated without drift
    (same rows, same TRANSACTION_IDs, same labels). Each kind draws from a random stream of its own,
    derived from the simulation's seed, so turning one on does not change what another draws.

    Covariate drift (the fraud rules stay the same):
    - amount_factor: genuine spending is multiplied by this factor (rounded to cents) before the fraud
      scenarios run, so scenario 1 (amount > 220) still applies to the new amounts.
    - hour_shift: times of day move by this many hours, wrapping around within the day (00:00:01 to
      23:59:59): e.g. -6 moves the midday peak to 06:00, a good part of the activity into the night.
    - new_terminal_share: new terminals open at `start` (round(share * n_terminals) of them, at least one,
      ids n_terminals, n_terminals + 1, ...): each transaction moves, with this probability, to the new
      terminal nearest its customer. New terminals are never compromised by scenario 2.
    - new_customer_share: new customers (ids n_customers, ...) with the handbook's profiles start to
      transact at `start`, as many as make up about this share of the transactions from then on. They
      are never compromised by scenario 3 (scenario 2 does take their payments at compromised terminals).

    Concept drift:
    - card_testing_cards_per_day: a new fraud scenario (TX_FRAUD_SCENARIO 4, the features have never
      seen it): each day, this many distinct cards (any customer) are tested by fraudsters with a burst
      of 3 to 10 payments of less than `card_testing_max_amount`, 5 s to 2 min apart, at random
      terminals. These rows are added to the simulated ones and labelled fraud.
    - night_raid_cards_per_day: scenario 5: each day, this many distinct cards are raided at night: a
      burst of 3 to 8 payments of `night_raid_amounts` (uniform, rounded to cents), 1 to 20 min apart,
      all between 00:00 and 06:59, at random terminals. Genuine payments of such amounts happen at night
      too (about a fifth of all payments are at night); what no earlier label shows is the burst at night.
    - bust_out_cards_per_day: scenario 6: each day, this many distinct cards are "busted out": 4 to 10
      purchases of `bust_out_amounts`, just under scenario 1's 220 (every earlier label there says
      genuine), 5 to 45 min apart between 08:00 and 20:00, at random terminals.
    Each concept drift adds its rows to the simulated ones, labelled fraud, from a random stream of its own.
    """

    start: str | date | datetime | pd.Timestamp
    amount_factor: float = 1.0
    hour_shift: float = 0.0
    new_terminal_share: float = 0.0
    new_customer_share: float = 0.0
    card_testing_cards_per_day: int = 0
    card_testing_max_amount: float = 5.0
    night_raid_cards_per_day: int = 0
    night_raid_amounts: tuple[float, float] = (30.0, 150.0)
    bust_out_cards_per_day: int = 0
    bust_out_amounts: tuple[float, float] = (150.0, 219.99)

    def __post_init__(self) -> None:
        pd.Timestamp(self.start)  # raises on an unparseable date
        if not self.amount_factor > 0:
            raise ValueError(f"amount_factor must be positive, got {self.amount_factor!r}")
        if not 0 <= self.new_terminal_share <= 1:
            raise ValueError(f"new_terminal_share must be in [0, 1], got {self.new_terminal_share!r}")
        if not 0 <= self.new_customer_share < 1:
            raise ValueError(f"new_customer_share must be in [0, 1), got {self.new_customer_share!r}")
        if int(self.card_testing_cards_per_day) != self.card_testing_cards_per_day or (
            self.card_testing_cards_per_day < 0
        ):
            raise ValueError(
                f"card_testing_cards_per_day must be a non-negative integer, got "
                f"{self.card_testing_cards_per_day!r}"
            )
        for name in ("night_raid_cards_per_day", "bust_out_cards_per_day"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("night_raid_amounts", "bust_out_amounts"):
            low, high = getattr(self, name)
            if not 0.01 <= low < high:
                raise ValueError(f"{name} must be (low, high) with 0.01 <= low < high, got {(low, high)!r}")
        if not self.card_testing_max_amount > 0.01:
            raise ValueError(
                f"card_testing_max_amount must exceed 0.01, got {self.card_testing_max_amount!r}"
            )

    def first_day(self, start_date: str | date | datetime | pd.Timestamp) -> int:
        """Index of the first simulated day beginning at or after `start` (0 when `start` is earlier)."""
        delta = (pd.Timestamp(self.start) - pd.Timestamp(start_date)).value
        return max(0, -(-delta // (SECONDS_PER_DAY * 1_000_000_000)))


def simulate_transactions(
    n_customers: int = 5000,
    n_terminals: int = 10000,
    n_days: int = 183,
    start_date: str = "2018-04-01",
    radius: float = 5.0,
    seed: int = 42,
    drift: Drift | None = None,
) -> pd.DataFrame:
    """Simulate card transactions with the handbook's three fraud scenarios.

    Profiles: customers at x, y ~ U(0, 100) with mean amount ~ U(5, 100), std = mean / 2 and
    ~ U(0, 4) transactions per day; terminals at x, y ~ U(0, 100). A customer uses, uniformly, the
    terminals within Euclidean `radius` of it (none: no transactions). Per customer and day the number of
    transactions is Poisson; time of day ~ int(Normal(43200, 20000)) s, kept when 0 < t < 86400; amount ~
    Normal(mean, std), a negative draw replaced by U(0, 2 * mean), rounded to cents.

    Frauds (later scenarios overwrite earlier ones, as in the handbook): 1) amount > 220; 2) on each day
    d < last day, 2 random terminals are compromised for days [d, d + 28): all their transactions are
    fraud; 3) on each such day 3 random customers are compromised for days [d, d + 14): int(n / 3) of
    their n transactions in that period, drawn at random, have their amount multiplied by 5 and are
    fraud. As in the handbook, the daily draws loop over `range(max(TX_TIME_DAYS))`, so the last day
    starts no new compromise, and scenario 1 is decided before scenario 3 inflates amounts.

    Returns the handbook's schema (`COLUMNS`), sorted by time with TRANSACTION_ID = 0..n-1. Ties in time
    are broken by customer then generation order (the handbook's quicksort leaves them arbitrary).
    Same `seed` (and `drift`) -> identical frame.

    `drift` (see `Drift`) changes the world from a given date on: amounts, hours, new terminals and
    customers, and a fourth fraud scenario (card testing). Without it the output is the handbook's.
    """
    if min(n_customers, n_terminals, n_days) < 0:
        raise ValueError("n_customers, n_terminals and n_days must be non-negative")
    # Independent streams per stage: changing how one stage draws does not shift the others. Drift draws
    # from further children of the same seed sequence (the first five are the same whatever the count).
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(10)]
    rng_cust, rng_term, rng_tx, rng_s2, rng_s3, rng_new_cust, rng_new_term, rng_card = streams[:8]
    rng_night, rng_bust = streams[8:]

    # --- Profiles -----------------------------------------------------------------------------------
    cust_xy, mean_amount, mean_nb_tx_per_day = _customer_profiles(rng_cust, n_customers)
    term_xy = rng_term.uniform(0, 100, size=(n_terminals, 2))
    indptr, term_indices = _terminals_within_radius(cust_xy, term_xy, radius)

    # --- Transactions: one Poisson draw per (customer, day) ------------------------------------------
    customer, day, time_of_day, amount, terminal = _draw_transactions(
        rng_tx, mean_amount, mean_nb_tx_per_day, indptr, term_indices, 0, n_days
    )
    # handbook: `for day in range(TX_TIME_DAYS.max())`; drift's extra rows never move this
    n_start_days = int(day.max()) if day.size else 0

    first_drift_day = drift.first_day(start_date) if drift is not None else n_days
    if first_drift_day < n_days:
        customer, day, time_of_day, amount, terminal = _apply_covariate_drift(
            drift,
            first_drift_day,
            (customer, day, time_of_day, amount, terminal),
            (cust_xy, term_xy, radius, n_days),
            rng_new_cust,
            rng_new_term,
        )

    seconds = day * SECONDS_PER_DAY + time_of_day
    order = np.lexsort((customer, seconds))  # stable: time, then customer, then generation order
    customer, terminal, amount, seconds, day = (a[order] for a in (customer, terminal, amount, seconds, day))
    n = seconds.size

    # --- Frauds --------------------------------------------------------------------------------------
    fraud = np.zeros(n, dtype=np.int64)
    scenario = np.zeros(n, dtype=np.int64)
    s1 = amount > _FRAUD_AMOUNT_THRESHOLD
    fraud[s1], scenario[s1] = 1, 1

    if n_start_days > 0 and n_terminals > 0:
        start = np.repeat(np.arange(n_start_days), min(_TERMINALS_PER_DAY, n_terminals))
        who = _sample_without_replacement(rng_s2, n_terminals, _TERMINALS_PER_DAY, n_start_days).ravel()
        _, tx = _transactions_in_windows(terminal, day, n_days, who, start, _TERMINAL_COMPROMISE_DAYS)
        fraud[tx], scenario[tx] = 1, 2

    if n_start_days > 0 and n_customers > 0:
        start = np.repeat(np.arange(n_start_days), min(_CUSTOMERS_PER_DAY, n_customers))
        who = _sample_without_replacement(rng_s3, n_customers, _CUSTOMERS_PER_DAY, n_start_days).ravel()
        pair, tx = _transactions_in_windows(customer, day, n_days, who, start, _CUSTOMER_COMPROMISE_DAYS)
        # int(n_pair / 3) transactions per (day, customer) pair, drawn at random: rank random keys within
        # each pair. A transaction drawn by several overlapping pairs is inflated once per draw.
        pair_sizes = np.bincount(pair, minlength=who.size)
        shuffled = np.lexsort((rng_s3.random(pair.size), pair))
        pair_first = np.concatenate(([0], np.cumsum(pair_sizes)[:-1]))
        rank = np.arange(pair.size) - pair_first[pair[shuffled]]
        chosen = tx[shuffled][rank < pair_sizes[pair[shuffled]] // 3]
        times_chosen = np.bincount(chosen, minlength=n)
        for m in range(int(times_chosen.max(initial=0))):  # sequential x5, exactly as the handbook's loop
            amount[times_chosen > m] *= _CUSTOMER_FRAUD_AMOUNT_FACTOR
        fraud[chosen], scenario[chosen] = 1, 3

    if first_drift_day < n_days and n_terminals > 0:
        n_cards = n_customers + _new_customer_count(drift, n_customers)
        added = []
        if drift.card_testing_cards_per_day > 0:
            added.append(_card_testing(rng_card, drift, first_drift_day, n_days, n_cards, n_terminals))
        world = (first_drift_day, n_days, n_cards, n_terminals)
        if drift.night_raid_cards_per_day > 0:
            added.append(
                _bursts(
                    rng_night, _NIGHT_RAID, drift.night_raid_cards_per_day, drift.night_raid_amounts, world
                )
            )
        if drift.bust_out_cards_per_day > 0:
            added.append(
                _bursts(rng_bust, _BUST_OUT, drift.bust_out_cards_per_day, drift.bust_out_amounts, world)
            )
        if any(rows[0].size for rows in added):
            # Appended after the handbook's scenarios, so they neither see nor change these rows; a stable
            # sort keeps every earlier row (and every row before the drift) where it was.
            columns = [customer, terminal, amount, seconds, day, fraud, scenario]
            for rows in added:
                columns = [np.concatenate((a, b)) for a, b in zip(columns, rows, strict=True)]
            order = np.lexsort((columns[0], columns[3]))
            customer, terminal, amount, seconds, day, fraud, scenario = (a[order] for a in columns)
            n = seconds.size

    tx_datetime = np.datetime64(pd.Timestamp(start_date).as_unit("ns").asm8) + (
        seconds * 1_000_000_000
    ).astype("timedelta64[ns]")
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(n, dtype=np.int64),
            "TX_DATETIME": tx_datetime.astype("datetime64[ns]"),
            "CUSTOMER_ID": customer.astype(np.int64),
            "TERMINAL_ID": terminal.astype(np.int64),
            "TX_AMOUNT": amount.astype(np.float64),
            "TX_TIME_SECONDS": seconds.astype(np.int64),
            "TX_TIME_DAYS": day.astype(np.int64),
            "TX_FRAUD": fraud,
            "TX_FRAUD_SCENARIO": scenario,
        },
        columns=list(COLUMNS),
    )


def _customer_profiles(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Locations, mean amounts and mean transactions per day of `n` customers (handbook chapter 3.2)."""
    xy = rng.uniform(0, 100, size=(n, 2))
    mean_amount = rng.uniform(5, 100, size=n)
    mean_nb_tx_per_day = rng.uniform(0, 4, size=n)
    return xy, mean_amount, mean_nb_tx_per_day


def _draw_transactions(
    rng: np.random.Generator,
    mean_amount: np.ndarray,
    mean_nb_tx_per_day: np.ndarray,
    indptr: np.ndarray,
    term_indices: np.ndarray,
    first_day: int,
    n_days: int,
) -> tuple[np.ndarray, ...]:
    """(customer, day, time of day, amount, terminal) of every transaction on days [first_day, n_days).

    Rows in (customer, day, draw) order; customers are indices into the profile arrays.
    """
    n_customers, span = mean_amount.size, max(n_days - first_day, 0)
    nb_terminals = np.diff(indptr)
    counts = rng.poisson(np.broadcast_to(mean_nb_tx_per_day[:, None], (n_customers, span)))
    counts[nb_terminals == 0] = 0  # customers without a terminal in reach never transact
    flat = np.repeat(np.arange(n_customers * span), counts.ravel())
    customer, day = np.divmod(flat, span) if span else (flat, flat)
    day = day + first_day
    time_of_day = rng.normal(SECONDS_PER_DAY / 2, 20000, size=flat.size).astype(np.int64)  # int()
    keep = (time_of_day > 0) & (time_of_day < SECONDS_PER_DAY)
    customer, day, time_of_day = customer[keep], day[keep], time_of_day[keep]

    mu = mean_amount[customer]
    amount = rng.normal(mu, mu / 2)  # std = mean / 2
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mu[negative])
    amount = np.round(amount, 2)
    pick = (rng.random(customer.size) * nb_terminals[customer]).astype(np.int64)
    terminal = term_indices[indptr[customer] + pick]
    return customer, day, time_of_day, amount, terminal


def _new_customer_count(drift: Drift, n_customers: int) -> int:
    """New customers making up about `new_customer_share` of the transactions once they arrive."""
    share = drift.new_customer_share
    return round(n_customers * share / (1 - share)) if share > 0 else 0


def _apply_covariate_drift(
    drift: Drift,
    first_day: int,
    transactions: tuple[np.ndarray, ...],
    world: tuple[np.ndarray, np.ndarray, float, int],
    rng_new_cust: np.random.Generator,
    rng_new_term: np.random.Generator,
) -> tuple[np.ndarray, ...]:
    """New customers' transactions added, then hours, amounts and terminals changed on days >= first_day."""
    customer, day, time_of_day, amount, terminal = transactions
    cust_xy, term_xy, radius, n_days = world
    n_customers, n_terminals = len(cust_xy), len(term_xy)

    n_new = _new_customer_count(drift, n_customers)
    if n_new and n_terminals:
        new_xy, new_mean, new_nb = _customer_profiles(rng_new_cust, n_new)
        new_indptr, new_indices = _terminals_within_radius(new_xy, term_xy, radius)
        new = _draw_transactions(rng_new_cust, new_mean, new_nb, new_indptr, new_indices, first_day, n_days)
        new = (new[0] + n_customers, *new[1:])
        customer, day, time_of_day, amount, terminal = (
            np.concatenate((a, b))
            for a, b in zip((customer, day, time_of_day, amount, terminal), new, strict=True)
        )
        cust_xy = np.concatenate((cust_xy, new_xy))

    after = np.flatnonzero(day >= first_day)
    shift = round(drift.hour_shift * 3600)
    if shift:  # wrap within (0, 86400): the handbook's times of day are 1..86399 s
        time_of_day[after] = (time_of_day[after] - 1 + shift) % (SECONDS_PER_DAY - 1) + 1
    if drift.amount_factor != 1:
        amount[after] = np.round(amount[after] * drift.amount_factor, 2)
    if drift.new_terminal_share > 0 and n_terminals and after.size:
        n_new_terminals = max(1, round(drift.new_terminal_share * n_terminals))
        new_term_xy = rng_new_term.uniform(0, 100, size=(n_new_terminals, 2))
        moved = after[rng_new_term.random(after.size) < drift.new_terminal_share]
        if moved.size:
            nearest = NearestNeighbors(n_neighbors=1).fit(new_term_xy)
            index = nearest.kneighbors(cust_xy[customer[moved]], return_distance=False)[:, 0]
            terminal[moved] = n_terminals + index
    return customer, day, time_of_day, amount, terminal


def _card_testing(
    rng: np.random.Generator, drift: Drift, first_day: int, n_days: int, n_cards: int, n_terminals: int
) -> tuple[np.ndarray, ...]:
    """Scenario 4 rows (customer, terminal, amount, seconds, day, fraud, scenario), days >= first_day."""
    days = np.arange(first_day, n_days)
    per_day = min(int(drift.card_testing_cards_per_day), n_cards)
    cards = _sample_without_replacement(rng, n_cards, per_day, days.size).ravel()
    burst_day = np.repeat(days, per_day)
    low, high = _CARD_TESTING_BURST
    sizes = rng.integers(low, high + 1, size=cards.size)
    burst = np.repeat(np.arange(cards.size), sizes)
    longest = high * _CARD_TESTING_GAP_SECONDS[1]
    burst_start = rng.integers(1, SECONDS_PER_DAY - longest, size=cards.size)
    gaps = rng.integers(_CARD_TESTING_GAP_SECONDS[0], _CARD_TESTING_GAP_SECONDS[1] + 1, size=burst.size)
    first_row = np.cumsum(sizes) - sizes
    gaps[first_row] = 0  # the burst's first payment is at its start
    offset = np.cumsum(gaps)
    offset -= np.repeat(offset[first_row], sizes)
    day = burst_day[burst]
    seconds = day * SECONDS_PER_DAY + burst_start[burst] + offset
    amount = np.maximum(
        np.floor(rng.uniform(0, drift.card_testing_max_amount, size=burst.size) * 100) / 100, 0.01
    )
    amount = np.minimum(amount, np.nextafter(drift.card_testing_max_amount, 0))
    terminal = rng.integers(0, n_terminals, size=burst.size)
    ones = np.ones(burst.size, dtype=np.int64)
    return cards[burst], terminal, amount, seconds, day, ones, ones * CARD_TESTING_SCENARIO


def _bursts(rng, burst: _Burst, per_day: int, amounts: tuple[float, float], world) -> tuple[np.ndarray, ...]:
    """A burst scenario's rows (customer, terminal, amount, seconds, day, fraud, scenario), days >= first:
    `per_day` cards a day, amounts uniform in `amounts`; `world` = (first day, days, cards, terminals)."""
    first_day, n_days, n_cards, n_terminals = world
    days = np.arange(first_day, n_days)
    per_day = min(int(per_day), n_cards)
    cards = _sample_without_replacement(rng, n_cards, per_day, days.size).ravel()
    sizes = rng.integers(burst.size[0], burst.size[1] + 1, size=cards.size)
    rows = np.repeat(np.arange(cards.size), sizes)
    gaps = rng.integers(burst.gap[0], burst.gap[1] + 1, size=rows.size)
    first_row = np.cumsum(sizes) - sizes
    gaps[first_row] = 0  # the burst's first payment is at its start
    offset = np.cumsum(gaps)
    offset -= np.repeat(offset[first_row], sizes)
    # Every burst fits in the hours: it starts early enough for its longest possible length.
    start = rng.integers(burst.hours[0], burst.hours[1] - burst.size[1] * burst.gap[1], size=cards.size)
    day = np.repeat(days, per_day)[rows]
    seconds = day * SECONDS_PER_DAY + start[rows] + offset
    amount = np.round(rng.uniform(*amounts, size=rows.size), 2).clip(*amounts)
    terminal = rng.integers(0, n_terminals, size=rows.size)
    ones = np.ones(rows.size, dtype=np.int64)
    return cards[rows], terminal, amount, seconds, day, ones, ones * burst.scenario


def _terminals_within_radius(
    cust_xy: np.ndarray, term_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, terminal indices) of the terminals within `radius` of each customer.

    A tree query instead of the handbook's dense customer x terminal distance matrix, which would not
    fit in memory at large sizes. Indices are sorted per customer so the result is deterministic.
    """
    if len(cust_xy) == 0 or len(term_xy) == 0:
        return np.zeros(len(cust_xy) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    graph = NearestNeighbors(radius=radius).fit(term_xy).radius_neighbors_graph(cust_xy, mode="connectivity")
    graph.sort_indices()
    return graph.indptr.astype(np.int64), graph.indices.astype(np.int64)


def _sample_without_replacement(rng: np.random.Generator, n: int, k: int, rows: int) -> np.ndarray:
    """`rows` independent draws of min(k, n) distinct integers in [0, n), as a (rows, k) array.

    Draw the j-th value uniformly among the n - j values not yet taken, then map it past the taken ones
    in increasing order; loops over k (2 or 3 here), not over rows.
    """
    k = min(k, n)
    out = np.empty((rows, k), dtype=np.int64)
    for j in range(k):
        value = rng.integers(0, n - j, size=rows)
        for taken in np.sort(out[:, :j], axis=1).T:
            value += value >= taken
        out[:, j] = value
    return out


def _transactions_in_windows(
    entity: np.ndarray, day: np.ndarray, n_days: int, who: np.ndarray, start: np.ndarray, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """All transactions of entity `who[p]` on days [start[p], start[p] + length), for every window p.

    Returns (window index, transaction index) pairs. Sorting transactions by entity * n_days + day makes
    each window one contiguous slice found with two searchsorted calls.
    """
    key = entity.astype(np.int64) * n_days + day
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    lo = np.searchsorted(sorted_key, who * n_days + start, side="left")
    hi = np.searchsorted(sorted_key, who * n_days + np.minimum(start + length, n_days), side="left")
    sizes = hi - lo
    window = np.repeat(np.arange(who.size), sizes)
    offset = np.arange(window.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return window, order[lo[window] + offset]
