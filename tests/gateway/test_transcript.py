"""How the gateway assembles chunks, across worker attempts."""

from __future__ import annotations

import time

from gateway.transcript import Transcript
from schemas.events import ChoiceDelta, TokenChunk, TokenUsage


def chunk(attempt: str, seq: int, offset: int, text: str, final: bool = False) -> TokenChunk:
    return TokenChunk(
        request_id="r", worker_id=attempt, attempt=attempt, seq=seq, final=final,
        choices=(ChoiceDelta(offset=offset, text=text, finish_reason="stop" if final else None),),
        usage=TokenUsage(prompt_tokens=1, completion_tokens=3) if final else None)


def test_text_accumulates_per_choice() -> None:
    t = Transcript(failover_after_s=1)
    t.accept(chunk("a", 0, 0, "Hel"))
    t.accept(chunk("a", 1, 3, "lo", final=True))
    assert t.text(0) == "Hello"
    assert t.finish == {0: "stop"}
    assert t.usage is not None


def test_a_replayed_attempt_only_adds_what_the_client_has_not_seen() -> None:
    t = Transcript(failover_after_s=0)
    t.accept(chunk("a", 0, 0, "The cap"))
    time.sleep(0.01)  # attempt "a" went quiet: its worker died
    assert [d.text for d in t.accept(chunk("b", 0, 0, "The"))] == []
    assert [d.text for d in t.accept(chunk("b", 1, 3, " capital"))] == ["ital"]
    assert t.text(0) == "The capital"


def test_a_live_attempt_keeps_the_request() -> None:
    t = Transcript(failover_after_s=60)
    t.accept(chunk("a", 0, 0, "one"))
    assert t.accept(chunk("b", 0, 0, "two and more")) == []
    t.accept(chunk("a", 1, 3, " two", final=True))
    assert t.text(0) == "one two"
