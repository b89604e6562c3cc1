"""serve's requests: the OpenAI request bodies as strict pydantic models, their validation errors as OpenAI's
error shape (`ServeError`), and the prompt token ids of a chat or completion request (every external text made
inert). `serve.py` plans, runs and answers them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from safepretrain.data.chat import chat_prompt_ids
from safepretrain.data.read_step import neutralise_special
from safepretrain.data.tokenizer import TextTokenizer, special_tokens

MAX_PROMPTS = 16  # prompts per /v1/completions request
MIN_TEMPERATURE = 0.01  # below it (but above 0, which is greedy) logits / temperature overflow to inf → NaN probs
# SafeBeam drops floor(drop_fraction · n + 1e-6) of n candidates: up to 0.99 that leaves one for every n ≤ 10⁴
MAX_DROP_FRACTION = 0.99
MAX_LENGTH_PENALTY = 10.0  # len ** penalty stays a float (len ≤ max_seq_len); above, Python's ** overflows
MAX_STOP = 4  # stop strings per request (OpenAI's limit)
MAX_LOGPROBS = 5  # completions: top alternatives per token (OpenAI's limit)
MAX_TOP_LOGPROBS = 20  # chat: top alternatives per token (OpenAI's limit)


class ServeError(Exception):
    """A request (or the checkpoint) cannot be served; becomes OpenAI's error body with `status`."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code



def _utf8(text: str) -> str:
    # JSON may escape a lone surrogate (\ud800); no tokenizer (nor UTF-8) can carry it. The text is not echoed.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"not valid Unicode: a lone surrogate at character {err.start}; send UTF-8 text") from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


class _Strict(BaseModel):
    # every OpenAI field is either honoured or refused: an unknown one is a 400 that names it (`_validation_error`),
    # never silently ignored; JSON types are taken as they are (no "yes" for true, no true for 1); NaN and
    # infinities (Python's json reads `NaN`, `Infinity` and 1e400) are refused in every float
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _neutral(name: str, value: Any, neutral: tuple, why: str) -> None:
    """Fields clients send with their default value on every request (garak, PyRIT, inspect_ai do): the neutral
    value is honoured (it asks for nothing), any other is refused with the reason rather than ignored."""
    if value is not None and value not in neutral:
        raise ValueError(f"{name}={value!r} is not supported: {why}; leave it out or send {neutral[0]!r}")


class StreamOptions(_Strict):
    include_usage: bool = True  # the final chunk carries `usage` either way


class _Body(_Strict):
    model: Text | None = None
    max_tokens: int | None = Field(None, ge=0)  # 0: no completion (completions with echo: the prompt's logprobs)
    max_completion_tokens: int | None = Field(None, ge=0)  # the chat API's newer name for max_tokens
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_PROMPTS)  # choices per prompt, each its own sample (one batch row each)
    stop: Text | list[Text] | None = None  # up to MAX_STOP strings; the text is cut before the first one
    decoder: Text = "topk"
    seed: int | None = Field(None, ge=0, lt=2**63)  # torch.Generator.manual_seed's range
    temperature: float | None = Field(None, ge=0)  # 0 = greedy (eval.decoders.sample_next_token)
    top_p: float | None = Field(None, gt=0, le=1)  # nucleus, after top_k (topk decoder)
    top_k: int | None = Field(None, ge=0)  # 0 = whole vocabulary
    # beam widths are bounded: each prompt holds beam_size × candidates_per_beam cache rows
    beam_size: int | None = Field(None, ge=1, le=16)
    candidates_per_beam: int | None = Field(None, ge=1, le=16)
    drop_fraction: float | None = Field(None, ge=0, le=MAX_DROP_FRACTION)
    short_circuit: bool | None = None
    length_penalty: float | None = Field(None, ge=0, le=MAX_LENGTH_PENALTY)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)  # topk decoder (OpenAI's repetition penalties)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    # honoured at their neutral value only (see `_neutral`)
    logit_bias: dict[str, float] | None = None
    user: Text | None = None  # an end-user id for the caller's records; generation never reads it (as OpenAI's)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > MAX_STOP or any(not s for s in stops)):
            raise ValueError(f"stop takes 1 to {MAX_STOP} non-empty strings")
        return stops or None

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict | None) -> dict | None:
        _neutral("logit_bias", value or None, (None,), "the decoders take no logit bias")
        return value

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])


class CompletionBody(_Body):
    # text, a list of texts, a list of token ids, or a list of those (lm-eval sends ids)
    prompt: Text | list[Text] | list[int] | list[list[int]]
    echo: bool = False  # the prompt's text (and, with logprobs, its tokens' log-probs) before the completion
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # per token: its log-prob and the top-N alternatives
    best_of: int | None = None
    suffix: Text | None = None

    @field_validator("best_of")
    @classmethod
    def _one_sample_each(cls, value: int | None, info: ValidationInfo) -> int | None:
        _neutral("best_of", None if value == info.data.get("n", 1) else value, (None,),
                 "every choice is its own sample, so best_of must equal n")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        _neutral("suffix", value or None, (None,), "these models do not fill in the middle")
        return value


class TextPart(_Strict):
    """One content part; only text parts mean anything to our models."""
    type: Text
    text: Text | None = None

    @field_validator("type")
    @classmethod
    def _text_only(cls, value: str) -> str:
        if value != "text":
            raise ValueError(f"content part type {value[:40]!r} is not supported: these models read text only, "
                             "so send parts of type 'text'")
        return value

    @field_validator("text")
    @classmethod
    def _has_text(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("a text part needs its text")
        return value


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: list[TextPart] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, value: Any) -> Any:  # a plain string is one text part (both shapes are OpenAI's)
        return [{"type": "text", "text": value}] if isinstance(value, str) else value

    def text(self) -> str:
        return "".join(p.text or "" for p in self.content or [])


class ResponseFormat(_Strict):
    type: Literal["text"]  # json_object / json_schema: these models have no constrained decoding


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False  # per generated token: its log-prob (and `top_logprobs` alternatives)
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Text | None = None
    parallel_tool_calls: bool | None = None  # moot without tools

    @field_validator("top_logprobs")
    @classmethod
    def _with_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list | None) -> list | None:
        _neutral("tools", value or None, (None,), "these models cannot call tools")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, value: str | None) -> str | None:
        _neutral("tool_choice", value, ("none",), "these models cannot call tools")
        return value


def _validation_error(err: ValidationError) -> ServeError:
    def where(loc: tuple) -> str:  # field names and list indices; not pydantic's tags of union members
        return ".".join(str(x) for x in loc if isinstance(x, int) or x.isidentifier())
    def say(e: dict) -> str:
        if e["type"] == "extra_forbidden":  # OpenAI parameters this server has no meaning for
            return ("this server does not support this parameter (it is refused rather than ignored); remove it "
                    "(docs/clients.md lists what is honoured)")
        return e["msg"]
    errors = err.errors(include_input=False, include_url=False)  # the input is not echoed
    message = "; ".join(f"{where(e['loc']) or 'body'}: {say(e)}" for e in errors)
    return ServeError(400, message, param=where(errors[0]["loc"]) or None)


# --------------------------------------------------------------------------- prompts
def inert(tok: TextTokenizer, text: str) -> str:
    """External text with its literal special-token strings made inert (the corpus's rule)."""
    return neutralise_special(text, special_tokens(tok.tag))[0]


def chat_ids(tok: TextTokenizer, messages: list[Message]) -> list[int]:
    """The training chat format for a conversation: earlier turns as `<|user|>…<|end|>` / `<|assistant|>…<|end|>`,
    the last user turn via `chat_prompt_ids` (ends with `<|assistant|>`; an empty one is a turn too, as OpenAI's API
    takes it: garak's blank probe sends one). System/developer messages are dropped,
    as in the exported chat template: the models were never trained with one. Every text is made `inert`, so the
    only chat markers are the ones this function places."""
    turns = [m for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise ServeError(400, "messages must end with a user message (the model answers as the assistant)",
                         param="messages")
    ids: list[int] = []
    for m in turns[:-1]:
        ids += [tok.user_id if m.role == "user" else tok.assistant_id, *tok.encode(inert(tok, m.text())), tok.end_id]
    return ids + chat_prompt_ids(tok, inert(tok, turns[-1].text()))


def completion_ids(tok: TextTokenizer, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
    """The prompts of a completion request as token ids. Texts are encoded after being made `inert`; token ids are
    taken verbatim (a caller who sends ids chooses every token, special ones included), each checked against the
    vocabulary."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompts = [prompt]
    else:
        prompts = prompt
    if not prompts or any(not p or (isinstance(p, str) and not p.strip()) for p in prompts):
        raise ServeError(400, "empty prompt: give a non-empty string or token-id list (or a list of them)",
                         param="prompt")
    if len(prompts) > MAX_PROMPTS:  # one request is one batch: its size bounds the memory a request can take
        raise ServeError(400, f"{len(prompts)} prompts in one request; at most {MAX_PROMPTS}", param="prompt")
    ids = [tok.encode(inert(tok, p)) if isinstance(p, str) else list(p) for p in prompts]
    bad = next((i for p in ids for i in p if not 0 <= i < tok.vocab_size), None)
    if bad is not None:
        raise ServeError(400, f"token id {bad} is outside this model's vocabulary (0 to {tok.vocab_size - 1})",
                         param="prompt")
    return ids
