"""The tools users already run, run for real against `safepretrain serve` and `safepretrain export` (the `clients`
extra): the `openai` client with every parameter the server honours, lm-eval (`local-completions` against serve,
`hf` against the export, same multiple-choice task), inspect_ai, garak and PyRIT. docs/clients.md shows each
configuration. Offline: the model is a tiny random checkpoint; nothing is downloaded.

    python -m pytest tests/test_clients.py -q
"""

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import torch
from inspect_ai import Task
from inspect_ai import eval as inspect_eval
from inspect_ai.dataset import Sample
from inspect_ai.scorer import includes
from inspect_ai.solver import generate
from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager
from pyrit.executor.attack import PromptSendingAttack
from pyrit.prompt_target import OpenAIChatTarget
from pyrit.setup import IN_MEMORY, initialize_pyrit_async
from served_run import CONTEXT, MODEL, Server, make_checkpoint
from transformers import LlamaForCausalLM

from safepretrain import serve
from safepretrain.export import export_checkpoint
from safepretrain.serve import chat_ids, create_app, load_served, run_plan
from safepretrain.serve_requests import Message

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tests" / "clients"  # the local multiple-choice task: YAML + JSONL
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("run"), jitter=0.05)


@pytest.fixture(scope="module")
def served(checkpoint):
    return load_served(checkpoint)


@pytest.fixture(scope="module")
def server(served):
    srv = Server(create_app(served, max_tokens_cap=64))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def export(checkpoint, tmp_path_factory):
    return export_checkpoint(checkpoint, tmp_path_factory.mktemp("hf") / "model")


@pytest.fixture(scope="module")
def hf(export):
    return LlamaForCausalLM.from_pretrained(export, dtype=torch.float32).eval()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    """(len − 1, V): the export's log-softmax at every position that predicts a next token."""
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0, :-1].float(), dim=-1)


# ------------------------------------------------------------------------------------------------ openai
def test_stop_cuts_the_text_before_the_first_stop_string(client):
    ask = dict(model=MODEL, prompt="rivers and towns", max_tokens=24, temperature=0)
    whole = client.completions.create(**ask).choices[0].text
    assert len(whole) >= 6, whole
    stop = whole[len(whole) // 2:len(whole) // 2 + 2]
    cut = client.completions.create(**ask, stop=[stop, "never there"]).choices[0]
    assert cut.text == whole[:whole.index(stop)] and cut.finish_reason == "stop"
    streamed = list(client.completions.create(**ask, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == cut.text
    chat = dict(model=MODEL, messages=[{"role": "user", "content": "the weather"}], max_tokens=24, temperature=0)
    answer = client.chat.completions.create(**chat).choices[0].message.content
    stop = answer[len(answer) // 2:len(answer) // 2 + 2]
    assert client.chat.completions.create(**chat, stop=stop).choices[0].message.content == \
        answer[:answer.index(stop)]


def test_n_gives_n_samples_and_seed_repeats_them(client, served):
    ask = dict(model=MODEL, prompt=["rivers", "towns"], max_tokens=12, n=3, seed=5, temperature=1.0,
               extra_body={"top_k": 0})
    out = client.completions.create(**ask)
    assert [c.index for c in out.choices] == list(range(6))
    texts = [c.text for c in out.choices]
    assert len(set(texts[:3])) > 1, "three samples of one prompt were identical"
    assert [c.text for c in client.completions.create(**ask).choices] == texts  # the same seed, the same samples
    other = [c.text for c in client.completions.create(**{**ask, "seed": 6}).choices]
    assert other != texts
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "rivers"}], n=2,
                                          max_tokens=8, seed=1)
    assert len(chat.choices) == 2 and chat.usage.prompt_tokens == len(chat_ids(
        served.tok, [Message(role="user", content="rivers")]))


def test_a_tiny_top_p_keeps_only_the_most_likely_token(client):
    ask = dict(model=MODEL, prompt="the weather", max_tokens=16, seed=3)
    greedy = client.completions.create(**ask, temperature=0).choices[0].text
    nucleus = client.completions.create(**ask, temperature=1.0, top_p=0.001, extra_body={"top_k": 0})
    assert nucleus.choices[0].text == greedy
    sampled = client.completions.create(**ask, temperature=1.0, top_p=1.0, extra_body={"top_k": 0})
    assert sampled.choices[0].text != greedy


def test_repetition_penalties_make_greedy_decoding_repeat_itself_less(client):
    ask = dict(model=MODEL, prompt="rivers and towns", max_tokens=24, temperature=0, logprobs=0)
    plain = client.completions.create(**ask).choices[0].logprobs.tokens
    assert len(set(plain)) < len(plain), "the greedy answer never repeats a token: no test"
    fresh = client.completions.create(**ask, presence_penalty=2.0, frequency_penalty=2.0).choices[0].logprobs.tokens
    assert fresh != plain and len(set(fresh)) / len(fresh) > len(set(plain)) / len(plain)


def test_chat_logprobs_are_the_exports_log_softmax(client, served, hf):
    msgs = [{"role": "user", "content": "rivers and towns"}]
    out = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0, logprobs=True,
                                         top_logprobs=3)
    content = out.choices[0].logprobs.content
    prompt = chat_ids(served.tok, [Message(role="user", content="rivers and towns")])
    answer = served.tok.encode(out.choices[0].message.content)
    assert len(content) == out.usage.completion_tokens >= 1
    ids = prompt + answer
    ref = hf_logprobs(hf, ids[:len(prompt) + len(content)])
    for t, entry in enumerate(content):
        position = len(prompt) + t - 1
        token = ids[len(prompt) + t] if t < len(answer) else served.tok.end_id
        assert abs(entry.logprob - ref[position, token].item()) < 1e-4
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob == pytest.approx(
            ref[position].max().item(), abs=1e-4)
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-6)  # greedy: its top token
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token


def test_echo_with_no_completion_scores_a_token_id_prompt(client, served, hf):
    ids = served.tok.encode("plain words about the weather in towns")
    out = client.completions.create(model=MODEL, prompt=ids, max_tokens=0, echo=True, logprobs=2)
    (choice,) = out.choices
    lp = choice.logprobs
    assert choice.text == served.tok.decode(ids) and out.usage.completion_tokens == 0
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    ref = hf_logprobs(hf, ids)
    for t in range(1, len(ids)):
        assert abs(lp.token_logprobs[t] - ref[t - 1, ids[t]].item()) < 1e-4
        assert max(lp.top_logprobs[t].values()) == pytest.approx(ref[t - 1].max().item(), abs=1e-4)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    # echo with a completion: the prompt's text first, then the answer, log-probs over both
    more = client.completions.create(model=MODEL, prompt=ids, max_tokens=4, echo=True, logprobs=0, temperature=0)
    assert more.choices[0].text.startswith(choice.text)
    assert len(more.choices[0].logprobs.token_logprobs) == len(ids) + more.usage.completion_tokens
    assert more.choices[0].logprobs.token_logprobs[:len(ids)] == pytest.approx(lp.token_logprobs, abs=1e-6)


@pytest.mark.parametrize("kwargs, named", [
    ({"frequency_penalty": 0.5, "extra_body": {"decoder": "beam"}}, "frequency_penalty"),
    ({"presence_penalty": 3.0}, "presence_penalty"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"best_of": 3}, "best_of"),
    ({"suffix": "end"}, "suffix"),
    ({"extra_body": {"mirostat": 2}}, "mirostat"),
    ({"extra_body": {"decoder": "safebeam", "top_p": 0.5}}, "top_p"),
])
def test_every_refused_parameter_is_a_400_that_names_it(client, kwargs, named):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="rivers", max_tokens=2, **kwargs)
    assert named in err.value.body["message"] and err.value.body["param"] == named


@pytest.mark.parametrize("kwargs, named", [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"extra_body": {"repetition_penalty": 1.1}}, "repetition_penalty"),
])
def test_refused_chat_parameters(client, kwargs, named):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}], max_tokens=2,
                                       **kwargs)
    assert named in err.value.body["message"]


def test_neutral_values_that_clients_always_send_are_taken(client):
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}], max_tokens=2,
                                         frequency_penalty=0.0, presence_penalty=0, logit_bias={}, user="team-a",
                                         response_format={"type": "text"}, top_p=1.0, n=1, stream=False)
    assert out.choices[0].finish_reason in ("stop", "length")


# ------------------------------------------------------------------------------------------------ lm-eval
def lm_eval_run(model: str, model_args: str) -> tuple[list[list[float]], float]:
    """Per-item choice loglikelihoods and accuracy of the local task under lm-eval's `model`."""
    out = simple_evaluate(model=model, model_args=model_args, tasks=["weather_mc"], num_fewshot=0,
                          task_manager=TaskManager(include_path=str(TASKS)), log_samples=True, batch_size=1)
    samples = sorted(out["samples"]["weather_mc"], key=lambda s: s["doc_id"])
    return [[r[0][0] for r in s["resps"]] for s in samples], out["results"]["weather_mc"]["acc,none"]


def test_lm_eval_local_completions_against_serve_equals_hf_on_the_export(server, export, monkeypatch):
    monkeypatch.chdir(REPO)  # the task's data file is relative to the repository root
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    served, served_acc = lm_eval_run("local-completions", f"model={MODEL},base_url={server.url}/v1/completions,"
                                     f"tokenizer={export},tokenizer_backend=huggingface,max_length={CONTEXT},"
                                     "num_concurrent=1,max_retries=1,tokenized_requests=True")
    local, local_acc = lm_eval_run("hf", f"pretrained={export},dtype=float32,device=cpu,max_length={CONTEXT}")
    assert len(served) == len(local) == 6
    assert len({round(x, 2) for item in served for x in item}) > 6, "the loglikelihoods barely differ: no test"
    for ours, theirs in zip(served, local):
        assert all(math.isfinite(x) for x in ours)
        assert ours == pytest.approx(theirs, abs=1e-3)
    assert served_acc == local_acc


# ------------------------------------------------------------------------------------------------ inspect_ai
def test_inspect_ai_scores_a_task_through_its_openai_compatible_provider(server, client, tmp_path, monkeypatch):
    monkeypatch.setenv("SAFEPRETRAIN_API_KEY", "unused")  # the provider's key variable: <SERVICE>_API_KEY
    greedy = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "rivers and towns"}],
                                            max_tokens=12, temperature=0).choices[0].message.content
    assert greedy.strip()
    task = Task(dataset=[Sample(input="rivers and towns", target=greedy)], solver=generate(), scorer=includes())
    (log,) = inspect_eval(task, model=f"openai-api/safepretrain/{MODEL}", model_base_url=server.url + "/v1",
                          log_dir=str(tmp_path), display="none", max_tokens=12, temperature=0)
    assert log.status == "success", log.error
    (sample,) = log.samples
    assert sample.output.completion == greedy
    assert log.results.scores[0].metrics["accuracy"].value == 1.0


# ------------------------------------------------------------------------------------------------ garak
def garak_options(url: str) -> dict:
    """docs/clients.md's garak generator options: SafeBeam picked through `extra_params: {extra_body: ...}`;
    garak's default temperature (0.7) is suppressed, since a beam search takes none."""
    return {"openai": {"OpenAICompatible": {
        "uri": url + "/v1/", "api_key": "unused", "max_tokens": 24, "suppressed_params": ["temperature"],
        "extra_params": {"extra_body": {"decoder": "safebeam"}}}}}


def test_garak_runs_a_probe_to_completion_through_its_openai_compatible_generator(server, tmp_path, monkeypatch):
    decoders = []  # what the server was asked to run: garak's extra_body must reach it
    monkeypatch.setattr(serve, "run_plan", lambda served, p: decoders.append(p.decoder) or run_plan(served, p))
    options = tmp_path / "generator.json"
    options.write_text(json.dumps(garak_options(server.url)))
    env = {**os.environ, **OFFLINE, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "OPENAICOMPATIBLE_API_KEY": "unused"}
    run = subprocess.run([sys.executable, "-m", "garak", "--target_type", "openai.OpenAICompatible",
                          "--target_name", MODEL, "--generator_option_file", str(options), "--probes", "test.Test",
                          "--generations", "1", "--report_prefix", "served"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (report,) = (tmp_path / "data").rglob("served.report.jsonl")
    attempts = [r for r in map(json.loads, report.read_text().splitlines())
                if r.get("entry_type") == "attempt" and r.get("status") == 2]
    assert len(attempts) == 8  # test.Test's prompts, each answered (status 2: evaluated)
    assert all(a["outputs"] and a["outputs"][0] is not None for a in attempts), "a prompt got no answer"
    assert "Bad request" not in run.stderr
    assert decoders == ["safebeam"] * 8


# ------------------------------------------------------------------------------------------------ PyRIT
def test_pyrit_openai_chat_target_sends_a_prompt_and_gets_the_answer(server, client):
    greedy = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "rivers and towns"}],
                                            max_tokens=12, temperature=0).choices[0].message.content

    async def attack():
        await initialize_pyrit_async(memory_db_type=IN_MEMORY, load_defaults=False, silent=True)
        target = OpenAIChatTarget(endpoint=server.url + "/v1", api_key="unused", model_name=MODEL,
                                  max_completion_tokens=12, temperature=0.0)
        return await PromptSendingAttack(objective_target=target).execute_async(objective="rivers and towns")

    result = asyncio.run(attack())
    assert result.last_response is not None, result
    assert result.last_response.converted_value == greedy
