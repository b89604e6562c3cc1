"""Shared pieces of the config models: strict base model, the error type, the stream names."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Streams are the token sources the data stage produces and the curriculum mixes.
STREAMS = {
    "safe": "score-0 documents, untouched",
    "unsafe": "documents with score >= 1, untouched (only the raw arm reads them)",
    "rephrased": "score 1-3 documents rewritten as safe educational text",
    "refusal": "score 4-5 documents turned into refusal dialogues",
    "moral_ed": "refusal dialogues rewritten as third-person moral-education articles",
    "tagged": "unsafe documents with the harmfulness tag injected before words",
}


# Special tokens of every tokenizer (besides the harmfulness tag): end of text, padding, chat markers.
EOS, PAD, USER, ASSISTANT, END = "<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>"
RESERVED_TOKENS = (EOS, PAD, USER, ASSISTANT, END)


class ConfigError(ValueError):
    """A config that cannot run. The message names each bad field and the fix."""


class Strict(BaseModel):
    # inf and nan are never a meaningful setting (pretrain.lr=inf once ran to the end with nan weights)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)


