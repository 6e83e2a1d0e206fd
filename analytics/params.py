"""The reporting API's query parameters, checked: each bad one is a 400 that names it.

Times (`from`, `to`) are Unix seconds, an ISO date (`2026-11-01`, midnight UTC) or an ISO
datetime (UTC unless it carries an offset). Rollups are per minute, so both are taken at
the minute; `to` is exclusive. Without them the period is the 30 days up to now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from starlette.datastructures import QueryParams

from analytics.exceptions import InvalidRequest

FORMATS = ("json", "csv")
DIMENSIONS = ("day", "model", "key")
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}  # a time series' step, in seconds
ADMIN_DIMENSIONS = (*DIMENSIONS, "tenant")
DEFAULT_DAYS = 30


@dataclass(frozen=True)
class Period:
    """[start, end) in UTC, on whole minutes."""

    start: datetime
    end: datetime

    def describe(self) -> dict[str, str]:
        return {"from": _iso(self.start), "to": _iso(self.end)}


@dataclass(frozen=True)
class Filters:
    key_id: str | None = None
    model: str | None = None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def one(params: QueryParams, name: str) -> str | None:
    """A parameter given at most once."""
    values = params.getlist(name)
    if len(values) > 1:
        raise InvalidRequest(f"Give `{name}` once.", param=name)
    return values[0] if values else None


def _moment(text: str, name: str) -> datetime:
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or not 0 <= seconds < 32503680000:
            raise InvalidRequest(f"`{name}` is out of range.", param=name)
        return datetime.fromtimestamp(seconds, UTC)
    try:
        if len(text) == 10:
            parsed = datetime.combine(date.fromisoformat(text), datetime.min.time())
        else:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"`{name}` must be Unix seconds, an ISO date or an ISO datetime; got {text!r}.",
            param=name) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _minute(moment: datetime, up: bool = False) -> datetime:
    floor = moment.replace(second=0, microsecond=0)
    return floor + timedelta(minutes=1) if up and floor != moment else floor


def period(params: QueryParams, max_days: int, now: datetime | None = None) -> Period:
    """The period asked for, within `max_days`."""
    now = now or datetime.now(UTC)
    given_from, given_to = one(params, "from"), one(params, "to")
    end = _minute(_moment(given_to, "to")) if given_to else _minute(now, up=True)
    start = (_minute(_moment(given_from, "from")) if given_from
             else end - timedelta(days=min(DEFAULT_DAYS, max_days)))
    if start > end:
        raise InvalidRequest("`from` is after `to`.", param="from", code="invalid_period")
    if end - start > timedelta(days=max_days):
        raise InvalidRequest(f"The period is longer than {max_days} days; ask for less.",
                             param="from", code="period_too_long")
    return Period(start, end)


def output_format(params: QueryParams) -> str:
    value = (one(params, "format") or "json").lower()
    if value not in FORMATS:
        raise InvalidRequest(f"`format` must be one of {', '.join(FORMATS)}; got {value!r}.",
                             param="format")
    return value


def group_by(params: QueryParams, admin: bool) -> tuple[str, ...]:
    """Dimensions, comma-separated or repeated, in the order given."""
    allowed = ADMIN_DIMENSIONS if admin else DIMENSIONS
    asked = [d.strip().lower() for v in params.getlist("group_by") for d in v.split(",")]
    dims: list[str] = []
    for dim in asked or ["day"]:
        if dim not in allowed:
            raise InvalidRequest(
                f"`group_by` takes {', '.join(allowed)}; got {dim!r}.", param="group_by")
        if dim not in dims:
            dims.append(dim)
    return tuple(dims)


def bucket(params: QueryParams, period: Period, max_points: int) -> str | None:
    """The time series' step (`bucket=minute|hour|day`), if one was asked for."""
    value = one(params, "bucket")
    if value is None:
        return None
    value = value.strip().lower()
    if value not in BUCKETS:
        raise InvalidRequest(f"`bucket` takes {', '.join(BUCKETS)}; got {value!r}.",
                             param="bucket")
    step = BUCKETS[value]
    first = int(period.start.timestamp()) // step * step
    points = math.ceil((period.end.timestamp() - first) / step)
    if points > max_points:
        raise InvalidRequest(f"That is {points} {value}s; ask for at most {max_points} "
                             "(a larger bucket or a shorter period).", param="bucket",
                             code="too_many_buckets")
    return value


def filters(params: QueryParams) -> Filters:
    return Filters(key_id=one(params, "key"), model=one(params, "model"))
