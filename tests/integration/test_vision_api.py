"""Vision and video models of the real platform through the Open Inference Protocol (plain
HTTP and the real tritonclient), and media URLs in chat requests, with tiny offline models."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from configs import load_platform_config
from configs.deployment_capacity import deployment_limits
from tests.integration.helpers import API_KEY, auth_headers, fresh_ready, wait_until
from tests.media_files import b64, image_file, infer_body, video_file

CLASSIFIER, DETECTOR, ZERO_SHOT = "tiny-vit", "tiny-detector", "tiny-zero-shot"
CAPTIONER, EMBEDDER, VIDEO = "tiny-captioner", "tiny-image-embedder", "tiny-videomae"
PNG = image_file("PNG")
JPEG = image_file("JPEG", 80, 60, seed=1)


def infer(
    http, model: str, elements: list[str], input_name: str = "image", **extra
) -> httpx.Response:
    return http.post(f"/v2/models/{model}/infer", json=infer_body(elements, input_name, **extra))


def outputs(response: httpx.Response) -> dict[str, dict]:
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def assert_classifies(http) -> None:
    assert outputs(infer(http, CLASSIFIER, [b64(PNG)]))["labels"]["shape"] == [1, 3]


def test_health_and_metadata(platform_url, http):
    assert (
        httpx.get(f"{platform_url}/v2/health/live").status_code == 401
    )  # only /health needs no key
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get(f"/v2/models/{CLASSIFIER}/ready").json() == {"name": CLASSIFIER, "ready": True}
    meta = http.get(f"/v2/models/{CLASSIFIER}").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["labels", "scores"]
    assert http.get(f"/v2/models/{VIDEO}").json()["inputs"][0]["name"] == "video"


def test_classification_top_k_in_json(http):
    result = outputs(
        infer(
            http,
            CLASSIFIER,
            [b64(PNG), f"data:image/jpeg;base64,{b64(JPEG)}"],
            parameters={"top_k": 2},
            id="req-1",
        )
    )
    assert result["labels"]["shape"] == [2, 2] and result["scores"]["datatype"] == "FP32"
    assert set(result["labels"]["data"]) <= {"cat", "dog", "bird", "car", "tree"}
    scores = np.array(result["scores"]["data"]).reshape(2, 2)
    assert (scores[:, 0] >= scores[:, 1]).all() and (scores <= 1).all()


def test_tritonclient_classifies_with_binary_tensors(platform_url):
    client = triton.InferenceServerClient(platform_url.removeprefix("http://"))
    headers = {"Authorization": f"Bearer {API_KEY}"}
    assert client.is_server_live(headers=headers) and client.is_model_ready(
        CLASSIFIER, headers=headers
    )
    assert client.get_model_metadata(CLASSIFIER, headers=headers)["name"] == CLASSIFIER
    images = triton.InferInput("image", [2], "BYTES")
    images.set_data_from_numpy(np.array([PNG, JPEG], dtype=np.object_), binary_data=True)
    result = client.infer(
        CLASSIFIER,
        [images],
        outputs=[triton.InferRequestedOutput("labels"), triton.InferRequestedOutput("scores")],
        headers=headers,
    )
    assert (
        result.as_numpy("labels").shape == (2, 3) and result.as_numpy("scores").dtype == np.float32
    )
    with pytest.raises(InferenceServerException, match="datatype BYTES"):
        wrong = triton.InferInput("image", [1, 3], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
        client.infer(CLASSIFIER, [wrong], headers=headers)


def test_detection_zero_shot_captioning_and_embeddings(http):
    detections = json.loads(outputs(infer(http, DETECTOR, [b64(PNG)]))["detections"]["data"][0])
    assert detections and set(detections[0]) == {"score", "label", "box"}
    assert set(detections[0]["box"]) == {"xmin", "ymin", "xmax", "ymax"}
    zero = outputs(
        infer(http, ZERO_SHOT, [b64(PNG)], parameters={"candidate_labels": ["a red car", "a tree"]})
    )
    assert sorted(zero["labels"]["data"]) == ["a red car", "a tree"]
    assert abs(sum(zero["scores"]["data"]) - 1) < 1e-4
    assert (
        outputs(infer(http, ZERO_SHOT, [b64(PNG)]))["labels"]["data"] != []
    )  # the YAML's default labels
    caption = outputs(infer(http, CAPTIONER, [b64(PNG), b64(JPEG)]))["captions"]
    assert caption["shape"] == [2] and all(isinstance(c, str) for c in caption["data"])
    vectors = outputs(infer(http, EMBEDDER, [b64(PNG), b64(JPEG)]))["embeddings"]
    assert vectors["shape"] == [2, 32] and len(vectors["data"]) == 64


@pytest.mark.parametrize("fmt,codec", [("mp4", "libx264"), ("webm", "libvpx-vp9")])
def test_video_classification(http, fmt, codec):
    result = outputs(
        infer(
            http, VIDEO, [b64(video_file(fmt, codec))], input_name="video", parameters={"top_k": 2}
        )
    )
    assert result["labels"]["shape"] == [1, 2]


async def test_concurrent_requests_share_forward_passes(platform_url, http):
    before = fresh_ready(platform_url).json()["models"][CLASSIFIER]
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(PNG)]}]}
    async with httpx.AsyncClient(
        base_url=platform_url, headers=auth_headers(), timeout=120
    ) as client:
        answers = await asyncio.gather(
            *(client.post(f"/v2/models/{CLASSIFIER}/infer", json=body) for _ in range(24))
        )
    assert all(a.status_code == 200 for a in answers)
    after = fresh_ready(platform_url).json()["models"][CLASSIFIER]
    assert after["batched_requests"] - before["batched_requests"] == 24
    assert after["forward_passes"] - before["forward_passes"] < 24 and after["largest_batch"] > 1


@pytest.mark.parametrize(
    "model,body,status,words",
    [
        (CLASSIFIER, infer_body([b64(b"not an image at all")]), 400, "supported format"),
        (CLASSIFIER, infer_body([b64(image_file("TIFF"))]), 400, "supported format"),
        (CLASSIFIER, infer_body([b64(PNG[:80])]), 400, "could not be decoded"),
        (EMBEDDER, infer_body([b64(image_file("PNG", 1200, 1000))]), 413, "limit"),
        (
            VIDEO,
            infer_body(
                [b64(video_file(frames=130, fps=1, width=32, height=32))], input_name="video"
            ),
            413,
            "limit",
        ),
        (
            VIDEO,
            infer_body([b64(b"\x00\x00\x00\x18ftypisom" + bytes(64))], input_name="video"),
            400,
            "could not be decoded",
        ),
        (CLASSIFIER, infer_body(["file:///etc/passwd"]), 400, "refused"),
        (CLASSIFIER, infer_body(["/etc/passwd"]), 400, "refused"),
        (CLASSIFIER, infer_body(["http://example.org/cat.png"]), 400, "allowed_domains"),
        (CLASSIFIER, infer_body(["http://localhost:1/cat.png"]), 400, "non-public address"),
        (CLASSIFIER, infer_body([[0.5, 0.2]], datatype="FP32", shape=[1, 2]), 400, "BYTES"),
        (CLASSIFIER, infer_body([b64(PNG)], shape=[2]), 400, "shape"),
        (CLASSIFIER, infer_body([b64(PNG)], input_name="pixels"), 400, "one input named 'image'"),
        (CLASSIFIER, {"inputs": []}, 400, "inputs"),
        (
            CLASSIFIER,
            {**infer_body([b64(PNG)]), "outputs": [{"name": "logits"}]},
            400,
            "unknown output",
        ),
        (CLASSIFIER, {**infer_body([b64(PNG)]), "parameters": {"top_k": "many"}}, 400, "top_k"),
        (
            ZERO_SHOT,
            {**infer_body([b64(PNG)]), "parameters": {"candidate_labels": []}},
            400,
            "candidate_labels",
        ),
        ("tiny-chat", infer_body([b64(PNG)]), 400, "not served through /v2"),
        ("no-such-model", infer_body([b64(PNG)]), 404, "does not exist"),
    ],
)
def test_bad_v2_requests_get_a_4xx_in_the_protocol_shape(http, model, body, status, words):
    response = http.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and words in error, error
    assert_classifies(http)


def test_malformed_json_and_binary_headers(http):
    assert http.post(f"/v2/models/{CLASSIFIER}/infer", content=b"{nope").status_code == 400
    header = json.dumps(
        infer_body([])["inputs"][0]
        | {"parameters": {"binary_data_size": 10}, "shape": [1], "data": None}
    ).encode()
    bad = http.post(
        f"/v2/models/{CLASSIFIER}/infer",
        content=b'{"inputs":[' + header + b"]}" + b"\x05\x00",
        headers={"Inference-Header-Content-Length": str(len(header) + 13)},
    )
    assert bad.status_code == 400 and "binary" in bad.json()["error"]
    assert_classifies(http)


def chat_with_media(client, url: str, part: str = "image_url"):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": part, part: {"url": url}},
            ],
        }
    ]
    return client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=4)


@pytest.mark.parametrize(
    "url,part,words",
    [
        ("file:///etc/passwd", "image_url", "local files"),
        ("/etc/passwd", "image_url", "local files"),
        ("http://example.org/cat.png", "image_url", "allowed_domains"),
        ("http://localhost:8000/cat.png", "image_url", "non-public address"),
        ("http://169.254.169.254/latest/meta-data/", "image_url", "allowed_domains"),
        ("file:///etc/shadow", "video_url", "local files"),
        ("http://localhost:8000/clip.mp4", "video_url", "non-public address"),
    ],
)
def test_chat_media_urls_follow_the_policy(client, http, url, part, words):
    with pytest.raises(openai.BadRequestError) as info:
        chat_with_media(client, url, part)
    assert words in info.value.body["message"] and info.value.body["param"] == "messages"
    assert_classifies(http)


def test_chat_image_as_data_url_reaches_the_engine(client):
    # tiny-chat is a text-only model: vLLM itself refuses the image, proving it got that far.
    with pytest.raises(openai.BadRequestError, match="not a multimodal model"):
        chat_with_media(client, f"data:image/png;base64,{b64(PNG)}")


VARIANTS_MODEL = "tiny-vit-variants"  # a deployment of its own, its capacity below the router's


async def _stalled_inferences(platform_url: str, count: int) -> list[asyncio.StreamWriter]:
    """``count`` /v2 inferences whose bodies never arrive: each holds its deployment's slot in
    the router (taken before the body is read) until its connection closes."""
    url = httpx.URL(platform_url)
    head = (
        f"POST /v2/models/{VARIANTS_MODEL}/infer HTTP/1.1\r\nHost: {url.host}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        'Content-Length: 64\r\n\r\n{"inputs": '
    ).encode()

    async def one() -> asyncio.StreamWriter:
        _, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(head)
        await writer.drain()
        return writer

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_v2_inferences_past_the_deployments_capacity_get_a_503_at_once(
    platform, platform_url, http
):
    """With every slot the router has for the model's deployment (running + queued) held by a
    request still sending its body, the next inference is the protocol's 503 with Retry-After,
    not a place in Serve's queue; once those requests go, the model answers again."""
    if platform.config is None:
        pytest.skip("a platform this session did not start (PLATFORM_URL): its config is unknown")
    config = load_platform_config(platform.config["applications"][0]["args"])
    routers = config.platform.router.num_replicas
    capacity = deployment_limits(config, "router", routers)[VARIANTS_MODEL]
    assert capacity is not None and capacity * routers < config.platform.router.max_ongoing_requests
    stalled = await _stalled_inferences(platform_url, capacity * routers)
    try:
        refused = await asyncio.to_thread(
            wait_until,
            lambda: infer(http, VARIANTS_MODEL, [b64(PNG)]),
            lambda response: response.status_code == 503,
            60,
        )
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == f"{VARIANTS_MODEL} is at capacity; retry shortly"
    finally:
        for writer in stalled:
            writer.close()
    answered = await asyncio.to_thread(
        wait_until, lambda: infer(http, VARIANTS_MODEL, [b64(PNG)]), lambda r: r.status_code == 200
    )
    assert answered.status_code == 200, answered.text
