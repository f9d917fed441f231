"""A batch job's rows and output: ids, request bodies, and the output a re-run resumes from."""

import json

import numpy as np
import pyarrow.parquet as pq

from batch.rows import OutputFile, request_body, row_id
from configs.capabilities import Capability


def test_a_row_keeps_its_id_or_gets_one_from_its_content():
    assert row_id({"id": 7, "prompt": "x"}) == "7"
    assert row_id({"prompt": "x", "max_tokens": 3}) == row_id({"max_tokens": 3, "prompt": "x"})
    assert row_id({"prompt": "x"}) != row_id({"prompt": "y"})
    assert row_id({"prompt": "x", "seed": None, "top_p": float("nan")}) == row_id({"prompt": "x"})
    assert row_id({"input": np.array(["a", "b"], dtype=object)}) == row_id({"input": ["a", "b"]})


def test_records_are_the_endpoints_bodies_and_files_are_uploads():
    chat = request_body(
        {"id": "1", "prompt": "hi", "stop": None, "temperature": float("nan")},
        "m",
        Capability.CHAT,
        {"max_tokens": 4},
    )  # columns other records have: None or NaN here
    assert chat == {"max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "model": "m"}
    own = request_body(
        {
            "messages": np.array([{"role": "user", "content": "x"}]),
            "max_tokens": 9,
            "model": "other",
        },
        "m",
        Capability.CHAT,
        {"max_tokens": 4},
    )
    assert own == {
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 9,
        "model": "m",
    }  # the row wins, not its model
    audio = request_body(
        {"id": "a.wav", "bytes": b"RIFF"}, "asr", Capability.TRANSCRIPTION, {"language": "en"}
    )
    assert audio == {"model": "asr", "file": b"RIFF", "response_format": "json", "language": "en"}
    image = request_body(
        {"id": "a.png", "bytes": b"\x89PNG"}, "vit", Capability.IMAGE_CLASSIFICATION, {"top_k": 2}
    )
    assert image == {"model": "vit", "inputs": [b"\x89PNG"], "parameters": {"top_k": 2}}


def test_a_jsonl_output_is_appended_to_and_read_back(tmp_path):
    path = str(tmp_path / "out" / "answers.jsonl")
    OutputFile(path).write(
        [{"id": "1", "response": {"a": 1}}, {"id": "2", "error": {"status": 400, "message": "m"}}]
    )
    OutputFile(path).write([{"id": "3", "response": {}}])
    output = OutputFile(path)
    assert output.finished_ids() == {"1", "2", "3"} and output.counts() == (2, 1)
    assert [json.loads(line)["id"] for line in open(path)] == ["1", "2", "3"]


def test_a_parquet_output_is_a_folder_of_parts(tmp_path):
    path = str(tmp_path / "vectors.parquet")
    first, second = OutputFile(path), OutputFile(path)
    first.write([{"id": "a", "response": {"data": [1.5]}}])
    second.write([{"id": "b", "error": {"status": 400, "message": "bad"}}])
    parts = sorted(p.name for p in (tmp_path / "vectors.parquet").iterdir())
    assert len(parts) == 2 and all(p.startswith("part-") and p.endswith(".parquet") for p in parts)
    assert OutputFile(path).finished_ids() == {"a", "b"}
    table = pq.read_table(str(tmp_path / "vectors.parquet")).to_pylist()
    assert {row["id"]: json.loads(row["response"] or "null") for row in table}["a"] == {
        "data": [1.5]
    }
