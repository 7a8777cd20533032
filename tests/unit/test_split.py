import numpy as np
import pandas as pd
import pytest

from tasks.split import SplitError, split_frame
from usecases.spec import SplitSpec


def frame(days=60, per_day=10, positives_every=7):
    times = pd.date_range("2024-01-01", periods=days * per_day, freq=f"{86400 // per_day}s")
    y = (np.arange(len(times)) % positives_every == 0).astype(int)
    return pd.DataFrame({"t": times, "y": y, "x": np.arange(len(times))})


def test_windows_from_the_end_with_gaps():
    s = split_frame(frame(), SplitSpec(train=10, validation=5, test=7, gap=3), "t", "y")
    assert s.windows == {
        "train": ("2024-02-02", "2024-02-11"),
        "validation": ("2024-02-15", "2024-02-19"),
        "test": ("2024-02-23", "2024-02-29"),
    }
    assert len(s.test) == 70 and len(s.validation) == 50 and len(s.train) == 100
    # windows are disjoint and ordered, with `gap` days between them
    assert s.train.t.max() < s.validation.t.min() - pd.Timedelta(days=3)
    assert s.validation.t.max() < s.test.t.min() - pd.Timedelta(days=3)


def test_train_none_takes_all_earlier_history_and_end_anchors():
    s = split_frame(frame(), SplitSpec(validation=5, test=7, gap=3, end="2024-02-10"), "t")
    assert s.windows["test"] == ("2024-02-04", "2024-02-10")
    assert s.windows["train"][0] == "2024-01-01"


def test_steps_unit_counts_distinct_timestamps():
    f = frame(days=30, per_day=1)
    f = pd.concat([f, f.assign(x=f.x + 1000)])  # two "tickers" share each date
    s = split_frame(f, SplitSpec(train=10, validation=5, test=5, gap=2, unit="steps"), "t")
    assert len(s.test) == 10 and s.test.t.nunique() == 5


def test_too_short_history_names_the_need():
    with pytest.raises(SplitError, match="not enough history"):
        split_frame(frame(days=10), SplitSpec(train=10, validation=5, test=7, gap=3), "t")


def test_window_without_positives_is_an_error():
    f = frame()
    f.loc[f.t >= "2024-02-23", "y"] = 0
    with pytest.raises(SplitError, match="test window .* 0 positive 'y'"):
        split_frame(f, SplitSpec(train=10, validation=5, test=7, gap=3), "t", "y")


def test_test_filter_applies_to_test_only():
    s = split_frame(
        frame(),
        SplitSpec(train=10, validation=5, test=7, gap=3),
        "t",
        "y",
        test_filter=lambda test, table: test[test.x % 2 == 0],
    )
    assert len(s.test) == 35 and (s.test.x % 2 == 0).all() and len(s.train) == 100
