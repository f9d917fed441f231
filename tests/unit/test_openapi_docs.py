"""The router's OpenAPI description: every body described, model names the caller's key may use."""

from configs.api_keys import APIKey
from tests.unit.router_fakes import TENSOR_ROUTES, client

KEYS = (APIKey("all-key", "all"), APIKey("embed-key", "embed", models=("embed",)))


def _description(key: str = "all-key") -> dict:
    c, _ = client(TENSOR_ROUTES, api_keys=KEYS)
    response = c.get("/openapi.json", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return response.json()


def _body(doc: dict, path: str, media_type: str = "application/json") -> dict:
    return doc["paths"][path]["post"]["requestBody"]["content"][media_type]["schema"]


def _component(doc: dict, ref: dict) -> dict:
    return doc["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]


def test_the_description_needs_the_key():
    c, _ = client(TENSOR_ROUTES, api_keys=KEYS)
    assert c.get("/openapi.json").status_code == 401


def test_json_bodies_are_vllms_protocol_models_naming_the_models_that_serve_them():
    doc = _description()
    chat = _component(doc, _body(doc, "/v1/chat/completions"))
    assert chat["title"] == "ChatCompletionRequest" and "messages" in chat["required"]
    assert chat["properties"]["model"]["enum"] == ["chat", "chat:sql"]
    completion = _component(doc, _body(doc, "/v1/completions"))
    assert completion["properties"]["model"]["enum"] == ["chat", "chat:sql"]
    embedding_forms = _body(doc, "/v1/embeddings")["anyOf"]
    assert {_component(doc, ref)["title"] for ref in embedding_forms} >= {
        "EmbeddingCompletionRequest",
        "EmbeddingChatRequest",
    }
    assert all(
        _component(doc, ref)["properties"]["model"]["enum"] == ["embed"] for ref in embedding_forms
    )


def test_uploads_are_multipart_forms_with_the_file():
    form = _body(_description(), "/v1/audio/transcriptions", "multipart/form-data")
    assert form["properties"]["file"] == {"type": "string", "format": "binary"}
    assert set(form["required"]) == {"file", "model"}
    assert form["properties"]["model"]["enum"] == ["asr"]
    assert "timestamp_granularities" in form["properties"]


def test_v2_inference_takes_the_protocols_tensors_for_tensor_models():
    doc = _description()
    operation = doc["paths"]["/v2/models/{name}/infer"]["post"]
    request = _component(doc, operation["requestBody"]["content"]["application/json"]["schema"])
    assert request["title"] == "InferenceRequest" and request["required"] == ["inputs"]
    name = next(p for p in operation["parameters"] if p["name"] == "name")
    assert name["schema"]["enum"] == ["big", "vit"]


def test_a_scoped_key_sees_only_its_models():
    doc = _description("embed-key")
    assert doc["paths"]["/v1/models/{model_id}"]["get"]["parameters"][0]["schema"]["enum"] == [
        "embed"
    ]
    assert _component(doc, _body(doc, "/v1/chat/completions"))["properties"]["model"] == {
        "type": "string"
    }


def test_bearer_auth_is_described_and_health_is_open():
    doc = _description()
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearer": []}] and doc["paths"]["/health"]["get"]["security"] == []


def test_the_other_vllm_endpoints_and_pipelines_are_described():
    doc = _description()
    rerank = _component(doc, _body(doc, "/v1/rerank"))
    assert rerank["title"] == "RerankRequest" and {"query", "documents"} <= set(rerank["required"])
    assert {_component(doc, ref)["title"] for ref in _body(doc, "/tokenize")["anyOf"]} == {
        "TokenizeCompletionRequest",
        "TokenizeChatRequest",
    }
    pipeline = _body(doc, "/v1/pipelines")
    assert pipeline["title"] == "PipelineRequest" and pipeline["additionalProperties"] is False
    assert set(pipeline["properties"]) == {"model", "audio", "image", "text", "documents"}
