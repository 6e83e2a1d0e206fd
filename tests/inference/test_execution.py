"""One request's execution, fed engine outputs directly: its chunks, their numbering and
the usage it reports.

The outputs are small stand-ins with the fields the worker reads of vLLM's
`RequestOutput` and `CompletionOutput`; importing vLLM takes seconds, these tests do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.execution import Execution
from schemas.events import InferenceError, InferenceRequested, Sampling

T0 = 1_000.0  # when the request was produced


@dataclass
class StandInCompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class StandInRequestOutput:
    outputs: list[StandInCompletionOutput] = field(default_factory=list)
    finished: bool = False
    num_cached_tokens: int | None = None


def choice(index: int, text: str, tokens: int, reason: str | None = None
           ) -> StandInCompletionOutput:
    return StandInCompletionOutput(index, text, list(range(tokens)), reason)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def request(stream: bool = True, n: int = 1, deadline: float = T0 + 60) -> InferenceRequested:
    return InferenceRequested(
        request_id="r1", model="m", kind="completion", prompt="Say", stream=stream,
        sampling=Sampling(n=n), reply_topic="sluice.replies.g", deadline=deadline, ts=T0,
        key_id="k1", tenant="t1", reserved_tokens=40, reserved_at=T0 - 0.5)


def execution(req: InferenceRequested, clock: Clock | None = None) -> Execution:
    return Execution(req, "w1", attempt="a1", clock=clock or Clock(T0 + 0.25))


def test_streamed_deltas_carry_each_choices_offset() -> None:
    run = execution(request(n=2))
    run.add(StandInRequestOutput([choice(0, "Hel", 1), choice(1, "Good", 1)]))
    first = run.chunk()
    run.add(StandInRequestOutput([choice(1, "bye", 1)]))
    run.add(StandInRequestOutput([choice(0, "lo", 1), choice(1, "!", 1)]))
    second = run.chunk()

    assert first is not None and second is not None
    assert [(d.index, d.offset, d.text) for d in first.choices] == [(0, 0, "Hel"), (1, 0, "Good")]
    # What arrived between two chunks is coalesced per choice.
    assert [(d.index, d.offset, d.text) for d in second.choices] == [(0, 3, "lo"), (1, 4, "bye!")]
    assert all(d.finish_reason is None for d in (*first.choices, *second.choices))


def test_the_final_chunk_has_one_delta_per_choice_with_its_reason() -> None:
    run = execution(request(n=2))
    run.add(StandInRequestOutput([choice(0, "Hi", 1), choice(1, "Yo", 1)]))
    run.chunk()
    run.add(StandInRequestOutput([choice(0, "", 1, "stop"), choice(1, " there", 2, "length")],
                                 finished=True))
    final = run.finish(prompt_tokens=5, cancelled=False)

    assert final is not None and final.final and final.error is None
    assert [(d.index, d.offset, d.text, d.finish_reason) for d in final.choices] == [
        (0, 2, "", "stop"), (1, 2, " there", "length")]
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (5, 5)


def test_chunks_are_numbered_in_order_under_one_attempt() -> None:
    run = execution(request())
    assert run.chunk() is None  # nothing produced yet: no chunk, no number taken
    seqs = []
    for text in ("a", "b", "c"):
        run.add(StandInRequestOutput([choice(0, text, 1)]))
        chunk = run.chunk()
        assert chunk is not None
        seqs.append(chunk.seq)
    assert run.chunk() is None
    run.add(StandInRequestOutput([choice(0, "", 1, "stop")], finished=True))
    final = run.finish(prompt_tokens=1, cancelled=False)

    assert final is not None
    assert [*seqs, final.seq] == [0, 1, 2, 3]
    assert {final.attempt, final.request_id, final.worker_id} == {"a1", "r1", "w1"}


def test_without_streaming_the_whole_text_comes_in_the_final_chunk() -> None:
    run = execution(request(stream=False))
    run.add(StandInRequestOutput([choice(0, "Hello", 2)]))
    assert run.chunk() is None
    run.add(StandInRequestOutput([choice(0, " you", 1, "stop")], finished=True))
    final = run.finish(prompt_tokens=3, cancelled=False)

    assert final is not None and final.seq == 0
    assert [(d.offset, d.text, d.finish_reason) for d in final.choices] == [
        (0, "Hello you", "stop")]


def test_usage_counts_every_choices_tokens_and_the_cached_prompt() -> None:
    clock = Clock(T0 + 0.25)
    run = execution(request(n=2), clock)
    clock.now = T0 + 0.5
    run.add(StandInRequestOutput([choice(0, "", 0), choice(1, "", 0)], num_cached_tokens=16))
    clock.now = T0 + 0.75  # the first token
    run.add(StandInRequestOutput([choice(0, "x", 2), choice(1, "y", 1)]))
    clock.now = T0 + 1.0
    run.add(StandInRequestOutput([choice(0, "", 1, "stop"), choice(1, "z", 3, "length")],
                                 finished=True, num_cached_tokens=None))
    final = run.finish(prompt_tokens=20, cancelled=False)
    clock.now = T0 + 1.25
    usage = run.usage()

    assert final is not None and final.usage is not None
    assert final.usage.model_dump() == {
        "prompt_tokens": 20, "completion_tokens": 7, "cached_tokens": 16}
    assert usage.event_id == "usage-r1"
    assert (usage.status, usage.finish_reason) == ("completed", "stop")
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (20, 7, 16)
    assert (usage.queue_ms, usage.ttft_ms, usage.latency_ms) == (250.0, 500.0, 1000.0)
    assert (usage.worker_id, usage.key_id, usage.tenant, usage.model) == ("w1", "k1", "t1", "m")
    assert (usage.reserved_tokens, usage.reserved_at) == (40, T0 - 0.5)


def test_a_request_cancelled_before_it_starts_is_not_run() -> None:
    run = execution(request())
    assert run.before_start(cancelled=True) == "cancelled"
    usage = run.usage()
    assert usage.status == "cancelled"
    assert (usage.prompt_tokens, usage.completion_tokens, usage.ttft_ms) == (0, 0, None)


def test_a_request_past_its_deadline_expires() -> None:
    run = execution(request(deadline=T0 + 0.125), Clock(T0 + 0.25))
    assert run.before_start(cancelled=False) == "expired"
    usage = run.usage()
    assert (usage.status, usage.event_id, usage.queue_ms) == ("expired", "usage-r1", 250.0)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.finish_reason) == (0, 0, None)


def test_a_request_in_time_and_not_cancelled_runs() -> None:
    assert execution(request()).before_start(cancelled=False) is None


def test_a_refusal_ends_with_an_error_chunk_and_fails_the_usage() -> None:
    run = execution(request())
    run.add(StandInRequestOutput([choice(0, "partial", 2)]))
    run.chunk()
    error = InferenceError(status=500, type="server_error", message="The engine failed.")
    final = run.refuse(error)

    assert (final.seq, final.final, final.choices, final.usage) == (1, True, (), None)
    assert final.error == error
    usage = run.usage()
    assert (usage.status, usage.finish_reason, usage.ttft_ms) == ("failed", None, None)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (0, 0, 0)


def test_a_cancel_mid_generation_sends_no_final_chunk_but_bills_what_ran() -> None:
    run = execution(request())
    run.add(StandInRequestOutput([choice(0, "Once", 2)], num_cached_tokens=4))
    run.chunk()
    run.add(StandInRequestOutput([choice(0, " upon", 1)]))
    assert run.finish(prompt_tokens=9, cancelled=True) is None
    usage = run.usage()
    assert usage.status == "cancelled"
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (9, 3, 4)


def test_an_engine_abort_counts_as_a_cancel() -> None:
    run = execution(request())
    run.add(StandInRequestOutput([choice(0, "Once", 2, "abort")], finished=True))
    assert run.finish(prompt_tokens=9, cancelled=False) is None
    assert run.usage().status == "cancelled"
