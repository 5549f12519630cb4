"""The one Retry-After parser: seconds or an HTTP date, always a finite wait in [0, cap]."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

# delta-seconds is 1*DIGIT (RFC 9110 10.2.3); a decimal point is tolerated, nothing else.
_SECONDS = re.compile(r"^[0-9]{1,20}(?:\.[0-9]{0,9})?$")
# Longer values are not a date nor a number anyone means: refused before any parsing.
_MAX_LENGTH = 64


def parse_retry_after(value: str | None, cap_s: float, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value, clamped to [0, cap_s]; None when unusable."""
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > _MAX_LENGTH:
        return None
    seconds = _delta_seconds(text)
    if seconds is None:
        seconds = _seconds_until_date(text, now or datetime.now(UTC))
    if seconds is None:
        return None
    return clamp(seconds, cap_s)


def clamp(seconds: float, cap_s: float) -> float:
    """`seconds` within [0, cap_s], finite even when either is NaN or infinite."""
    cap = cap_s if math.isfinite(cap_s) and cap_s > 0 else 0.0
    if math.isnan(seconds):
        return 0.0
    return min(max(seconds, 0.0), cap)


def _delta_seconds(text: str) -> float | None:
    # Only plain ASCII digits: float() would also take "nan", "inf", "1e999" and "٣".
    return float(text) if _SECONDS.match(text) else None


def _seconds_until_date(text: str, now: datetime) -> float | None:
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; a date without a zone is read as such.
        when = when.replace(tzinfo=UTC)
    return (when - now).total_seconds()
