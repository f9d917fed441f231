"""Property-based fuzzing of every endpoint, driven by the platform's own OpenAPI description.

Schemathesis generates bodies, paths and query strings from ``/openapi.json`` (valid ones, and
ones that break the description on purpose) and sends them to the running platform with real
models behind it. Every answer must be a non-5xx; every error must be in its endpoint's shape;
no replica may restart. CI runs a few hundred cases, the same ones each run; set
``PLATFORM_FUZZ_EXAMPLES`` (cases per operation and mode) and ``PLATFORM_FUZZ_RANDOM=1`` for a
longer run with fresh cases, and ``PLATFORM_URL`` to fuzz a platform already running (several
such processes at once for a long run).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode

from tests.integration.helpers import ADMIN_KEY, HELLO, auth_headers, fresh_ready, replica_actors
from tests.integration.session_config import COLD_CHAT

# 8 per operation and mode: about 400 cases, every operation in both modes (12 gave about 600, in
# half again the time: the repeats were more of the same errors). Generating the bodies of vLLM's
# protocol models is half of it, on the CPU the platform uses too.
EXAMPLES = int(os.environ.get("PLATFORM_FUZZ_EXAMPLES", "8"))
DERANDOMIZE = os.environ.get("PLATFORM_FUZZ_RANDOM") != "1"
REQUEST_TIMEOUT_S = 300
MAX_GENERATED = 8  # n and tokens per case
READINESS = {
    "/ready",
    "/v1/health",
    "/v2/health/ready",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/versions/{version}/ready",
}


@pytest.fixture(scope="module")
def platform_schema(platform_url):
    """The description the platform serves to this key, pointed at the platform."""
    description = httpx.get(
        f"{platform_url}/openapi.json", headers=auth_headers(), timeout=120
    ).json()
    schema = schemathesis.openapi.from_dict(_without_sleeping_models(description))
    schema.config.update(
        base_url=platform_url, headers=auth_headers(), request_timeout=REQUEST_TIMEOUT_S
    )
    return schema


def _without_sleeping_models(description):
    """The description without cold-chat among the models a case may name: a case that passes
    vLLM's request models and fails later (its chat template, say) would start its replica
    (tens of seconds), and test_variant_affinity asks for its first request while it sleeps.
    affinity-chat, the same model and engine awake, is fuzzed."""
    if isinstance(description, dict):
        return {key: _without_sleeping_models(value) for key, value in description.items()}
    if isinstance(description, list):
        kept = [
            item
            for item in description
            if not (isinstance(item, str) and item.split(":")[0] == COLD_CHAT)
        ]
        return [_without_sleeping_models(item) for item in kept]
    return description


@dataclasses.dataclass
class Tally:
    """What one operation's cases got: answers by status, error messages, seconds (generating and
    sending, and of those waiting for answers) and its slowest case."""

    answers: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    seconds: float = 0.0
    waited: float = 0.0
    slowest: tuple[float, str] = (0.0, "")

    def __str__(self) -> str:
        common = "; ".join(f"{n}x {message}" for message, n in self.errors.most_common(3))
        took, case = self.slowest
        return (
            f"{dict(sorted(self.answers.items()))} {self.seconds:.1f}/{self.waited:.1f} s  "
            f"{common}\n    slowest: {took:.1f} s {case}"
        )


def test_a_malformed_request_to_a_model_scaled_to_zero_does_not_wake_it(platform_url):
    """The router checks the body of a request to cold-chat (scaled to zero, no replica) with
    vLLM's own rules before it starts a replica: a 400 at once, not a cold vLLM start (tens of
    seconds) to refuse it. Runs before the fuzzer, whose well-formed cases may wake the model."""

    def replicas() -> dict:
        return fresh_ready(platform_url, ADMIN_KEY).json()["models"][COLD_CHAT]["replicas"]

    assert replicas()["target"] == 0  # as the session platform starts it
    for body, param in (
        ({"messages": "hello"}, "messages"),
        ({"messages": HELLO, "temperature": "hot"}, "temperature"),
        ({"messages": HELLO, "stream": True, "n": "two"}, "n"),
    ):
        answer = httpx.post(
            f"{platform_url}/v1/chat/completions",
            json={"model": COLD_CHAT, **body},
            headers=auth_headers(),
            timeout=120,
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param, answer.text
    assert (replicas()["running"], replicas()["target"]) == (0, 0)


def test_no_request_gets_a_5xx_and_no_replica_restarts(platform_url, platform_schema):
    before = replica_actors(platform_url)
    tallies: dict[str, Tally] = collections.defaultdict(Tally)
    failures = []
    for operation in (result.ok() for result in platform_schema.get_all_operations()):
        tally, started = tallies[operation.label], time.monotonic()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, tally)
            except (
                hypothesis.errors.Unsatisfiable
            ):  # no input of the operation can break its description
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (
                Exception
            ) as exc:  # every operation is fuzzed; the failures are reported together
                failures.append(f"{operation.label} ({mode.value}): {exc}")
        tally.seconds = time.monotonic() - started
    cases = sum(sum(tally.answers.values()) for tally in tallies.values())
    print(f"\n{cases} cases: answers by status, seconds in all/waiting, the commonest errors")
    for label, tally in tallies.items():
        print(f"  {label}: {tally}")
    assert not failures, "\n\n".join(failures)
    assert replica_actors(platform_url) == before


def _fuzz(operation, mode: GenerationMode, tally: Tally) -> None:
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=DERANDOMIZE,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.generate],
    )
    @hypothesis.given(operation.as_strategy(generation_mode=mode))
    def case_is_answered(case):
        _bound_generation(case.body)
        sent = time.monotonic()
        response = case.call()
        took = time.monotonic() - sent
        tally.waited += took
        if took > tally.slowest[0]:
            tally.slowest = (took, f"{response.status_code} {str(case.body)[:300]}")
        tally.answers[response.status_code] += 1
        if (
            case.path in READINESS and response.status_code == 503
        ):  # "not ready" is these endpoints' answer
            return
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path}: {response.status_code} "
            f"{response.text[:500]}\nbody: {str(case.body)[:500]}"
        )
        if response.status_code >= 400:
            tally.errors[assert_error_shape(case.formatted_path, response)[:80]] += 1

    case_is_answered()


def _bound_generation(body) -> None:
    """Keep the tokens a valid body asks for small, so a few hundred cases fit CI's time on two
    cores (out-of-range values stay: they must be 400s); the caps themselves are vLLM's."""
    if isinstance(body, dict):
        for field in ("n", "best_of", "max_tokens", "max_completion_tokens", "min_tokens"):
            if (
                isinstance(body.get(field), int)
                and not isinstance(body[field], bool)
                and body[field] > MAX_GENERATED
            ):
                body[field] = MAX_GENERATED
        # A prompt with no bound generates to the model's context: smollm2 on the CPU took 165 s
        # for one such case. The bound's absence is the engines' default, tested elsewhere.
        generates = "messages" in body or "prompt" in body
        if generates and "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = MAX_GENERATED


def assert_error_shape(path: str, response) -> str:
    """OpenAI's ``{"error": {message, type, param, code}}`` on /v1, ``{"error": "..."}`` on /v2;
    returns the message."""
    body = json.loads(response.text)
    error = body["error"]
    if path == "/v2" or path.startswith("/v2/"):
        assert isinstance(error, str) and error, body
        return error
    # The platform's own errors carry the request id; vLLM's, passed on, may not.
    assert (
        {"message", "type", "param", "code"}
        <= set(error)
        <= {"message", "type", "param", "code", "request_id"}
    ), body
    sent_back = response.headers["x-request-id"]  # schemathesis lists a header's values
    (sent_back,) = (
        sent_back if isinstance(sent_back, list) else [sent_back]
    )  # one id, not Serve's and ours
    assert error["message"] and error.get("request_id", sent_back) == sent_back, body
    return error["message"]
