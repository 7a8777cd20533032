"""The fraud use case's data checks, as code: GX suites for the raw transactions, for the transactions to
score (labels not known yet) and for the features.

The raw suite follows the Fraud Detection Handbook's transaction schema (TRANSACTION_ID, TX_DATETIME,
CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD; other columns such as TX_FRAUD_SCENARIO are allowed). The
loader parses TX_DATETIME with `pd.to_datetime(errors="coerce")` before validation, so an unparseable
timestamp arrives here as NaT and is reported by the not-null check on TX_DATETIME.

TX_FRAUD must be present but may be missing (null) on some rows: labels arrive after a delay, so a weekly
extract's newest rows have none. Those rows feed the features (history) and are never a target
(`tasks.split.with_known_target`). The label checks ignore them: GX's in-set and mean expectations leave
nulls out (pd.NA, NaN and None alike), so the values must be 0 or 1 and the fraud rate is the mean over known
labels. A column with (almost) no known label fails `MIN_KNOWN_LABEL_SHARE`.

Suites are built fresh on every call (GX suites are mutable), and are not added to any data context:
`tasks.validate.validate_frame` runs them against an in-memory batch.
"""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402  (the analytics switch must be set before the import)
from great_expectations import expectations as gxe  # noqa: E402

RAW_SUITE_NAME = "fraud_raw"
SCORE_SUITE_NAME = "fraud_score"
FEATURE_SUITE_NAME = "fraud_features"

ID_COLUMNS = ("TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID")
REQUIRED_COLUMNS = ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD")
LABEL = "TX_FRAUD"
# What scoring needs: labels arrive after a delay, so the newest rows have none (or no label column at all).
SCORE_COLUMNS = tuple(c for c in REQUIRED_COLUMNS if c != LABEL)

# The handbook simulates ~0.8 % fraud (14,681 of 1,754,155 transactions). Real card fraud sits around 0.1 %
# to 1 %. Below 0.05 % a window of the size we train on holds too few positives to learn or to evaluate
# (average precision becomes noise); above 20 % the label is almost certainly wrong (a flipped or
# mis-joined column, a filtered extract of fraud cases) rather than a real fraud wave. Both bounds are
# deliberately loose: this check catches broken data, not drift.
MIN_FRAUD_RATE = 0.0005
MAX_FRAUD_RATE = 0.2
# Fewer rows than this cannot fill the train / validation / test windows with enough frauds to score.
MIN_ROWS = 1_000
# Labels may be missing for the newest rows (the label delay), but a training extract with fewer than half its
# labels known is a broken extract (an empty or mis-joined label column), not a delay: the default split
# needs 49 labelled days, so a trainable extract with more unknown than known labels would need a label
# delay of 7 weeks or more. A column with no known label at all fails here (its fraud rate, a mean over no
# value, fails too, with no observed value).
MIN_KNOWN_LABEL_SHARE = 0.5

# GX compares the pandas dtype against these names: numpy names match numpy dtypes, pandas extension
# dtypes must be given by their class name ("Int64Dtype"; the alias "Int64" is silently never matched).
# Parquet gives int64; CSV gives int64 (or float64 when a value is missing); nullable loaders give Int64.
INTEGER_TYPES = ["int64", "int32", "Int64Dtype", "Int32Dtype"]
# The label: integers, nullable integers (pandas' Parquet round trip of an Int64 column keeps pd.NA), and
# float64, because that is what a label column with missing values arrives as from CSV (`pd.read_csv`) and
# from Parquet written without pandas metadata (Spark, DuckDB, pyarrow: integer columns with nulls convert to
# float64). No other float: no loader gives one for an integer column. Fractions (0.5) fail the in-set check.
LABEL_TYPES = [
    "int64",
    "int32",
    "int16",
    "int8",
    "Int64Dtype",
    "Int32Dtype",
    "Int16Dtype",
    "Int8Dtype",
    "float64",
]
NUMERIC_TYPES = ["float64", "float32", "Float64Dtype", "Float32Dtype", *INTEGER_TYPES]
# pandas < 3 parses to nanoseconds, pandas 3 infers the unit (microseconds for most strings).
DATETIME_TYPES = ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"]

# The handbook's 15 baseline features, in the order `usecases.fraud.features.FEATURES` uses.
FEATURE_COLUMNS = [
    "TX_AMOUNT",
    "TX_DURING_WEEKEND",
    "TX_DURING_NIGHT",
    "CUSTOMER_ID_NB_TX_1DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_7DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_30DAY_WINDOW",
    "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW",
    "TERMINAL_ID_NB_TX_1DAY_WINDOW",
    "TERMINAL_ID_RISK_1DAY_WINDOW",
    "TERMINAL_ID_NB_TX_7DAY_WINDOW",
    "TERMINAL_ID_RISK_7DAY_WINDOW",
    "TERMINAL_ID_NB_TX_30DAY_WINDOW",
    "TERMINAL_ID_RISK_30DAY_WINDOW",
]
FLAG_COLUMNS = [c for c in FEATURE_COLUMNS if c.startswith("TX_DURING_")]
COUNT_COLUMNS = [c for c in FEATURE_COLUMNS if "_NB_TX_" in c]
RISK_COLUMNS = [c for c in FEATURE_COLUMNS if "_RISK_" in c]
AMOUNT_COLUMNS = [c for c in FEATURE_COLUMNS if c == "TX_AMOUNT" or "_AVG_AMOUNT_" in c]


def raw_suite() -> gx.ExpectationSuite:
    """Schema, completeness, keys, ranges and label sanity of the raw transactions.

    Every required column must be present and complete except TX_FRAUD, which may be missing on some rows
    (not yet labelled) but must be known on at least `MIN_KNOWN_LABEL_SHARE` of them; the in-set and
    fraud-rate checks read the known labels only (GX leaves nulls out of both).
    """
    expectations: list[gxe.Expectation] = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=MIN_ROWS, description=f"at least {MIN_ROWS:,} transactions"
        ),
    ]
    expectations += [gxe.ExpectColumnToExist(column=column) for column in REQUIRED_COLUMNS]
    expectations += [
        gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=INTEGER_TYPES) for c in ID_COLUMNS
    ]
    expectations += [
        gxe.ExpectColumnValuesToBeInTypeList(column="TX_AMOUNT", type_list=NUMERIC_TYPES),
        gxe.ExpectColumnValuesToBeInTypeList(column=LABEL, type_list=LABEL_TYPES),
        gxe.ExpectColumnValuesToBeInTypeList(column="TX_DATETIME", type_list=DATETIME_TYPES),
    ]
    expectations += [_not_null(column) for column in REQUIRED_COLUMNS if column != LABEL]
    expectations += [
        gxe.ExpectColumnValuesToNotBeNull(  # `mostly`: a share, which the Dask merge recomputes from counts
            column=LABEL,
            mostly=MIN_KNOWN_LABEL_SHARE,
            description=(
                f"fewer than {MIN_KNOWN_LABEL_SHARE:.0%} of {LABEL} labels known: rows not labelled yet "
                "are allowed, but training needs labelled transactions"
            ),
        ),
        gxe.ExpectColumnValuesToBeUnique(column="TRANSACTION_ID"),
        gxe.ExpectColumnValuesToBeBetween(column="TX_AMOUNT", min_value=0),
        gxe.ExpectColumnValuesToBeInSet(column=LABEL, value_set=[0, 1]),  # nulls left out
        gxe.ExpectColumnMeanToBeBetween(  # over known labels: GX's column mean skips nulls
            column=LABEL,
            min_value=MIN_FRAUD_RATE,
            max_value=MAX_FRAUD_RATE,
            description=f"fraud rate within [{MIN_FRAUD_RATE}, {MAX_FRAUD_RATE}] (mean of the known labels)",
        ),
    ]
    return gx.ExpectationSuite(name=RAW_SUITE_NAME, expectations=expectations)


def score_suite() -> gx.ExpectationSuite:
    """The raw suite without what needs labels or a training-sized window: transactions to score.

    TX_FRAUD may be absent or hold missing values (labels arrive after a delay), so nothing is expected
    of it: a GX expectation on an absent column fails, and a static suite cannot make one conditional.
    No minimum row count and no fraud rate either. Kept: the id, amount and timestamp columns present,
    typed and complete, unique TRANSACTION_IDs and non-negative amounts.
    """
    expectations: list[gxe.Expectation] = [gxe.ExpectColumnToExist(column=column) for column in SCORE_COLUMNS]
    expectations += [
        gxe.ExpectColumnValuesToBeInTypeList(column=c, type_list=INTEGER_TYPES) for c in ID_COLUMNS
    ]
    expectations += [
        gxe.ExpectColumnValuesToBeInTypeList(column="TX_AMOUNT", type_list=NUMERIC_TYPES),
        gxe.ExpectColumnValuesToBeInTypeList(column="TX_DATETIME", type_list=DATETIME_TYPES),
    ]
    expectations += [_not_null(column) for column in SCORE_COLUMNS]
    expectations += [
        gxe.ExpectColumnValuesToBeUnique(column="TRANSACTION_ID"),
        gxe.ExpectColumnValuesToBeBetween(column="TX_AMOUNT", min_value=0),
    ]
    return gx.ExpectationSuite(name=SCORE_SUITE_NAME, expectations=expectations)


def _not_null(column: str) -> gxe.Expectation:
    return gxe.ExpectColumnValuesToNotBeNull(
        column=column,
        description=(
            "TX_DATETIME missing or unparseable (NaT after pd.to_datetime(errors='coerce'))"
            if column == "TX_DATETIME"
            else None
        ),
    )


def feature_suite(labelled: bool = True) -> gx.ExpectationSuite:
    """Every handbook feature present and complete, with counts, amounts, risks and flags in range.

    `labelled=False` (scoring and monitoring): the label is not checked, since the newest rows' labels are
    not known yet."""
    label = [LABEL] if labelled else []
    columns = [*FEATURE_COLUMNS, *label]
    expectations: list[gxe.Expectation] = [gxe.ExpectColumnToExist(column=column) for column in columns]
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=column) for column in columns]
    expectations += [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in COUNT_COLUMNS]
    expectations += [gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in AMOUNT_COLUMNS]
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1) for c in RISK_COLUMNS
    ]
    expectations += [
        gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[0, 1]) for c in [*FLAG_COLUMNS, *label]
    ]
    name = FEATURE_SUITE_NAME if labelled else f"{FEATURE_SUITE_NAME}_unlabelled"
    return gx.ExpectationSuite(name=name, expectations=expectations)
