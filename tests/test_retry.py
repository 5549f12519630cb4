"""The one Retry-After parser: delta-seconds or an HTTP date, always a finite wait in [0, cap]."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pdpj_async.retry import clamp, parse_retry_after

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("99999999999999999999", 600.0),
        ("Thu, 03 Dec 2026 12:00:30 GMT", 30.0),
        ("Thu, 03 Dec 2026 11:00:00 GMT", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 600.0),
        ("Thursday, 03-Dec-26 12:01:00 GMT", 60.0),
    ],
)
def test_seconds_and_dates_are_read_and_clamped(header: str, seconds: float) -> None:
    assert parse_retry_after(header, 600.0, now=NOW) == seconds


@pytest.mark.parametrize(
    "header",
    [None, "", "   ", "soon", "nan", "NaN", "inf", "-inf", "infinity", "1e999", "1e3", "-5",
     "+5", "0x10", "\u0663", "\uff13", "5 s", "1" * 65, "Thu, 99 Foo 2026 12:00:30 GMT", "\x00"],
)  # fmt: skip
def test_anything_else_is_no_retry_after(header: str | None) -> None:
    assert parse_retry_after(header, 600.0, now=NOW) is None


def test_a_cap_that_is_not_a_finite_positive_number_means_no_wait() -> None:
    assert parse_retry_after("30", math.inf) == 0.0
    assert parse_retry_after("30", math.nan) == 0.0
    assert parse_retry_after("30", -1.0) == 0.0
    assert clamp(math.nan, 10.0) == 0.0
    assert clamp(math.inf, 10.0) == 10.0
    assert clamp(-math.inf, 10.0) == 0.0


@settings(max_examples=2000, database=None, derandomize=True, deadline=None)
@given(st.text(max_size=80), st.floats(allow_nan=True, allow_infinity=True))
def test_any_header_and_cap_give_none_or_a_finite_wait_within_the_cap(
    header: str, cap: float
) -> None:
    seconds = parse_retry_after(header, cap, now=NOW)
    if seconds is not None:
        assert math.isfinite(seconds)
        assert 0.0 <= seconds <= (cap if math.isfinite(cap) and cap > 0 else 0.0)
