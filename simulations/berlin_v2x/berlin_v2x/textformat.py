"""Serialisation of one cellular row into the study's text line.

Template (eucnc-experiment.md §3.1): ``time = H H M M <G1> --> ... --> <G5>``
where each group is ``key = value`` items joined by single spaces and a
missing value leaves ``key = `` with nothing after it.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from .schema import TEXT_GROUPS

GROUP_SEPARATOR = " --> "

# Values below 1 get 3 decimals plus one per factor of 10 below 0.1, at most 5.
_MIN_SMALL_DECIMALS = 3
_MAX_SMALL_DECIMALS = 5


def is_missing(value: Any) -> bool:
    """True for None and float NaN (the reference's ``pd.notna`` is false)."""
    if value is None:
        return True
    return isinstance(value, float) and math.isnan(value)


def format_value(value: Any) -> str:
    """Format one value the way the reference preprocessing does.

    Floats (numpy float64 included, as it subclasses float) with |v| >= 1 get
    three decimals with trailing zeros and dot stripped; smaller floats get
    3 to 5 decimals depending on their magnitude. Everything else (integers,
    strings) goes through ``str``. Missing values give the empty string.
    """
    if is_missing(value):
        return ""

    if not isinstance(value, float):
        return str(value)

    if abs(value) >= 1:
        return f"{value:.3f}".rstrip("0").rstrip(".")

    decimals = _MIN_SMALL_DECIMALS
    scaled = abs(value)
    while scaled < 0.1 and decimals < _MAX_SMALL_DECIMALS:
        decimals += 1
        scaled *= 10
    return f"{value:.{decimals}f}".rstrip("0").rstrip(".")


def time_prefix(local_time: dt.datetime | dt.time) -> str:
    """``time = H H M M `` for a local (Berlin) wall-clock time."""
    digits = f"{local_time.hour:02d}{local_time.minute:02d}"
    return f"time = {' '.join(digits)} "


def row_to_text(row: Mapping[str, Any], local_time: dt.datetime | dt.time) -> str:
    """Serialise one row (a mapping over the 85 text keys) into its text line."""
    groups = []
    for keys in TEXT_GROUPS:
        groups.append(" ".join(f"{key} = {format_value(row[key])}" for key in keys))
    return time_prefix(local_time) + GROUP_SEPARATOR.join(groups).strip()
