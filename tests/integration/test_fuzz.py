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
import json
import os

import httpx
import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode

from tests.integration.helpers import auth_headers, replica_actors

EXAMPLES = int(os.environ.get("PLATFORM_FUZZ_EXAMPLES", "12"))
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
    schema = schemathesis.openapi.from_dict(description)
    schema.config.update(
        base_url=platform_url, headers=auth_headers(), request_timeout=REQUEST_TIMEOUT_S
    )
    return schema


def test_no_request_gets_a_5xx_and_no_replica_restarts(platform_url, platform_schema):
    before = replica_actors(platform_url)
    answers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    errors: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures = []
    for operation in (result.ok() for result in platform_schema.get_all_operations()):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                _fuzz(operation, mode, answers[operation.label], errors[operation.label])
            except (
                hypothesis.errors.Unsatisfiable
            ):  # no input of the operation can break its description
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (
                Exception
            ) as exc:  # every operation is fuzzed; the failures are reported together
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    cases = sum(sum(counts.values()) for counts in answers.values())
    print(f"\n{cases} cases, answers by status (and the commonest errors):")
    for label, counts in answers.items():
        common = "; ".join(f"{n}x {message}" for message, n in errors[label].most_common(3))
        print(f"  {label}: {dict(sorted(counts.items()))}  {common}")
    assert not failures, "\n\n".join(failures)
    assert replica_actors(platform_url) == before


def _fuzz(
    operation, mode: GenerationMode, answers: collections.Counter, errors: collections.Counter
) -> None:
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
        response = case.call()
        answers[response.status_code] += 1
        if (
            case.path in READINESS and response.status_code == 503
        ):  # "not ready" is these endpoints' answer
            return
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path}: {response.status_code} "
            f"{response.text[:500]}\nbody: {str(case.body)[:500]}"
        )
        if response.status_code >= 400:
            errors[assert_error_shape(case.formatted_path, response)[:80]] += 1

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
