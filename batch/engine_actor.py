"""A Ray Data actor that holds one model's engine, the same class and YAML settings a Serve
replica uses, and answers a batch of rows with concurrent engine calls (vLLM schedules them
together; the batching engines merge them into forward passes)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

from batch.rows import ID, request_body
from batch.usage import spent
from common.engine_response import EngineResponse
from configs.capabilities import Capability
from configs.server_models import BaseModelEntry


class EngineActor:
    def __init__(self, entry: BaseModelEntry, capability: str, parameters: dict[str, Any]):
        from servers import engine_class

        self.entry, self.capability, self.parameters = entry, Capability(capability), parameters
        # The engine lives on one event loop of its own, as in a replica; batches are handed to it.
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="engine-loop").start()
        self.engine = engine_class(entry)(entry)
        self._run(self.engine.start())

    def _run(self, coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        columns = list(batch)
        rows = [
            dict(zip(columns, values, strict=True))
            for values in zip(*(batch[c] for c in columns), strict=True)
        ]
        started = time.perf_counter()
        answers, spending = self._run(self._answer_all(rows))
        share = (time.perf_counter() - started) / max(
            len(rows), 1
        )  # this actor's busy time, per row
        return {
            ID: [row[ID] for row in rows],
            "result": [json.dumps(a) for a in answers],
            "seconds": [share] * len(rows),
            "spent": spending,  # for the usage ledger (batch/usage.py)
        }

    async def _answer_all(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """``{"response": ...}`` or ``{"error": ...}`` per row (a bad row is reported, never fails
        the job), and what each spent."""
        bodies: list[tuple[int, dict[str, Any]]] = []
        answers: dict[int, dict[str, Any]] = {}
        spending = {index: spent(None) for index in range(len(rows))}
        for index, row in enumerate(rows):
            try:
                body = request_body(row, self.entry.model_id, self.capability, self.parameters)
                bodies.append((index, body))
            except Exception as err:  # a row that is not a request at all
                answers[index] = {
                    "error": {"status": 400, "message": f"{type(err).__name__}: {err}"}
                }
        results = await self.engine.handle_many(self.capability, [body for _, body in bodies])
        for (index, _), result in zip(bodies, results, strict=True):
            answers[index], spending[index] = _answer(result), spent(result)
        return [answers[index] for index in range(len(rows))], list(spending.values())

    def __del__(self):
        try:
            self._run(self.engine.shutdown())
        except Exception:
            pass


def _answer(result: EngineResponse) -> dict[str, Any]:
    if result.status_code != 200:
        return {"error": {"status": result.status_code, "message": result.error_message()}}
    try:
        return {"response": json.loads(result.content)}
    except ValueError:  # a binary answer (speech): not what a batch writes
        return {"response": {"bytes": len(result.content), "media_type": result.media_type}}
