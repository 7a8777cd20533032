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


def simulate_transactions(
    n_customers: int = 5000,
    n_terminals: int = 10000,
    n_days: int = 183,
    start_date: str = "2018-04-01",
    radius: float = 5.0,
    seed: int = 42,
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
    Same `seed` -> identical frame.
    """
    if min(n_customers, n_terminals, n_days) < 0:
        raise ValueError("n_customers, n_terminals and n_days must be non-negative")
    # Independent streams per stage: changing how one stage draws does not shift the others.
    rng_cust, rng_term, rng_tx, rng_s2, rng_s3 = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )

    # --- Profiles -----------------------------------------------------------------------------------
    cust_xy = rng_cust.uniform(0, 100, size=(n_customers, 2))
    mean_amount = rng_cust.uniform(5, 100, size=n_customers)
    std_amount = mean_amount / 2
    mean_nb_tx_per_day = rng_cust.uniform(0, 4, size=n_customers)
    term_xy = rng_term.uniform(0, 100, size=(n_terminals, 2))
    indptr, term_indices = _terminals_within_radius(cust_xy, term_xy, radius)
    nb_terminals = np.diff(indptr)

    # --- Transactions: one Poisson draw per (customer, day) ------------------------------------------
    counts = rng_tx.poisson(np.broadcast_to(mean_nb_tx_per_day[:, None], (n_customers, n_days)))
    counts[nb_terminals == 0] = 0  # customers without a terminal in reach never transact
    flat = np.repeat(np.arange(n_customers * n_days), counts.ravel())
    customer, day = np.divmod(flat, n_days) if n_days else (flat, flat)
    time_of_day = rng_tx.normal(SECONDS_PER_DAY / 2, 20000, size=flat.size).astype(np.int64)  # int()
    keep = (time_of_day > 0) & (time_of_day < SECONDS_PER_DAY)
    customer, day, time_of_day = customer[keep], day[keep], time_of_day[keep]

    mu = mean_amount[customer]
    amount = rng_tx.normal(mu, std_amount[customer])
    negative = amount < 0
    amount[negative] = rng_tx.uniform(0, 2 * mu[negative])
    amount = np.round(amount, 2)
    pick = (rng_tx.random(customer.size) * nb_terminals[customer]).astype(np.int64)
    terminal = term_indices[indptr[customer] + pick]

    seconds = day * SECONDS_PER_DAY + time_of_day
    order = np.lexsort((customer, seconds))  # stable: time, then customer, then generation order
    customer, terminal, amount, seconds, day = (a[order] for a in (customer, terminal, amount, seconds, day))
    n = seconds.size

    # --- Frauds --------------------------------------------------------------------------------------
    fraud = np.zeros(n, dtype=np.int64)
    scenario = np.zeros(n, dtype=np.int64)
    s1 = amount > _FRAUD_AMOUNT_THRESHOLD
    fraud[s1], scenario[s1] = 1, 1

    n_start_days = int(day.max()) if n else 0  # handbook: `for day in range(TX_TIME_DAYS.max())`
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
