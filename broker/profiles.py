"""How each kind of broker is read: fetch waits, and which workarounds are on.

Apache Kafka answers a waiting fetch as soon as records arrive, so a long wait costs
nothing. The embedded Tansu broker looks for records only at the start of a fetch's
wait and at halvings of what is left of it, so there a consumer's wait is its latency,
and short waits cost polling; the rest of its profile works around its other habits
(`broker.tansu`). docs/benchmarks.md has the measurements behind the numbers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

BrokerKind = Literal["tansu", "kafka"]


class Profile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: BrokerKind
    # The most a fetch waits for records (ms), by what the consumer reads.
    replies_wait_ms: int  # a gateway's replies: token chunks and lease grants
    requests_wait_ms: int  # a worker's inference requests
    views_wait_ms: int  # keys and A/B tests, which every gateway follows
    control_wait_ms: int  # worker heartbeats, prices, cancellations
    sink_wait_ms: int  # the analytics sink
    streams_wait_ms: int  # the streams app while lease requests come in...
    streams_idle_wait_ms: int  # ...and once none has for `busy_s`
    busy_s: float = 1.0
    # Workarounds for the embedded broker; off (None, 0, False) on Kafka.
    replies_busy_wait_ms: int | None = None  # the reply reader while a grant is awaited
    streams_urgent_wait_ms: int | None = None  # the streams app while callers wait on it,
    streams_others_every_ms: int = 0  # fetching other topics only this often (0: always)
    reply_rotate_records: int = 0  # move to a fresh reply topic after this many replies
    hole_checks: bool = False  # read a partition again from a hole in its offsets
    slow_fetch_backoff: bool = False  # raise a wait whose fetches come back empty
    true_end_offsets: bool = False  # find a partition's end past its last batch's base

    @property
    def streams_paced(self) -> bool:
        """Whether the streams app's fetch wait changes with what comes in."""
        return (self.streams_idle_wait_ms != self.streams_wait_ms
                or self.streams_urgent_wait_ms is not None)


PROFILES: dict[BrokerKind, Profile] = {
    "tansu": Profile(
        kind="tansu", replies_wait_ms=3, requests_wait_ms=3, views_wait_ms=50,
        control_wait_ms=100, sink_wait_ms=50, streams_wait_ms=3, streams_idle_wait_ms=20,
        replies_busy_wait_ms=1, streams_urgent_wait_ms=1, streams_others_every_ms=50,
        reply_rotate_records=250, hole_checks=True, slow_fetch_backoff=True,
        true_end_offsets=True),
    "kafka": Profile(
        kind="kafka", replies_wait_ms=500, requests_wait_ms=500, views_wait_ms=500,
        control_wait_ms=500, sink_wait_ms=500, streams_wait_ms=500,
        streams_idle_wait_ms=500),
}


def profile(kind: BrokerKind, tuning: dict[str, Any] | None = None) -> Profile:
    """The profile of `kind`, with any of its fields replaced by `tuning`."""
    base = PROFILES[kind]
    if not tuning:
        return base
    return Profile.model_validate({**base.model_dump(), **tuning})
