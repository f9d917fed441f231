"""What a batch job reads and writes: input rows (JSONL or Parquet records, or a folder of
audio/image/video files) with a stable id each, the engine request each row becomes, and the
output (JSONL or Parquet; local, ``s3://`` or ``gs://`` through pyarrow) that a re-run resumes."""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import posixpath
from typing import Any

from configs.capabilities import Capability

ID = "id"
RECORD_SUFFIXES = (".jsonl", ".json", ".parquet")
FILE_CAPABILITIES = {
    Capability.TRANSCRIPTION,
    Capability.TRANSLATION,
    Capability.IMAGE_CLASSIFICATION,
    Capability.ZERO_SHOT_IMAGE_CLASSIFICATION,
    Capability.OBJECT_DETECTION,
    Capability.IMAGE_TO_TEXT,
    Capability.IMAGE_EMBEDDING,
    Capability.VIDEO_CLASSIFICATION,
}


def is_records(path: str) -> bool:
    return path.rstrip("/").endswith(RECORD_SUFFIXES)


def read_rows(path: str, capability: Capability):
    """A Ray dataset of the input: records (JSONL or Parquet) with their fields, or media files
    (a folder or a glob) as ``{"id": path, "bytes": ...}``."""
    import ray.data

    if is_records(path):
        reader = (
            ray.data.read_parquet if path.rstrip("/").endswith(".parquet") else ray.data.read_json
        )
        return reader(path)
    if capability not in FILE_CAPABILITIES:
        raise ValueError(
            f"{path}: {capability.value} reads records; give a .jsonl or .parquet file"
        )
    paths = sorted(glob.glob(path)) if "*" in path and "://" not in path else path
    if not paths:
        raise ValueError(f"{path}: no file matches")
    return ray.data.read_binary_files(paths, include_paths=True).map(
        lambda row: {ID: row["path"], "bytes": row["bytes"]}
    )


def row_id(row: dict[str, Any]) -> str:
    """The row's ``id`` field, else a digest of its content: stable across runs, so a re-run
    knows which rows it has done whatever order Ray Data reads them in (and whatever columns
    other records add)."""
    if row.get(ID) is not None:
        return str(row[ID])
    payload = json.dumps(
        {k: v for k, v in row.items() if not _missing(v)}, sort_keys=True, default=_jsonable
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def request_body(
    row: dict[str, Any], model_id: str, capability: Capability, parameters: dict
) -> dict[str, Any]:
    """The engine request for one row: a record is the endpoint's own body (OpenAI's batch API
    shape; a bare ``prompt`` becomes one user message for chat); a file goes in as the upload."""
    if "bytes" in row and capability in FILE_CAPABILITIES:
        data = bytes(row["bytes"])
        if capability in (Capability.TRANSCRIPTION, Capability.TRANSLATION):
            return {"model": model_id, "file": data, "response_format": "json", **parameters}
        return {"model": model_id, "inputs": [data], "parameters": parameters}
    body = {k: _plain(v) for k, v in row.items() if k != ID and not _missing(v)}
    if (
        capability is Capability.CHAT
        and "messages" not in body
        and isinstance(body.get("prompt"), str)
    ):
        body["messages"] = [{"role": "user", "content": body.pop("prompt")}]
    return {**parameters, **body, "model": model_id}


def _missing(value: Any) -> bool:
    """A field this record lacks: Ray Data gives every row every column, None or NaN where
    absent."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """Ray Data hands numpy arrays for list columns; the engines take JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else str(value)


class OutputFile:
    """The job's output: one line (or Parquet row) per input row, ``{"id", "response"}`` or
    ``{"id", "error"}``. A local ``.jsonl`` file is appended to; anything else (Parquet, a cloud
    URI) is a folder of part files. Rows written by an earlier run are read back to be skipped."""

    def __init__(self, path: str):
        from pyarrow import fs

        self.path = path
        self.filesystem, self.root = fs.FileSystem.from_uri(
            path if "://" in path else os.path.abspath(path)
        )
        self.appends = self.filesystem.type_name == "local" and path.endswith(".jsonl")
        self.parquet = path.rstrip("/").endswith(".parquet")
        self._parts = 0

    def finished_ids(self) -> set[str]:
        return {str(record[ID]) for record in self._records()}

    def counts(self) -> tuple[int, int]:
        """(rows answered, rows with an error) in the whole output."""
        records = list(self._records())
        return sum(1 for r in records if not r.get("error")), sum(
            1 for r in records if r.get("error")
        )

    def write(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        if self.appends:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "a") as handle:
                handle.writelines(json.dumps(r, default=_jsonable) + "\n" for r in records)
            return
        self.filesystem.create_dir(self.root, recursive=True)
        name = posixpath.join(self.root, f"part-{os.getpid()}-{self._next_part():06d}")
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            rows = [
                {
                    ID: r[ID],
                    "response": json.dumps(r.get("response"), default=_jsonable)
                    if "response" in r
                    else None,
                    "error": json.dumps(r["error"]) if "error" in r else None,
                }
                for r in records
            ]
            schema = pa.schema(
                [(ID, pa.string()), ("response", pa.string()), ("error", pa.string())]
            )
            pq.write_table(
                pa.Table.from_pylist(rows, schema=schema),
                name + ".parquet",
                filesystem=self.filesystem,
            )
        else:
            with self.filesystem.open_output_stream(name + ".jsonl") as stream:
                stream.write(
                    "".join(json.dumps(r, default=_jsonable) + "\n" for r in records).encode()
                )

    def _next_part(self) -> int:
        if self._parts == 0:
            self._parts = len(self._part_files())
        self._parts += 1
        return self._parts

    def _part_files(self) -> list[str]:
        from pyarrow import fs

        info = self.filesystem.get_file_info(self.root)
        if info.type != fs.FileType.Directory:
            return []
        listing = self.filesystem.get_file_info(fs.FileSelector(self.root))
        return sorted(f.path for f in listing if f.type == fs.FileType.File and "/part-" in f.path)

    def _records(self):
        from pyarrow import fs

        if self.appends:
            if os.path.exists(self.path):
                with open(self.path) as handle:
                    yield from (json.loads(line) for line in handle if line.strip())
            return
        if self.filesystem.get_file_info(self.root).type == fs.FileType.NotFound:
            return
        for part in self._part_files():
            if part.endswith(".parquet"):
                import pyarrow.parquet as pq

                yield from pq.read_table(part, filesystem=self.filesystem).to_pylist()
            else:
                with self.filesystem.open_input_stream(part) as stream:
                    yield from (
                        json.loads(line)
                        for line in stream.read().decode().splitlines()
                        if line.strip()
                    )
