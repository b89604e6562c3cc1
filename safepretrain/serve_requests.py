"""serve's requests: the OpenAI request bodies as strict pydantic models, their validation errors as OpenAI's
error shape (`ServeError`), and the prompt token ids of a chat or completion request (every external text made
inert). `serve.py` plans, runs and answers them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from safepretrain.data.chat import chat_prompt_ids
from safepretrain.data.read_step import neutralise_special
from safepretrain.data.tokenizer import TextTokenizer, special_tokens

MAX_PROMPTS = 16  # prompts per /v1/completions request
MIN_TEMPERATURE = 0.01  # below it (but above 0, which is greedy) logits / temperature overflow to inf → NaN probs
# SafeBeam drops floor(drop_fraction · n + 1e-6) of n candidates: up to 0.99 that leaves one for every n ≤ 10⁴
MAX_DROP_FRACTION = 0.99
MAX_LENGTH_PENALTY = 10.0  # len ** penalty stays a float (len ≤ max_seq_len); above, Python's ** overflows


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
    # unknown OpenAI fields (logprobs, stop, user, …) are ignored, as OpenAI-compatible servers do; JSON types are
    # taken as they are (no "yes" for true, no true for 1); NaN and infinities (Python's json reads `NaN`,
    # `Infinity` and 1e400) are refused in every float
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class _Body(_Strict):
    model: Text | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the chat API's newer name for max_tokens
    stream: bool = False
    n: int = Field(1, ge=1, le=1)  # one choice per prompt; ask again (another seed) for more samples
    decoder: Text = "topk"
    seed: int | None = Field(None, ge=0, lt=2**63)  # torch.Generator.manual_seed's range
    temperature: float | None = Field(None, ge=0)  # 0 = greedy (eval.decoders.sample_next_token)
    top_k: int | None = Field(None, ge=0)  # 0 = whole vocabulary
    # beam widths are bounded: each prompt holds beam_size × candidates_per_beam cache rows
    beam_size: int | None = Field(None, ge=1, le=16)
    candidates_per_beam: int | None = Field(None, ge=1, le=16)
    drop_fraction: float | None = Field(None, ge=0, le=MAX_DROP_FRACTION)
    short_circuit: bool | None = None
    length_penalty: float | None = Field(None, ge=0, le=MAX_LENGTH_PENALTY)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return value


class CompletionBody(_Body):
    prompt: Text | list[Text]


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


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)


def _validation_error(err: ValidationError) -> ServeError:
    def where(loc: tuple) -> str:  # field names and list indices; not pydantic's tags of union members
        return ".".join(str(x) for x in loc if isinstance(x, int) or x.isidentifier())
    errors = err.errors(include_input=False, include_url=False)  # the input is not echoed
    message = "; ".join(f"{where(e['loc']) or 'body'}: {e['msg']}" for e in errors)
    return ServeError(400, message, param=where(errors[0]["loc"]) or None)


# --------------------------------------------------------------------------- prompts
def inert(tok: TextTokenizer, text: str) -> str:
    """External text with its literal special-token strings made inert (the corpus's rule)."""
    return neutralise_special(text, special_tokens(tok.tag))[0]


def chat_ids(tok: TextTokenizer, messages: list[Message]) -> list[int]:
    """The training chat format for a conversation: earlier turns as `<|user|>…<|end|>` / `<|assistant|>…<|end|>`,
    the last user turn via `chat_prompt_ids` (ends with `<|assistant|>`). System/developer messages are dropped,
    as in the exported chat template: the models were never trained with one. Every text is made `inert`, so the
    only chat markers are the ones this function places."""
    turns = [m for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise ServeError(400, "messages must end with a user message (the model answers as the assistant)",
                         param="messages")
    if not turns[-1].text().strip():
        raise ServeError(400, "the last user message is empty", param="messages")
    ids: list[int] = []
    for m in turns[:-1]:
        ids += [tok.user_id if m.role == "user" else tok.assistant_id, *tok.encode(inert(tok, m.text())), tok.end_id]
    return ids + chat_prompt_ids(tok, inert(tok, turns[-1].text()))


def completion_ids(tok: TextTokenizer, prompt: str | list[str]) -> list[list[int]]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not prompts or any(not p.strip() for p in prompts):
        raise ServeError(400, "empty prompt: give a non-empty string (or a list of them)", param="prompt")
    if len(prompts) > MAX_PROMPTS:  # one request is one batch: its size bounds the memory a request can take
        raise ServeError(400, f"{len(prompts)} prompts in one request; at most {MAX_PROMPTS}", param="prompt")
    return [tok.encode(inert(tok, p)) for p in prompts]
