"""Embeddings through the real stack: gateway -> Kafka -> a vLLM pooling worker -> gateway.

The reference vectors are computed here with the same weights in transformers (mean
pooling, then normalized, as sentence-transformers defines all-MiniLM-L6-v2).
"""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import EMBEDDING_MODEL, MODEL, Gateway, create_key, wait_until
from tests.openai_spec import validate

TEXTS = [
    "The capital of France is Paris.",
    "A kitten sleeps on the warm windowsill.",
    "Quarterly revenue grew by twelve percent.",
    "Paris is France's capital city.",
]


@pytest.fixture(scope="module")
def reference(home):  # type: ignore[no-untyped-def]
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = home / "models" / EMBEDDING_MODEL
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)

    def embed(texts: list[str]) -> np.ndarray:
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy()

    return embed, tokenizer


def _post(gateway: Gateway, key: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/embeddings", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"})


def _cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)


def test_vectors_match_the_reference_in_input_order(
        gateway: Gateway, embedder: object, api_key: str, reference) -> None:  # type: ignore[no-untyped-def]
    embed, tokenizer = reference
    r = _post(gateway, api_key, {"model": EMBEDDING_MODEL, "input": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    validate("CreateEmbeddingResponse", body)
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    got = np.array([d["embedding"] for d in body["data"]])
    assert got.shape == (len(TEXTS), 384)
    want = embed(TEXTS)
    assert _cosines(got, want).min() >= 0.999
    # Order matters: the two sentences about Paris are each other's nearest.
    assert float(got[0] @ got[3]) > float(got[0] @ got[1])
    tokens = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert r.headers["x-ratelimit-remaining-requests"]


def test_the_openai_client_and_every_input_form(
        gateway: Gateway, embedder: object, api_key: str, reference) -> None:  # type: ignore[no-untyped-def]
    embed, tokenizer = reference
    client = openai.OpenAI(base_url=gateway.base_url, api_key=api_key, max_retries=0)
    # The client asks for base64 and decodes it itself.
    one = client.embeddings.create(model=EMBEDDING_MODEL, input=TEXTS[1])
    want = embed([TEXTS[1]])[0]
    assert len(one.data) == 1 and _cosines(np.array([one.data[0].embedding]),
                                           want[None])[0] >= 0.999
    ids = tokenizer(TEXTS[2])["input_ids"]
    by_ids = client.embeddings.create(model=EMBEDDING_MODEL, input=ids,
                                      encoding_format="float")
    by_lists = client.embeddings.create(model=EMBEDDING_MODEL, input=[ids, ids[:3]],
                                        encoding_format="float")
    assert by_ids.usage.prompt_tokens == len(ids)
    assert by_lists.usage.prompt_tokens == len(ids) + 3
    assert _cosines(np.array([by_ids.data[0].embedding]), embed([TEXTS[2]]))[0] >= 0.999
    assert np.allclose(by_lists.data[0].embedding, by_ids.data[0].embedding, atol=1e-5)

    raw = _post(gateway, api_key, {"model": EMBEDDING_MODEL, "input": TEXTS[:2],
                                   "encoding_format": "base64"}).json()
    # The spec knows only the float form; base64 replaces the list with its string.
    validate("CreateEmbeddingResponse", {**raw, "data": [
        {**d, "embedding": [0.0]} for d in raw["data"]]})
    assert all(isinstance(d["embedding"], str) for d in raw["data"])
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                        for d in raw["data"]])
    assert _cosines(decoded, embed(TEXTS[:2])).min() >= 0.999


def test_a_batch_larger_than_one_reply_chunk_keeps_its_order(
        gateway: Gateway, embedder: object, api_key: str, reference) -> None:  # type: ignore[no-untyped-def]
    embed, _ = reference
    texts = [f"Sentence number {i} is about {w}." for i, w in
             enumerate(["rivers", "stars", "bread", "engines", "violins"] * 30)]
    r = _post(gateway, api_key, {"model": EMBEDDING_MODEL, "input": texts})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    assert _cosines(got, embed(texts)).min() >= 0.999


def test_both_models_are_listed(gateway: Gateway, embedder: object, worker: object,
                                api_key: str) -> None:
    r = httpx.get(f"{gateway.base_url}/models", timeout=10,
                  headers={"Authorization": f"Bearer {api_key}"})
    ids = {m["id"] for m in r.json()["data"]}
    assert {MODEL, EMBEDDING_MODEL} <= ids


def test_usage_is_billed_as_prompt_tokens(gateway: Gateway, embedder: object) -> None:
    key = create_key(gateway, f"embeddings-{uuid.uuid4().hex[:8]}", tier="pro")
    r = _post(gateway, str(key["secret"]), {"model": EMBEDDING_MODEL, "input": TEXTS})
    assert r.status_code == 200, r.text
    tokens = r.json()["usage"]["prompt_tokens"]

    def usage() -> dict[str, int]:
        return httpx.get(f"{gateway.base_url}/usage", timeout=10,
                         headers={"Authorization": f"Bearer {key['secret']}"}).json()["key"]

    wait_until(lambda: usage()["requests"] == 1, 30, "the usage to be counted")
    totals = usage()
    assert totals["prompt_tokens"] == tokens and totals["completion_tokens"] == 0


BAD = [
    ("empty list", {"input": []}, "input", None),
    ("empty string", {"input": ""}, "input", None),
    ("an empty string in a list", {"input": ["a", ""]}, "input[1]", None),
    ("wrong type", {"input": 5}, "input", None),
    ("mixed list", {"input": ["a", 1]}, "input", None),
    ("unknown encoding", {"input": "a", "encoding_format": "int8"}, "encoding_format", None),
    ("over the context", {"input": "word " * 600}, "input", "context_length_exceeded"),
    ("token ids out of range", {"input": [1, 10**7]}, "input", None),
    ("dimensions it cannot do", {"input": "a", "dimensions": 64}, "dimensions", None),
]


@pytest.mark.parametrize(("case", "body", "param", "code"), BAD, ids=[c[0] for c in BAD])
def test_bad_input_gets_an_openai_error(gateway: Gateway, embedder: object, api_key: str,
                                        case: str, body: dict[str, object], param: str | None,
                                        code: str | None) -> None:
    r = _post(gateway, api_key, {"model": EMBEDDING_MODEL, **body})
    assert r.status_code == 400, r.text
    validate("ErrorResponse", r.json())
    error = r.json()["error"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert error["message"]
    # The worker keeps serving.
    assert _post(gateway, api_key, {"model": EMBEDDING_MODEL, "input": "ok"}).status_code == 200


def test_a_model_asked_for_what_it_does_not_do(gateway: Gateway, embedder: object,
                                               worker: object, api_key: str) -> None:
    r = _post(gateway, api_key, {"model": MODEL, "input": "hello"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported", r.text
    r = httpx.post(f"{gateway.base_url}/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {api_key}"},
                   json={"model": EMBEDDING_MODEL,
                         "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported", r.text
    r = _post(gateway, api_key, {"model": "no-such-model", "input": "hello"})
    assert r.status_code == 404, r.text
    assert json.loads(r.text)["error"]["param"] == "model"
