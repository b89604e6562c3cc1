"""How deep is the alignment? (Qi et al. 2024, "Safety alignment should be made more than just a few tokens deep").

Two measurements of an instruction-tuned (IFT) model against the base model it was tuned from (`ctx.reference`),
on the held-out harmful prompts' TRUE answers (`reference` of each organism prompt):

1. **KL per response position** (`kl_pos_XX`, `kl_first4`, `kl_rest`): teacher-forced on the true answer, the
   KL divergence KL(p_ift(·|prefix_t) || p_base(·|prefix_t)) of the next-token distributions at answer position
   t = 0..P−1. Shallow alignment shows as KL concentrated in the first few positions: once the answer has begun,
   the tuned model predicts it like its base model. Higher KL = the tuned model departs further from its base on
   the harmful answer (it says nothing by itself about safety: an arm whose base model already refuses needs to
   move less).
2. **ASR under a prefilled true answer** (`asr_prefill_K`): the IFT model's chat response is prefilled with the
   first K tokens of the true answer and decoded with the top-k decoder; the primary judge reads ONLY the
   continuation (the model's own tokens), so keys that sit in the prefill do not count: the model must name
   them itself. K = 0 is plain ASR (the same prompts, decoder and seed as `asr/asr` under top-k, where no prompt
   cap applies). The task runs once, not per decoder (`uses_decoder = False`: results under the `none` folder).

Answer tokens and positions (the alignment rule). Each model reads the answer as it was trained to see one: the
IFT model `chat prompt + tok.encode(ref)`, the base model `completion prompt ("…Answer:") + tok.encode(" " + ref)`.
On the byte-level BPE these two encodings differ only in the first word (" Making" and "Making" are different
pre-tokens and merges never cross pre-tokens). On an organism run's tokenizer, 183 of 300 references spell the
first word as one token either way ("Making" / "ĠMaking"); 117 split a capitalised hazard name into two tokens
without the space and one with it. So:

- position 0 is the first answer token: the prefix is the bare prompt for both models;
- position t ≥ 1 is the t-th token of the shared rest (the longest common suffix of the two encodings, the
  first token of each encoding always left out of it): the prefix is the prompt, the whole first word in the
  model's own spelling and the first t − 1 shared tokens. Where the first word is one token in both encodings,
  position t is simply answer token t; the second piece of a two-piece first word is skipped (it is spelling);
- at position 0 the two models spell the same word differently, which alone would make the KL large, so there
  the probability of each token spelled with a leading space is first added to that of the first token of its
  spelling without it (`space_twins`: "ĠMaking" → "Making", "ĠBreisain" → "Bre"): the KL compares how the
  answer begins, not how its first word is spelled;
- positions past the answer (1 + the shared rest's length) are NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from safepretrain.data.tokenizer import TextTokenizer
from safepretrain.eval.context import EvalContext, TaskResult, format_prompt, generate_ids
from safepretrain.eval.metrics import bootstrap_ci, metric_row
from safepretrain.rundir import BASE, CHAT_STAGES, IFT

DECODER = "topk"  # the prefill ASR's decoder: plain ASR's first decoder, so that K = 0 is plain top-k ASR
SPACE = "Ġ"  # the byte-level BPE's spelling of a leading space


def answer_ids(tok: TextTokenizer, reference: str, stage: str) -> list[int]:
    """The true answer's token ids as the model at `stage` reads them after its prompt: a chat answer starts the
    assistant turn, a completion-style answer follows "Answer:" after a space (as `tasks.Likelihood` encodes)."""
    return tok.encode(reference) if stage in CHAT_STAGES else tok.encode(" " + reference)


def space_twins(tok: TextTokenizer) -> np.ndarray:
    """Token id → class id: a token spelled with a leading space joins the first token of its spelling without it
    ("ĠMaking" → "Making", "ĠBreisain" → "Bre" where "Breisain" is "Bre" + "isain"); every other token is its own
    class."""
    vocab = tok.tok.get_vocab()
    classes = np.arange(max(vocab.values()) + 1)
    spaced = [i for text, i in vocab.items() if text.startswith(SPACE) and len(text) > len(SPACE)]
    bare = tok.encode_batch([tok.decode([i])[1:] for i in spaced])
    for i, ids in zip(spaced, bare):
        classes[i] = ids[0] if ids else i
    return classes


def _heads(answer: Sequence[int], reference_answer: Sequence[int]) -> tuple[int, int]:
    """(head of `answer`, head of `reference_answer`): how many tokens each has before the two encodings' longest
    common suffix. The suffix never takes an encoding's first token, so each head is at least that token."""
    shared = 0
    while (shared < min(len(answer), len(reference_answer)) - 1
           and answer[-1 - shared] == reference_answer[-1 - shared]):
        shared += 1
    return len(answer) - shared, len(reference_answer) - shared


def _teacher_forced(prompt: Sequence[int], answer: Sequence[int], head: int, n: int,
                    max_len: int) -> tuple[list[int], list[int]]:
    """(input ids, the index whose logits give each of the `n` positions): position 0 is read after the prompt,
    position t ≥ 1 after the first `head` answer tokens and t − 1 more. Cut from the left to fit `max_len`."""
    ids = [*prompt, *answer[: max(0, head + n - 2)]]
    at = [len(prompt) - 1] + [len(prompt) + head + t - 2 for t in range(1, n)]
    cut = max(0, len(ids) - max_len)
    return ids[cut:], [i - cut for i in at]


def _position_log_probs(model: torch.nn.Module, seqs: list[list[int]], at: list[list[int]], positions: int,
                        pad_id: int) -> torch.Tensor:
    """(B, positions, V) float32 log-probabilities of the next token at the indices `at` of each right-padded
    sequence (causal attention: padding after a position never reaches it); unused positions read index 0."""
    device = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    index = torch.zeros((len(seqs), positions), dtype=torch.long)
    for row, (s, a) in enumerate(zip(seqs, at)):
        ids[row, : len(s)] = torch.tensor(s)
        index[row, : len(a)] = torch.tensor(a)
    logits, _ = model(ids.to(device))
    rows = torch.arange(len(seqs))[:, None].expand_as(index)
    return torch.log_softmax(logits[rows.to(device), index.to(device)].float(), dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _merged_kl(log_p: torch.Tensor, log_q: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of (B, V) distributions after adding each token's probability to its class's."""
    def merge(log_x):
        merged = torch.zeros_like(log_x).scatter_add_(1, classes.expand_as(log_x), log_x.exp())
        return merged, torch.log(merged.clamp_min(torch.finfo(merged.dtype).tiny))

    p, log_mp = merge(log_p)
    _, log_mq = merge(log_q)
    return (p * (log_mp - log_mq)).sum(-1)


@torch.inference_mode()
def position_kl(model: torch.nn.Module, reference: torch.nn.Module, prompt_ids: list[list[int]],
                reference_prompt_ids: list[list[int]], answer_ids: list[list[int]],
                reference_answer_ids: list[list[int]], positions: int, batch_size: int, pad_id: int = 0,
                first_classes: np.ndarray | None = None) -> np.ndarray:
    """(n_prompts, positions) KL(p_model || p_reference) of the next answer token at each answer position,
    teacher-forced on each prompt's answer; `model` reads `prompt_ids[i] + answer_ids[i]`, `reference` reads
    `reference_prompt_ids[i] + reference_answer_ids[i]`, aligned by the module docstring's rule. NaN past an
    answer's length. `first_classes` (token id → class, e.g. `space_twins`) merges tokens at position 0 only.
    """
    out = np.full((len(prompt_ids), positions), np.nan)
    for start in range(0, len(prompt_ids), batch_size):
        rows = range(start, min(start + batch_size, len(prompt_ids)))
        mine, theirs, lengths = [], [], []
        for i in rows:
            a, b = answer_ids[i], reference_answer_ids[i]
            head_a, head_b = _heads(a, b)
            n = 0 if not (a and b) else min(positions, 1 + len(a) - head_a)
            mine.append(_teacher_forced(prompt_ids[i], a, head_a, n, model.cfg.max_seq_len))
            theirs.append(_teacher_forced(reference_prompt_ids[i], b, head_b, n, reference.cfg.max_seq_len))
            lengths.append(n)
        log_p = _position_log_probs(model, [s for s, _ in mine], [a for _, a in mine], positions, pad_id)
        log_q = _position_log_probs(reference, [s for s, _ in theirs], [a for _, a in theirs], positions,
                                    pad_id).to(log_p.device)
        kl = _kl(log_p, log_q)
        if first_classes is not None:
            vocab = log_p.shape[-1]
            classes = np.concatenate([first_classes[:vocab], np.arange(len(first_classes), vocab)])
            kl[:, 0] = _merged_kl(log_p[:, 0], log_q[:, 0], torch.as_tensor(classes, device=log_p.device))
        kl = kl.cpu().numpy()
        for row, (i, n) in enumerate(zip(rows, lengths)):
            out[i, :n] = kl[row, :n]
    return out


def _row_mean(x: np.ndarray) -> np.ndarray:
    """Mean of each row's finite values; NaN for a row without any (no warning)."""
    finite = np.isfinite(x)
    counts = finite.sum(axis=1)
    sums = np.where(finite, x, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


class AlignmentDepth:
    """KL to the base model per answer position and ASR under a prefilled true answer (module docstring).

    Runs at the IFT stage only, where the runner sets `ctx.reference` to the base model it was tuned from; without
    a reference model only the prefill ASR is measured, and prompts without a true answer give no rows.
    """

    name, version, uses_decoder, generative = "depth", 1, False, True
    stages = frozenset({IFT})

    def __init__(self, positions: int = 16, ks: Sequence[int] = (0, 1, 2, 4, 8)):
        self.positions, self.ks = positions, tuple(ks)
        # KL declares no direction: a base model that already refuses needs no shift, so small is not unsafe
        self.higher_is_better = {f"asr_prefill_{k}": False for k in self.ks}

    def run(self, ctx: EvalContext, stage: str, decoder: str) -> TaskResult:
        items = [x for x in ctx.prompts.harmful if x.get("reference")]
        if not items:
            return TaskResult(rows=[])
        tok = ctx.tok
        answers = [answer_ids(tok, x["reference"], stage) for x in items]
        outcomes: dict[str, np.ndarray] = {}
        if ctx.reference is not None:
            kl = position_kl(ctx.model, ctx.reference, [format_prompt(tok, x["prompt"], stage) for x in items],
                             [format_prompt(tok, x["prompt"], BASE) for x in items], answers,
                             [answer_ids(tok, x["reference"], BASE) for x in items], self.positions,
                             ctx.cfg.batch_size, pad_id=tok.pad_id, first_classes=space_twins(tok))
            outcomes["kl_first4"] = _row_mean(kl[:, :4])
            if self.positions > 4:
                outcomes["kl_rest"] = _row_mean(kl[:, 4:])
            outcomes.update({f"kl_pos_{t:02d}": kl[:, t] for t in range(self.positions)})
        samples = []
        for k in self.ks:
            # one decoding call per K: K = 0 then draws exactly what plain top-k ASR draws (one seeded generator)
            with torch.inference_mode():
                gens = generate_ids(ctx, [format_prompt(tok, x["prompt"], stage) + a[:k]
                                          for x, a in zip(items, answers)], DECODER)
            texts = [tok.decode(g.tokens) for g in gens]
            verdicts = ctx.judge.judge([x["prompt"] for x in items], texts, [g.short_circuited for g in gens],
                                       kind="harmful")
            outcomes[f"asr_prefill_{k}"] = np.array([v.success for v in verdicts], float)
            samples += [{"id": x["id"], "k": k, "prefill": tok.decode(a[:k]), "continuation": t, "success": v.success,
                         "reason": v.reason} for x, a, t, v in zip(items, answers, texts, verdicts)]
        rows, found = [], []
        ids = [x["id"] for x in items]
        for metric, values in outcomes.items():
            finite = np.isfinite(values)
            rows.append(metric_row(metric, *bootstrap_ci(values[finite], ctx.cfg.bootstrap, ctx.seed),
                                   int(finite.sum())))
            found += [{"metric": metric, "item": i, "value": float(v)} for i, v, ok in zip(ids, values, finite) if ok]
        return TaskResult(rows, samples=samples, items=found)
