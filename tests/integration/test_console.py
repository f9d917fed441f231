"""The web console in a real headless Chromium (Debian's, driven by chromedriver) against the
session platform, which requires API keys. Screenshots of each page go to
``test-artifacts/console/``."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.audio_files import UPLOAD_FORMATS, audio_file
from tests.integration.helpers import ADMIN_KEY, API_KEY, ROOT, SCOPED_KEY, auth_headers
from tests.integration.session_config import RAG_DOCUMENTS, RAG_QUESTION, REAL_CHAT
from tests.media_files import b64, image_file, infer_body

ARTIFACTS = ROOT / "test-artifacts" / "console"
WAIT_S = 120
KEY_STORE = "rayserve-platform-api-key"  # where the console keeps the key (console.js)
DOCUMENTS = ["Stock markets fell sharply.", "A cat purrs on the sofa.", "Dogs bark at the postman."]


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--autoplay-policy=no-user-gesture-required",
        # a microphone that plays a tone, allowed without asking
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def console(browser, platform_url):
    """The console, logged in with the test key."""
    browser.get(f"{platform_url}/console")
    _log_in(browser, API_KEY)
    _wait(browser, lambda d: d.find_element(By.ID, "tabs").is_displayed())
    return browser


def _wait(driver, condition, timeout: float = WAIT_S):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def _log_in(driver, key: str) -> None:
    _wait(driver, lambda d: d.find_element(By.ID, "login").is_displayed())
    driver.find_element(By.ID, "api-key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()


def _tab(driver, name: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#tabs button[data-tab="{name}"]').click()


def _pick(driver, select_id: str, value: str) -> None:
    Select(driver.find_element(By.ID, select_id)).select_by_value(value)


def _playground(driver, name: str, model: str) -> None:
    _tab(driver, name)
    _pick(driver, f"{name}-model", model)


def _send(driver, name: str) -> None:
    driver.find_element(By.ID, f"{name}-send").click()


def _type(driver, field_id: str, text: str) -> None:
    field = driver.find_element(By.ID, field_id)
    field.clear()
    field.send_keys(text)


def _result_rows(driver, table_id: str) -> list:
    """The rows under the header of a table the page fills with an answer, once there are some."""
    return _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"#{table_id} tr")[1:] or None)


def _upload(driver, input_id: str, path: Path) -> None:
    driver.find_element(By.ID, input_id).send_keys(str(path))


def _screenshot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _no_error(driver, error_id: str) -> bool:
    text = driver.find_element(By.ID, error_id).text
    assert not text, text
    return True


def _cells(row) -> list[str]:
    return [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]


def _origins(driver) -> set[str]:
    """The origins of everything the page loaded or called."""
    return set(
        driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)"
        )
    )


def _documented_paths(driver) -> set[str]:
    """The API paths Swagger UI lists, once it lists some (it lists a path once per method:
    ``/admin/keys`` has GET and POST)."""
    found = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    return {element.get_attribute("data-path") for element in found}


def test_without_a_key_only_the_login_shows_and_a_wrong_key_is_refused(browser, platform_url):
    browser.get(f"{platform_url}/console")
    _wait(browser, lambda d: d.find_element(By.ID, "login").is_displayed())
    assert not browser.find_element(By.ID, "tabs").is_displayed()
    assert not any(tab.is_displayed() for tab in browser.find_elements(By.CSS_SELECTOR, ".tab"))
    _log_in(browser, "not-a-key")
    _wait(browser, lambda d: d.find_element(By.ID, "login-error").text == "That key was refused.")
    assert not browser.find_element(By.ID, "tabs").is_displayed()
    _screenshot(browser, "login")
    assert _origins(browser) == {platform_url}  # it called the platform itself, and nothing else


def test_every_model_is_listed_with_its_phase_and_placement(console, platform_url):
    cards = httpx.get(f"{platform_url}/v1/models", headers=auth_headers(), timeout=30).json()[
        "data"
    ]
    bases = {card["id"] for card in cards if "parent" not in card}
    _tab(console, "models")

    def rows(driver):
        found = {
            row.get_attribute("data-model"): row
            for row in driver.find_elements(By.CSS_SELECTOR, "#models-table tbody tr")
        }
        return (
            found
            if set(found) == bases
            and all(r.get_attribute("data-phase") == "ready" for r in found.values())
            else None
        )

    table = _wait(console, rows)
    chat = [cell.text for cell in table["tiny-chat"].find_elements(By.TAG_NAME, "td")]
    assert (
        chat[1] == "vllm" and "chat" in chat[2] and chat[4] == "1/1" and chat[5]
    )  # type, capabilities, replicas, node
    assert "sql" in chat[9]  # its LoRA variants
    detector = [cell.text for cell in table["tiny-detector"].find_elements(By.TAG_NAME, "td")]
    assert detector[7] == "0"  # in flight, from its group's replica
    summary = console.find_element(By.ID, "platform-summary").text
    assert "ready on 1 node(s)" in summary and summary.endswith(
        "; config: config.yaml"
    )  # the session's file
    _screenshot(console, "models")


def test_a_chat_answer_streams_into_the_page(console):
    _playground(console, "chat", "tiny-chat")
    _pick(console, "chat-variant", "tiny-chat:sql")
    _type(console, "chat-max-tokens", "48")
    # Count the answer's updates as they land: a stream writes it in several steps
    console.execute_script("""
        window.answerUpdates = 0;
        new MutationObserver(() => { window.answerUpdates += 1; })
          .observe(document.getElementById('chat-transcript'),
                   {subtree: true, childList: true, characterData: true});""")
    _send(console, "chat")
    answer = _wait(
        console,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#chat-transcript .assistant.done") or None,
    )[0]
    _no_error(console, "chat-error")
    assert answer.text.strip()
    assert console.execute_script("return window.answerUpdates") > 3
    code = console.find_element(By.ID, "chat-code").text
    assert (
        "curl -s" in code and "/v1/chat/completions" in code and '"model":"tiny-chat:sql"' in code
    )
    assert "client.chat.completions.create" in code and API_KEY not in code  # no secret in the page
    _screenshot(console, "chat-variant")


def test_the_default_chat_model_answers_in_the_page(console):
    _playground(console, "chat", REAL_CHAT)  # another model: a new conversation
    _type(console, "chat-temperature", "0")
    _type(console, "chat-input", "What is the capital of France?")
    _send(console, "chat")
    answer = _wait(
        console,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#chat-transcript .assistant.done") or None,
    )[0]
    _no_error(console, "chat-error")
    assert "Paris" in answer.text, answer.text
    _screenshot(console, "chat")


def test_an_error_shows_the_platforms_message(console):
    _playground(console, "completions", "tiny-chat")
    _type(console, "completions-max-tokens", "100000")
    _send(console, "completions")
    error = _wait(console, lambda d: d.find_element(By.ID, "completions-error").text or None)
    assert error.startswith("400: ") and "exceeds the model's context length" in error


def test_embeddings_show_a_similarity_matrix(console):
    _playground(console, "embeddings", "all-minilm-l6-v2")
    _send(console, "embeddings")
    rows = _result_rows(console, "embeddings-matrix")
    matrix = [[float(c.text) for c in row.find_elements(By.TAG_NAME, "td")[1:]] for row in rows]
    assert len(matrix) == 3 and all(abs(matrix[i][i] - 1) < 1e-3 for i in range(3))
    assert (
        matrix[0][1] > matrix[0][2]
    )  # the real MiniLM: the cat and the feline are closer than the markets


def test_rerank_orders_the_documents_by_the_endpoints_scores(console, platform_url):
    _playground(console, "rerank", "tiny-reranker")
    _type(console, "rerank-query", "Which animal purrs?")
    _type(console, "rerank-input", "\n".join(DOCUMENTS))
    _send(console, "rerank")
    rows = [_cells(row) for row in _result_rows(console, "rerank-results")]
    _no_error(console, "rerank-error")
    body = {"model": "tiny-reranker", "query": "Which animal purrs?", "documents": DOCUMENTS}
    answer = httpx.post(
        f"{platform_url}/v1/rerank", json=body, headers=auth_headers(), timeout=60
    ).json()
    expected = sorted(answer["results"], key=lambda r: -r["relevance_score"])
    assert [row[0] for row in rows] == ["1", "2", "3"]
    assert [row[2] for row in rows] == [
        f"#{r['index'] + 1} {DOCUMENTS[r['index']]}" for r in expected
    ]
    assert [float(row[1]) for row in rows] == [
        pytest.approx(r["relevance_score"], abs=1e-4) for r in expected
    ]
    code = console.find_element(By.ID, "rerank-code").text
    assert "/v1/rerank" in code and "httpx.post" in code and API_KEY not in code

    _pick(console, "rerank-model", "all-minilm-l6-v2")  # a real model ranks by meaning
    _type(console, "rerank-top-n", "2")
    _send(console, "rerank")
    _wait(console, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rerank-results tr")) == 3)
    ranked = [_cells(row)[2] for row in _result_rows(console, "rerank-results")]
    assert ranked[0] == f"#2 {DOCUMENTS[1]}", ranked  # the cat purrs
    _screenshot(console, "rerank")


def test_the_pipelines_tab_runs_rag_lite_and_shows_its_answer(console, platform_url):
    card = httpx.get(
        f"{platform_url}/v1/models/rag-lite", headers=auth_headers(), timeout=30
    ).json()
    _playground(console, "pipelines", "rag-lite")
    assert console.find_element(By.ID, "pipelines-flow").text == (
        " → ".join(f"{step['task']} ({step['model']})" for step in card["steps"])
        + "; takes text, documents"
    )
    assert console.find_element(By.ID, "pipelines-text").is_displayed()
    assert not console.find_element(By.ID, "pipelines-audio").is_displayed()
    _type(console, "pipelines-text", RAG_QUESTION)
    _type(console, "pipelines-documents", "\n".join(RAG_DOCUMENTS))
    _send(console, "pipelines")
    _result_rows(console, "pipelines-steps")
    _no_error(console, "pipelines-error")
    rerank, chat = _step_cells(console)
    assert rerank[1:3] == ["rerank", card["steps"][0]["model"]] and float(rerank[3]) > 0
    # the real MiniLM puts the one document that answers first of the two the chat reads
    context = rerank[4].removeprefix("context: ").split("\n")
    assert context[0] == RAG_DOCUMENTS[1] and len(context) == 2
    answer = console.execute_script(
        "return document.getElementById('pipelines-output').textContent"
    )
    assert chat[1:3] == ["chat", card["steps"][1]["model"]]
    assert chat[4] == f"text: {answer}"  # the answer shown is the chat step's
    assert "Oswin Thrale" in answer, answer  # a made-up fact: read from the context
    code = console.find_element(By.ID, "pipelines-code").text
    assert '"model":"rag-lite"' in code and "/v1/pipelines" in code and API_KEY not in code
    _screenshot(console, "pipelines")


def _step_cells(driver) -> list[list[str]]:
    """Each pipeline step's row as the page wrote it (textContent: the outputs' own lines)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#pipelines-steps tr')].slice(1)"
        ".map(row => [...row.cells].map(cell => cell.textContent))"
    )


def test_the_pipelines_tab_sends_audio_to_voice_chat_and_plays_its_answer(console, tmp_path):
    _playground(console, "pipelines", "voice-chat")
    assert not console.find_element(By.ID, "pipelines-text").is_displayed()
    _send(console, "pipelines")  # no file yet: the page says what the pipeline needs
    error = _wait(console, lambda d: d.find_element(By.ID, "pipelines-error").text or None)
    assert error == "voice-chat takes audio: choose a file"
    container, codec, name = UPLOAD_FORMATS["wav"]
    path = tmp_path / name
    path.write_bytes(audio_file(container, codec, seconds=2.0))
    _upload(console, "pipelines-audio", path)
    _send(console, "pipelines")
    _wait(
        console,
        lambda d: d.execute_script(
            "const a = document.getElementById('pipelines-player');"
            " return !a.hidden && a.src.startsWith('blob:') && a.readyState >= 1 && a.duration > 0"
        ),
    )
    _no_error(console, "pipelines-error")
    steps = _step_cells(console)
    assert [step[1] for step in steps] == ["transcribe", "chat", "speak"]
    assert steps[2][4].startswith("audio: ") and steps[2][4].endswith(" KiB of wav")
    assert "$(base64 -w0 'a.wav')" in console.find_element(By.ID, "pipelines-code").text
    assert console.execute_script(
        "return document.getElementById('pipelines-player').play().then(() => true)"
    )


def test_the_test_wav_is_transcribed_with_segments(console, tmp_path):
    container, codec, name = UPLOAD_FORMATS["wav"]
    path = tmp_path / name
    path.write_bytes(audio_file(container, codec, seconds=2.0))
    _playground(console, "transcribe", "tiny-whisper")
    _upload(console, "transcribe-file", path)
    _send(console, "transcribe")
    header = _wait(
        console, lambda d: d.find_elements(By.CSS_SELECTOR, "#transcribe-segments th") or None
    )
    _no_error(console, "transcribe-error")
    assert [h.text for h in header] == ["start (s)", "end (s)", "text"]
    segments = console.find_elements(By.CSS_SELECTOR, "#transcribe-segments tr")[1:]
    times = [
        [float(cell.text) for cell in row.find_elements(By.TAG_NAME, "td")[:2]] for row in segments
    ]
    assert times and all(0 <= start <= end for start, end in times), times
    assert "-F file=@a.wav" in console.find_element(By.ID, "transcribe-code").text
    _screenshot(console, "transcribe")


def test_a_microphone_recording_is_transcribed(console):
    _playground(console, "transcribe", "tiny-whisper")
    console.execute_script(
        "document.getElementById('transcribe-file').value = '';"
        "document.getElementById('transcribe-segments').replaceChildren();"
    )
    record = console.find_element(By.ID, "transcribe-record")
    record.click()
    _wait(console, lambda d: record.text == "Stop")
    time.sleep(2)  # two seconds of the fake microphone's tone: the length of the recording
    record.click()
    _wait(console, lambda d: record.text == "Record")
    _send(console, "transcribe")
    _result_rows(console, "transcribe-segments")
    _no_error(console, "transcribe-error")
    assert "-F file=@recording.webm" in console.find_element(By.ID, "transcribe-code").text


def test_generated_speech_gets_a_playable_source(console):
    _playground(console, "speech", "tiny-tts")
    Select(console.find_element(By.ID, "speech-format")).select_by_visible_text("wav")
    _send(console, "speech")
    _wait(
        console,
        lambda d: d.execute_script(
            "const a = document.getElementById('speech-audio');"
            " return a.src.startsWith('blob:') && a.readyState >= 1 && a.duration > 0"
        ),
    )
    _no_error(console, "speech-error")
    assert console.execute_script(
        "return document.getElementById('speech-audio').play().then(() => true)"
    )
    _screenshot(console, "speech")


def test_an_image_is_classified_and_the_detectors_boxes_are_drawn(console, tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(image_file())  # the image the detector's API test finds boxes in
    _tab(console, "image")
    _upload(console, "image-file", path)
    _pick(console, "image-model", "tiny-vit")
    _send(console, "image")
    rows = _result_rows(console, "image-results")
    _no_error(console, "image-error")
    scores = [float(row.find_elements(By.TAG_NAME, "td")[1].text) for row in rows]
    assert 0 < len(scores) <= 5 and scores == sorted(scores, reverse=True)

    _pick(console, "image-model", "tiny-detector")
    _send(console, "image")
    _wait(console, lambda d: d.find_element(By.ID, "image-canvas").get_attribute("data-boxes"))
    _no_error(console, "image-error")
    assert int(console.find_element(By.ID, "image-canvas").get_attribute("data-boxes")) > 0
    # the boxes' colour is on the canvas, over the image
    drawn = console.execute_script("""
        const c = document.getElementById('image-canvas');
        const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let count = 0;
        for (let i = 0; i < pixels.length; i += 4)
          if (pixels[i] === 0xe4 && pixels[i+1] === 0x57 && pixels[i+2] === 0x2e) count++;
        return count;""")
    assert drawn > 0
    _screenshot(console, "image")


def test_a_clip_is_classified(console, tmp_path):
    from tests.media_files import video_file

    path = tmp_path / "clip.mp4"
    path.write_bytes(video_file())
    _playground(console, "video", "tiny-videomae")
    _upload(console, "video-file", path)
    _send(console, "video")
    rows = _result_rows(console, "video-results")
    _no_error(console, "video-error")
    assert rows and float(rows[0].find_elements(By.TAG_NAME, "td")[1].text) > 0
    _screenshot(console, "video")


def test_the_api_docs_open_from_the_console_with_its_key(console, platform_url):
    console.find_element(By.ID, "docs-link").click()
    _wait(console, lambda d: d.current_url == f"{platform_url}/docs")
    described = httpx.get(f"{platform_url}/openapi.json", headers=auth_headers(), timeout=60)
    assert _documented_paths(console) == set(described.json()["paths"])
    assert _origins(console) == {platform_url}  # Swagger UI's files too: no CDN
    # "Try it out" sends the key the page was opened with
    operation = console.find_element(By.ID, "operations-default-list_models_v1_models_get")
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    _wait(console, lambda d: operation.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
    _wait(console, lambda d: operation.find_element(By.CSS_SELECTOR, ".execute")).click()
    status = _wait(
        console,
        lambda d: operation.find_elements(
            By.CSS_SELECTOR, ".live-responses-table .response-col_status"
        ),
    )
    assert status[-1].text == "200"
    _screenshot(console, "docs")
    console.get(f"{platform_url}/console")  # back, still logged in, for the tests after this one
    _wait(console, lambda d: d.find_element(By.ID, "tabs").is_displayed())


def test_logging_out_forgets_the_key(console):
    console.find_element(By.ID, "logout").click()
    _wait(console, lambda d: d.find_element(By.ID, "login").is_displayed())
    assert console.execute_script("return sessionStorage.length") == 0
    _wait(console, lambda d: not d.find_element(By.ID, "tabs").is_displayed(), timeout=10)
    console.refresh()  # and a reload asks for a key again
    _wait(console, lambda d: d.find_element(By.ID, "login").is_displayed(), timeout=30)
    assert not console.find_element(By.ID, "tabs").is_displayed()


def test_the_api_docs_show_nothing_of_the_api_without_a_valid_key(browser, platform_url):
    """The page is public, as the console's is; the description stays behind the key, as
    ``/openapi.json`` does: no key or a wrong one, a 401 there and no path here."""
    for key in (None, "not-a-key"):
        assert (
            httpx.get(
                f"{platform_url}/openapi.json", headers=auth_headers(key) if key else {}, timeout=30
            ).status_code
            == 401
        )
    browser.get(f"{platform_url}/docs")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    _wait(browser, lambda d: d.find_element(By.ID, "login").is_displayed())
    _log_in(browser, "not-a-key")
    _wait(browser, lambda d: d.find_element(By.ID, "login-error").text == "That key was refused.")
    assert not browser.find_elements(By.CSS_SELECTOR, ".opblock")
    assert "/v1/chat/completions" not in httpx.get(f"{platform_url}/docs", timeout=30).text
    # a key scoped to the embedding model is shown what /openapi.json gives it: its model alone
    _log_in(browser, SCOPED_KEY)
    _documented_paths(browser)
    shown = browser.execute_script("return window.ui.specSelectors.specJson().toJS()")
    described = httpx.get(
        f"{platform_url}/openapi.json", headers=auth_headers(SCOPED_KEY), timeout=60
    ).json()
    assert sorted(shown["paths"]) == sorted(described["paths"])
    models = [_model_parameter(doc) for doc in (shown, described)]
    assert models == [{"type": "string", "enum": ["all-minilm-l6-v2"]}] * 2


def _model_parameter(description: dict) -> dict:
    (parameter,) = description["paths"]["/v1/models/{model_id}"]["get"]["parameters"]
    return parameter["schema"]


def test_the_usage_tab_charts_the_ledger_for_an_admin_key(browser, platform_url):
    """Last in the module: it leaves the tab logged in with the admin key."""
    httpx.post(  # at least one key's usage in the ledger, whatever ran before
        f"{platform_url}/v1/embeddings",
        json={"model": "all-minilm-l6-v2", "input": "a cat"},
        headers=auth_headers(),
        timeout=60,
    ).raise_for_status()
    browser.get(f"{platform_url}/console")
    browser.execute_script(f"sessionStorage.setItem('{KEY_STORE}', arguments[0])", ADMIN_KEY)
    browser.get(f"{platform_url}/console")
    _wait(browser, lambda d: d.find_element(By.ID, "tabs").is_displayed())
    _tab(browser, "usage")

    def totals() -> list:
        browser.find_element(By.ID, "usage-load").click()  # the ledger is written every second
        time.sleep(0.5)
        rows = browser.find_elements(By.CSS_SELECTOR, "#usage-totals tr")[1:]
        return [_cells(row) for row in rows if "all-minilm-l6-v2" in _cells(row)] or None

    assert _wait(browser, lambda d: totals(), timeout=30)
    _no_error(browser, "usage-error")
    lines = browser.execute_script(
        "return ['usage-by-key', 'usage-by-model'].map("
        "id => Chart.getChart(id).data.datasets.map(d => d.label))"
    )
    assert lines[0] and "all-minilm-l6-v2" in lines[1]

    # The media the ledger counts, charted per model: tiny-vit's images as /admin/usage sums them
    classified = httpx.post(
        f"{platform_url}/v2/models/tiny-vit/infer",
        json=infer_body([b64(image_file())] * 2),
        headers=auth_headers(),
        timeout=60,
    )
    assert classified.status_code == 200, classified.text
    Select(browser.find_element(By.ID, "usage-measure")).select_by_value("images")

    def charted_images() -> tuple[int, int] | None:
        browser.find_element(By.ID, "usage-load").click()
        time.sleep(0.5)
        charted = browser.execute_script(
            "const d = Chart.getChart('usage-by-model').data.datasets"
            ".find(d => d.label === 'tiny-vit'); return d ? d.data.reduce((a, b) => a + b, 0) : 0"
        )
        # the same window as the tab's (its range: the last 24 hours)
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 24 * 3600))
        ledger = httpx.get(
            f"{platform_url}/admin/usage",
            params={"model": "tiny-vit", "group_by": "model", "from": since},
            headers=auth_headers(ADMIN_KEY),
            timeout=30,
        ).json()["data"]
        images = sum(row["images"] for row in ledger)
        return (charted, images) if charted >= 2 and charted == images else None

    assert _wait(browser, lambda d: charted_images(), timeout=30)
    assert browser.find_element(By.CSS_SELECTOR, "#tab-usage h3").text == "images per key"
    _no_error(browser, "usage-error")
    assert _origins(browser) == {platform_url}  # Chart.js comes from the platform, no CDN
    _screenshot(browser, "usage")
