"""What engines answer: an error in OpenAI's shape that carries the request's id when it has one."""

import json

from common.engine_response import EngineResponse
from common.request_ids import current_request_id


def test_an_engine_error_quotes_the_request_id_it_was_served_under():
    assert (
        "request_id" not in json.loads(EngineResponse.error(400, "bad").content)["error"]
    )  # a batch row: no id
    token = current_request_id.set("client-7")
    try:
        error = json.loads(EngineResponse.error(400, "n: not an integer", param="n").content)[
            "error"
        ]
    finally:
        current_request_id.reset(token)
    assert error == {
        "message": "n: not an integer",
        "type": "BadRequestError",
        "param": "n",
        "code": 400,
        "request_id": "client-7",
    }
    assert EngineResponse.error(400, "n: not an integer").error_message() == "n: not an integer"
