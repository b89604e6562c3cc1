"""`safepretrain serve`: the real `openai` client against the server on loopback, over a tiny checkpoint.

    python -m pytest tests/test_serve.py -q
"""

import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import torch
from served_run import MODEL, Server, make_checkpoint

from safepretrain.cli import main
from safepretrain.data.chat import chat_prompt_ids
from safepretrain.eval.decoders import Generation
from safepretrain.serve import Choice, Message, chat_ids, create_app, load_served, text_deltas
from safepretrain.serve_responses import Answer, cut_at_stop

pytest.importorskip("uvicorn")

CAP = 32
MAX_BYTES = 4096


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def served(checkpoint):
    return load_served(checkpoint)


@pytest.fixture(scope="module")
def server(served):
    srv = Server(create_app(served, max_concurrency=4, max_tokens_cap=CAP, max_request_bytes=MAX_BYTES))
    yield srv
    srv.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_models_lists_the_checkpoint_by_its_path_in_the_run(client):
    (model,) = client.models.list().data
    assert model.id == MODEL and model.model_extra["context_length"] == 128


def test_topk_completion_and_chat_are_reproducible_by_seed(client):
    ask = dict(model=MODEL, prompt="rivers and towns", max_tokens=12, seed=7)
    a, b = client.completions.create(**ask), client.completions.create(**ask)
    assert a.choices[0].text == b.choices[0].text
    assert a.choices[0].finish_reason in ("stop", "length")
    assert a.choices[0].model_extra["safepretrain"]["decoder"] == "topk"
    assert a.usage.completion_tokens <= 12
    chat = dict(model=MODEL, messages=[{"role": "user", "content": "the weather"}], max_tokens=12, seed=3,
                temperature=0.8, extra_body={"top_k": 5})
    c, d = client.chat.completions.create(**chat), client.chat.completions.create(**chat)
    assert c.choices[0].message.content == d.choices[0].message.content
    assert c.choices[0].message.role == "assistant"


@pytest.mark.parametrize("decoder", ["safebeam", "beam"])
def test_beam_decoders_answer_completions_and_chat(client, decoder):
    extra = {"decoder": decoder, "beam_size": 2, "candidates_per_beam": 3}
    out = client.completions.create(model=MODEL, prompt="towns", max_tokens=8, extra_body=extra)
    info = out.choices[0].model_extra["safepretrain"]
    assert info["decoder"] == decoder and isinstance(info["short_circuit"], bool)
    again = client.completions.create(model=MODEL, prompt="towns", max_tokens=8, extra_body=extra)
    assert again.choices[0].text == out.choices[0].text  # beam decoders are deterministic
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "rivers"}],
                                          max_tokens=8, extra_body=extra)
    assert chat.choices[0].finish_reason in ("stop", "length", "content_filter")


@pytest.mark.parametrize("extra", [{"seed": 11}, {"decoder": "safebeam"}])
def test_streamed_chunks_concatenate_to_the_answer(client, extra):
    kw = dict(model=MODEL, max_tokens=16, extra_body=extra)
    whole = client.completions.create(prompt="café by the rivers", **kw).choices[0].text
    chunks = list(client.completions.create(prompt="café by the rivers", stream=True, **kw))
    assert "".join(c.choices[0].text for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length", "content_filter")
    msgs = [{"role": "user", "content": "weather"}]
    whole = client.chat.completions.create(messages=msgs, **kw).choices[0].message.content
    chunks = list(client.chat.completions.create(messages=msgs, stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].model_extra["safepretrain"]["decoder"] == extra.get("decoder", "topk")


def test_a_short_circuit_is_marked_content_filter(client, served, monkeypatch):
    # a random model rarely puts the tag on top, so the decoder's answer is stubbed: this checks the marking
    tagged = Generation([served.tok.encode("rivers")[0], served.tag_id], -1.0, "tag", True, True)
    answer = Choice(tagged, cut_at_stop(served.tok, tagged.tokens, []), None)
    monkeypatch.setattr("safepretrain.serve.run_plan", lambda served, plan: [answer])
    out = client.completions.create(model=MODEL, prompt="x", max_tokens=4, extra_body={"decoder": "safebeam"})
    assert out.choices[0].finish_reason == "content_filter"
    assert out.choices[0].model_extra["safepretrain"]["short_circuit"] is True
    last = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}],
                                               stream=True, extra_body={"decoder": "safebeam"}))[-1]
    assert last.choices[0].finish_reason == "content_filter"


def test_a_real_safebeam_short_circuit(checkpoint):
    """A model rigged so the tag is every step's top token: SafeBeam keeps it (nothing dropped) and stops."""
    served = load_served(checkpoint)
    m = served.model
    with torch.no_grad():  # logits = norm(h) · E (tied): only dimension 0 survives the final norm, and every
        m.norm.weight.zero_()  # token's embedding puts 1 there, so h[0] > 0 and the tag's 40 wins
        m.norm.weight[0] = 1.0
        m.tok_emb.weight[:, 0] = 1.0
        m.tok_emb.weight[served.tag_id, 0] = 40.0
    srv = Server(create_app(served))
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "rivers"}],
                                             max_tokens=8, extra_body={"decoder": "safebeam", "drop_fraction": 0.0})
    finally:
        srv.close()
    assert out.choices[0].finish_reason == "content_filter"
    assert out.choices[0].model_extra["safepretrain"]["short_circuit"] is True
    assert out.choices[0].message.content == served.tok.tag  # the tag is the whole answer


def test_max_tokens_above_the_cap_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError, match="above this server's cap of 32"):
        client.completions.create(model=MODEL, prompt="rivers", max_tokens=CAP + 1)


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/completions", {"prompt": "a", "decoder": "nucleus"}, 400, "unknown decoder 'nucleus'"),
    ("/v1/completions", {"prompt": "  "}, 400, "empty prompt"),
    ("/v1/completions", {"prompt": "a", "model": "other"}, 404, "not served here"),
    ("/v1/completions", {"prompt": "a", "beam_size": 99}, 400, "beam_size"),
    ("/v1/completions", {"prompt": ["a"] * 17}, 400, "at most 16"),
    ("/v1/completions", {"max_tokens": 4}, 400, "prompt: Field required"),
    ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "hi"}]}, 400, "end with a user"),
    ("/v1/completions", {"prompt": "a", "logprobs": True}, 400, "logprobs: Input should be a valid integer"),
    ("/v1/completions", {"prompt": "a", "frequency_penalty": 0.5, "decoder": "safebeam"}, 400,
     "frequency_penalty does not apply to decoder safebeam"),
    ("/v1/completions", {"prompt": "a", "max_tokens": 0}, 400, "only makes sense with echo"),
    ("/v1/completions", {"prompt": [0, 10**6]}, 400, "outside this model's vocabulary"),
    ("/v1/completions", {"prompt": "a", "decoder": "beam", "temperature": 0.7}, 400, "does not apply to decoder"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]}, 400,
     "cannot call tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "logprobs": True, "stream": True}, 400,
     "stream: true sends one choice"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a" * MAX_BYTES}]}, 413, "limit"),
    ("/v1/nothing", {}, 404, "Not Found"),
])
def test_bad_requests_get_json_errors(server, path, body, status, message):
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"] and r.json()["error"]["type"]


def test_bad_json_and_a_chunked_oversized_body(server):
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    # no Content-Length (chunked upload): the limit is enforced while reading
    r = httpx.post(server.url + "/v1/completions", content=iter([b"{\"prompt\": \"", b"a" * MAX_BYTES, b"\"}"]),
                   timeout=30)
    assert r.status_code == 413


def test_safebeam_needs_the_tag_token(server, served, monkeypatch):
    monkeypatch.setattr(served, "tag_id", None)
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "a", "decoder": "safebeam"}, timeout=30)
    assert r.status_code == 400 and "tag token" in r.json()["error"]["message"]


def test_a_full_queue_gets_429(served, monkeypatch):
    def slow(served, plan):
        time.sleep(0.5)
        return [Choice(Generation([], 0.0, "stop", False, False), Answer("", [], False), None)]
    monkeypatch.setattr("safepretrain.serve.run_plan", slow)
    srv = Server(create_app(served, max_concurrency=1))  # 1 running + 4 queued, the 6th is refused
    try:
        codes = []
        threads = [threading.Thread(target=lambda: codes.append(httpx.post(
            srv.url + "/v1/completions", json={"prompt": "a"}, timeout=30).status_code)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        srv.close()
    assert sorted(codes).count(200) >= 5 and 429 in codes


def test_chat_renders_the_training_format(served):
    tok = served.tok
    one = [Message(role="system", content="ignored"), Message(role="user", content="rivers")]
    assert chat_ids(tok, one) == chat_prompt_ids(tok, "rivers")
    two = [Message(role="user", content="a"), Message(role="assistant", content="b"),
           Message(role="user", content=[{"type": "text", "text": "c"}])]
    assert chat_ids(tok, two) == [tok.user_id, *tok.encode("a"), tok.end_id, tok.assistant_id, *tok.encode("b"),
                                  tok.end_id, *chat_prompt_ids(tok, "c")]


def test_text_deltas_never_split_a_character(served):
    ids = served.tok.encode("café – rivers")
    pieces = list(text_deltas(served.tok, ids))
    assert "".join(pieces) == served.tok.decode(ids) and all("\ufffd" not in p for p in pieces)


def test_cli_refuses_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err


def test_the_cli_serves_a_checkpoint(checkpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "safepretrain", "serve", str(checkpoint), "--port", str(port),
                             "--max-tokens-cap", "8"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        assert r.json()["data"][0]["id"] == MODEL
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "a", "max_tokens": 9}, timeout=30)
        assert r.status_code == 400 and "cap of 8" in r.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_token_bytes_are_exact_and_stop_cuts_count_the_completing_token(served):
    tok = served.tok
    text = "café – rivers and towns"
    ids = tok.encode(text)
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")
    assert tok.token_bytes(tok.tag_id) == tok.tag.encode("utf-8")
    answer = cut_at_stop(tok, ids, ["never", "and"])
    assert answer.text == "café – rivers " and answer.stopped_by_string
    # counted: the tokens up to the one that completed "and", not one more
    assert len(tok.decode(answer.tokens[:-1])) < len("café – rivers and") <= len(tok.decode(answer.tokens))
    assert cut_at_stop(tok, ids, ["x"]) == Answer(text, ids, False)
