from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas import topics
from schemas.events import (
    ChoiceDelta,
    InferenceRequested,
    Message,
    TokenChunk,
    UsageRecorded,
    decode,
)


def test_events_round_trip_by_type() -> None:
    req = InferenceRequested(request_id="r1", model="m", kind="chat", reply_topic="t",
                             deadline=1.0, messages=(Message(role="user", content="hi"),))
    chunk = TokenChunk(request_id="r1", worker_id="w", attempt="a", seq=0,
                       choices=(ChoiceDelta(text="x"),))
    for event in (req, chunk):
        assert decode(event.encode()) == event


def test_events_are_strict_and_frozen() -> None:
    usage = UsageRecorded(request_id="r", model="m", worker_id="w", status="completed",
                          prompt_tokens=1, completion_tokens=2)
    with pytest.raises(ValidationError):
        usage.prompt_tokens = 5  # type: ignore[misc]
    with pytest.raises(ValidationError):
        UsageRecorded.model_validate({**usage.model_dump(), "surprise": 1})
    with pytest.raises(ValidationError):
        decode(b'{"event_type": "no_such_event"}')


def test_topic_names_are_kafka_safe() -> None:
    assert topics.inference("org/model:7b").name == "sluice.inference.org_model_7b"
    assert topics.replies("host-8080").name == "sluice.replies.host-8080"
    assert topics.static(topics.WORKERS).compacted
