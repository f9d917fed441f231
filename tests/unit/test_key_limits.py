"""Per-key request and token limits: the sliding window, usage metering, the router's 429."""

import json

import pytest
from fastapi.testclient import TestClient

from configs.api_keys import APIKey
from serve.policy.key_limits import RESERVATION_TTL_S, SlidingWindow
from serve.policy.metering import (
    StreamMeter,
    UsageAsked,
    ask_for_usage,
    ask_for_usage_header,
    reserved_tokens,
    response_tokens,
)
from serve.router.app import create_router_app
from serve.router.routing import RouterSettings
from tests.unit.router_fakes import (
    CHAT,
    ROUTES,
    Clock,
    FakeEngines,
    LocalLimits,
    assert_openai_error,
)


def test_a_key_gets_its_requests_per_minute_and_then_waits_for_the_oldest_to_age_out():
    clock = Clock()
    window = SlidingWindow(clock)
    assert [window.admit("a", 3) for _ in range(3)] == [(0, 0)] * 3
    clock.now += 20
    assert window.admit("a", 3) == (40, 0)  # the first request leaves the window 40 s from now
    assert window.admit("b", 3) == (0, 0)  # keys are counted apart
    clock.now += 40
    assert window.admit("a", 3) == (0, 0)


def test_over_its_limit_a_key_gets_429_with_retry_after_and_others_are_served():
    keys = (APIKey("limited", "batch", requests_per_minute=2), APIKey("free", "ops"))
    app = create_router_app(RouterSettings(ROUTES, api_keys=keys), FakeEngines(), LocalLimits())
    c = TestClient(app)
    limited, free = {"Authorization": "Bearer limited"}, {"Authorization": "Bearer free"}
    assert [
        c.post("/v1/chat/completions", json=CHAT, headers=limited).status_code for _ in range(2)
    ] == [200, 200]
    refused = c.post("/v1/chat/completions", json=CHAT, headers=limited)
    assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert (
        refused.headers["retry-after"] == "60"
        and refused.json()["error"]["type"] == "rate_limit_error"
    )
    assert all(
        c.post("/v1/chat/completions", json=CHAT, headers=free).status_code == 200 for _ in range(5)
    )


def test_tokens_per_minute_wait_for_enough_old_tokens_to_leave_the_window():
    clock = Clock()
    window = SlidingWindow(clock)
    assert window.admit("a", None, 100) == (0, 0)
    window.settle("a", 0, 70)
    clock.now += 10
    assert window.admit("a", None, 100) == (0, 0)  # 70 used: under the limit, admitted
    window.settle("a", 0, 50)
    clock.now += 10
    # 120 used; under 100 once the first 70 leave, at t=60
    assert window.admit("a", None, 100) == (40, 0)
    clock.now += 40
    assert window.admit("a", None, 100) == (0, 0)


def test_admission_reserves_what_a_request_may_spend_and_settles_on_the_real_count():
    window = SlidingWindow(Clock())
    wait, first = window.admit("a", None, 100, reserve=60)
    assert wait == 0 and first > 0
    # Running requests' reservations count: a second of 60 would overrun the 100 before either ends
    assert window.admit("a", None, 100, reserve=60) == (1.0, 0)
    assert window.admit("a", None, 100, reserve=30)[0] == 0  # 60 + 30 fit
    window.settle("a", first, 12)  # it spent 12 of its 60
    assert window.admit("a", None, 100, reserve=50)[0] == 0  # 12 + 30 + 50 fit
    assert window.admit("b", None, 100, reserve=60)[0] == 0  # keys are counted apart


def test_a_request_larger_than_the_limit_runs_alone():
    window = SlidingWindow(Clock())
    wait, ticket = window.admit("a", None, 60, reserve=500)  # max_tokens above the minute's tokens
    assert wait == 0
    assert window.admit("a", None, 60, reserve=1) == (1.0, 0)  # not beside it
    window.settle("a", ticket, 0)
    assert window.admit("a", None, 60, reserve=500)[0] == 0


def test_a_part_of_an_admitted_request_reserves_tokens_without_counting_as_a_request():
    window = SlidingWindow(Clock())
    assert window.admit("a", 1, 100)[0] == 0  # the request (a pipeline run)
    wait, step = window.admit("a", 1, 100, reserve=60, counted=False)  # its step
    assert wait == 0 and step > 0
    assert window.admit("a", 1, 100, reserve=60, counted=False) == (1.0, 0)  # no room beside it
    window.settle("a", step, 10)
    assert window.admit("a", 1, 100, reserve=60, counted=False)[0] == 0
    assert window.admit("a", 1, 100)[0] == 60  # still one request in the minute


def test_a_reservation_its_replica_never_settled_is_charged_in_full_when_it_expires():
    """A one-hop replica that dies mid-stream takes the count it had seen with it: the most the
    request could have spent is charged, for a minute from its expiry, then the key is free."""
    clock = Clock()
    window = SlidingWindow(clock)
    window.admit("a", None, 100, reserve=80)
    clock.now += RESERVATION_TTL_S + 1
    assert window.admit("a", None, 100, reserve=30) == (60, 0)  # the 80 leave the window in 60 s
    assert [n for _, n in window.tokens["a"]] == [80]
    clock.now += 60
    assert window.admit("a", None, 100, reserve=100)[0] == 0


@pytest.mark.parametrize(
    "body,context,reserved",
    [
        ({"messages": [{"content": "x" * 40}], "max_tokens": 16}, 256, 26),
        ({"messages": [{"content": "x" * 40}]}, 256, 266),  # up to the context
        ({"prompt": "x" * 40, "max_completion_tokens": 0}, None, 10),
        ({"input": "x" * 40}, 256, 10),  # embeddings generate nothing
        ({"messages": [{"content": [{"image_url": {"url": "data:" + "A" * 4000}}]}]}, 8, 8),
    ],
)
def test_a_request_reserves_its_prompt_guessed_from_its_text_and_what_it_may_generate(
    body, context, reserved
):
    # the model's name counts as text too: a guess errs on the side of reserving more
    assert reserved_tokens({**body, "model": ""}, context) == reserved


def test_concurrent_requests_with_large_max_tokens_do_not_all_pass_on_either_path():
    """The router's app admits through the policy as the one-hop replica does."""
    key = APIKey("limited-tokens-0123", "few", tokens_per_minute=100)
    limits = LocalLimits()
    app = create_router_app(RouterSettings(ROUTES, api_keys=(key,)), FakeEngines(), limits)
    big = {**CHAT, "max_tokens": 80}
    headers = {"Authorization": f"Bearer {key.secret}"}
    # The fake engine answers without usage: each answer settles 0 tokens, its reservation returns.
    assert (
        TestClient(app).post("/v1/chat/completions", json=big, headers=headers).status_code == 200
    )
    wait, held = limits.window.admit(key.name, None, 100, reserve=80)  # one still running
    refused = TestClient(app).post("/v1/chat/completions", json=big, headers=headers)
    assert_openai_error(refused, 429, "rate_limit_exceeded")
    limits.window.settle(key.name, held, 0)
    assert (
        TestClient(app).post("/v1/chat/completions", json=big, headers=headers).status_code == 200
    )


def test_a_stream_meter_reads_the_usage_and_drops_the_event_the_client_did_not_ask_for():
    usage = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    events = [
        'data: {"choices": [{"delta": {"content": "a"}}], "usage": null}',
        f'data: {{"choices": [], "usage": {json.dumps(usage)}}}',
        "data: [DONE]",
    ]
    stream = "".join(e + "\n\n" for e in events)
    quiet = StreamMeter(UsageAsked())
    # Fed in pieces that split an event: whole events come out, the usage event does not.
    out = quiet.feed(stream[:30]) + quiet.feed(stream[30:])
    assert out == events[0] + "\n\n" + events[2] + "\n\n" and quiet.tokens == 12
    asked = StreamMeter(UsageAsked(final=True))
    assert asked.feed(stream) == stream and asked.tokens == 12


def _chunk(content: str, total: int) -> str:
    usage = {"prompt_tokens": 5, "completion_tokens": total - 5, "total_tokens": total}
    return json.dumps({"choices": [{"delta": {"content": content}}], "usage": usage})


def test_a_stream_cut_short_is_charged_what_it_generated_and_shows_only_the_usage_asked():
    # vLLM's continuous usage: every chunk carries the count so far
    stream = "".join(f"data: {_chunk(c, 6 + i)}\n\n" for i, c in enumerate("abc"))
    quiet = StreamMeter(UsageAsked())
    out = quiet.feed(stream)  # and then the client leaves, or the timeout cuts it
    assert quiet.tokens == 8 and '"usage"' not in out and out.count('"content"') == 3
    final_only = StreamMeter(UsageAsked(final=True))
    assert final_only.feed(stream).count('"usage":null') == 3 and final_only.tokens == 8
    every_chunk = StreamMeter(UsageAsked(final=True, continuous=True))
    assert every_chunk.feed(stream) == stream


def test_a_token_chunk_as_vllm_writes_it_loses_only_its_usage():
    """vLLM writes chunks compact, usage after choices: the meter cuts the usage out of the text
    (a token's content that looks like usage, nested details and fields after it included)."""
    usage = {
        "prompt_tokens": 5,
        "total_tokens": 9,
        "completion_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    chunk = {
        "id": "c",
        "choices": [{"index": 0, "delta": {"content": ',"usage":{"total_tokens":99}}'}}],
        "usage": usage,
        "system_fingerprint": "fp",
    }
    event = "data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")) + "\n\n"
    for asked, shown in (
        (UsageAsked(), None),
        (UsageAsked(final=True), {"usage": None}),
        (UsageAsked(continuous=True), {"usage": usage}),
    ):
        meter = StreamMeter(asked)
        (out,) = meter.feed(event).removeprefix("data: ").split("\n\n")[:-1]
        without = {k: v for k, v in chunk.items() if k != "usage"}
        assert json.loads(out) == without | (shown or {}) and meter.tokens == 9


@pytest.mark.parametrize("compact", [True, False], ids=["as-vllm-writes", "spaced"])
def test_a_stream_of_several_choices_cut_short_is_charged_every_choices_tokens(compact):
    """vLLM's usage on a chunk counts the prompt and that chunk's choice only (n > 1): a stream
    cut before its final usage event is charged the prompt once and each choice's last count."""

    def chunk(index: int, completion: int) -> str:
        usage = {"prompt_tokens": 5, "total_tokens": 5 + completion}
        body = {"choices": [{"index": index, "delta": {"content": "x"}}], "usage": usage}
        text = json.dumps(body, separators=(",", ":")) if compact else json.dumps(body)
        return f"data: {text}\n\n"

    meter = StreamMeter(UsageAsked())
    meter.feed(chunk(0, 1) + chunk(1, 1) + chunk(0, 2) + chunk(1, 2) + chunk(0, 3))
    assert (meter.counts.prompt, meter.counts.completion) == (5, 3 + 2)
    final = {"choices": [], "usage": {"prompt_tokens": 5, "total_tokens": 12}}
    meter.feed(f"data: {json.dumps(final)}\n\n")  # the final event counts them all
    assert meter.tokens == 12


def test_usage_is_asked_of_streams_on_every_chunk_and_read_from_answers():
    body = {"stream": True, "stream_options": {"continuous_usage_stats": False}}
    assert ask_for_usage(body) == UsageAsked(final=False, continuous=False)
    assert body["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}
    asked = ask_for_usage({"stream": True, "stream_options": {"include_usage": True}})
    assert asked == UsageAsked(final=True)
    assert response_tokens(b'{"usage": {"total_tokens": 7}}') == 7 and response_tokens(b"[1]") == 0


def test_raw_bytes_embeddings_are_asked_with_their_usage_header():
    body = {"encoding_format": "bytes_only"}
    assert ask_for_usage_header(body) is False and body["encoding_format"] == "bytes"
    assert (
        ask_for_usage_header({"encoding_format": "bytes"}) is True
        and ask_for_usage_header({}) is True
    )
    header = json.dumps({"usage": {"total_tokens": 5}})
    assert (
        response_tokens(b"\x00\x00\x80\x3f", header) == 5
        and response_tokens(b"\x00\x00\x80\x3f") == 0
    )


def test_a_stream_without_a_final_blank_line_loses_nothing():
    meter = StreamMeter(UsageAsked())
    assert meter.feed('data: {"choices": [1]}\n\ndata: [DONE]') == 'data: {"choices": [1]}\n\n'
    assert meter.flush() == "data: [DONE]" and meter.flush() == ""


def test_a_window_read_back_after_its_actor_restarted_still_refuses_and_settles():
    clock = Clock()
    window = SlidingWindow(clock)
    assert [window.admit("a", 3) for _ in range(3)] == [(0, 0)] * 3
    _, ticket = window.admit("b", None, tokens_per_minute=100, reserve=60)
    clock.now += 20
    again = SlidingWindow.restored(json.loads(json.dumps(window.saved())), clock)
    assert again.admit("a", 3) == (40, 0)  # the minute it spent is still counted
    assert again.admit("b", None, tokens_per_minute=100, reserve=60)[0] > 0  # still reserved
    again.settle("b", ticket, 10)  # the reservation made before the restart is returned
    _, later = again.admit("b", None, tokens_per_minute=100, reserve=60)
    assert later > ticket  # a new ticket never reuses one a running request holds
    assert not again.reserved["b"].get(ticket)
