"""A batch job's rows in the usage ledger, when the config names a usage database: each answer
under the job's key name (``--usage-key``, by default ``batch``), its model and the endpoint
``batch``, with its tokens and media as the Serve paths count them. The engine actors send what
each answer spent beside it; the driver adds it to the ledger, whose thread writes the sums every
second and whose ``close`` writes the rest when the job ends (the rows never wait on it)."""

from __future__ import annotations

import json
import time
from typing import Any

from common.engine_response import EngineResponse
from common.media_usage import MediaUsage
from serve.policy.metering import USAGE_HEADER, TokenCounts, response_usage
from serve.usage.database import UsageDatabase
from serve.usage.ledger import Answered

ENDPOINT = "batch"
DEFAULT_KEY = "batch"


def spent(result: EngineResponse | None) -> str:
    """What one answer spent, as the actor hands it to the driver (None: the row reached no
    engine, it was no request)."""
    if result is None:
        return json.dumps({"status": 400})
    counts, media = TokenCounts(), MediaUsage()
    if result.status_code == 200:
        headers = result.headers or {}
        counts = response_usage(result.content, headers.get(USAGE_HEADER))
        media = MediaUsage.of_headers(headers)
    return json.dumps(
        {
            "status": result.status_code,
            "prompt_tokens": counts.prompt,
            "completion_tokens": counts.completion,
            "media": media.as_dict(),
        }
    )


class BatchLedger:
    """The job's answers into the ledger of ``url`` under ``key_name`` and ``model``."""

    def __init__(self, url: str, key_name: str, model: str):
        self.database = UsageDatabase(url)
        self.key_name, self.model = key_name, model

    def record(self, spent_json: str, latency_s: float) -> None:
        row: dict[str, Any] = json.loads(spent_json)
        self.database.record(
            Answered(
                key_name=self.key_name,
                model=self.model,
                endpoint=ENDPOINT,
                status=int(row["status"]),
                prompt_tokens=int(row.get("prompt_tokens", 0)),
                completion_tokens=int(row.get("completion_tokens", 0)),
                latency_s=latency_s,
                at=time.time(),
                media=MediaUsage.of_dict(row.get("media") or {}),
            )
        )

    def close(self) -> None:
        """Write what is not written yet."""
        self.database.close()
