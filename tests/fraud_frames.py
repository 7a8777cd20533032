"""Small fraud frames in the handbook's schema, generated with numpy: shared by the validation tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_checks.fraud import FEATURE_COLUMNS

N_ROWS = 2_000


def make_raw(n: int = N_ROWS, seed: int = 0) -> pd.DataFrame:
    """Valid raw transactions in the handbook's schema, typed as the shared Parquet file is."""
    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, 30 * 86_400, size=n))
    fraud = np.zeros(n, dtype="int64")
    fraud[rng.choice(n, size=n // 100, replace=False)] = 1
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(n, dtype="int64"),
            "TX_DATETIME": pd.Timestamp("2018-04-01") + pd.to_timedelta(seconds, unit="s"),
            "CUSTOMER_ID": rng.integers(0, 100, size=n),
            "TERMINAL_ID": rng.integers(0, 500, size=n),
            "TX_AMOUNT": np.round(rng.gamma(2.0, 30.0, size=n), 2),
            "TX_TIME_SECONDS": seconds,
            "TX_FRAUD": fraud,
            "TX_FRAUD_SCENARIO": fraud,
        }
    )


def make_features(n: int = 500, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"TX_AMOUNT": np.round(rng.gamma(2.0, 30.0, size=n), 2)})
    for column in FEATURE_COLUMNS[1:]:
        if column.startswith("TX_DURING_"):
            frame[column] = rng.integers(0, 2, size=n)
        elif "_NB_TX_" in column:
            frame[column] = rng.integers(0, 50, size=n)
        elif "_RISK_" in column:
            frame[column] = rng.random(size=n)
        else:
            frame[column] = rng.gamma(2.0, 30.0, size=n)
    frame["TX_FRAUD"] = (rng.random(size=n) < 0.02).astype("int64")
    return frame


def _label_two(frame):
    frame.loc[[5, 50], "TX_FRAUD"] = 2
    return frame


def _negative_amounts(frame):
    frame.loc[[3, 7, 9], "TX_AMOUNT"] = [-5.0, -1.0, -5.0]
    return frame


def _missing_amount(frame):
    frame.loc[10, "TX_AMOUNT"] = np.nan
    return frame
