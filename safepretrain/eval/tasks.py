"""Evaluation tasks: a small protocol and a name → task registry (lm-eval / nanochat style).

Each task declares its version (bump it when prompts, judge or parsing change), whether it decodes
(then it runs once per decoder), and each metric's direction. Metric definitions:

- `asr/asr` ↓ = harmful, relevant compliances / held-out harmful prompts (judge: `eval/judges.py`).
- `asr/harmful_rate` ↓ = harmful outputs, relevant or not / held-out harmful prompts.
- `asr/refusal_rate` ↑ = refusals (incl. SafeBeam short-circuits) / held-out harmful prompts.
- `overrefusal/overrefusal` ↓ = refusals / benign-but-edgy prompts.
- `heldout_loss/loss` ↓ = mean next-token cross-entropy (nats) on held-out score-0 text.
- `probe/auroc_layer_<i>`, `probe/auroc_best` ↑ = cross-validated AUROC of a linear probe separating
  held-out harmful from benign (by default benign-but-edgy) prompts at layer i (0 = embeddings).

Prompts are completion-style for base models and chat for tuned ones (papers §7.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from safepretrain import decoding
from safepretrain.config import EvalConfig
from safepretrain.data.shards import TokenShard
from safepretrain.data.tokenizer import TextTokenizer
from safepretrain.eval.judges import Judge
from safepretrain.eval.metrics import bootstrap_ci, metric_row
from safepretrain.eval.probes import last_token_states, layer_aurocs
from safepretrain.posttrain import chat_prompt_ids, completion_prompt

CHAT_STAGES = {"ift", "benign_ft"}  # "base" models get completion-style prompts


@dataclass
class EvalContext:
    model: torch.nn.Module
    tok: TextTokenizer
    judge: Judge
    cfg: EvalConfig
    seed: int
    harmful: list[dict]  # {"id", "prompt", ...} held-out harmful prompts
    benign_edgy: list[dict]
    benign: list[str]  # benign instructions (probe negatives)
    val: TokenShard
    cache: dict = field(default_factory=dict)


def encode_prompts(ctx: EvalContext, prompts: list[str], stage: str, room: int = 0) -> list[list[int]]:
    """Token ids per prompt, left-truncated so that `room` generated tokens still fit the model."""
    if stage in CHAT_STAGES:
        ids = [chat_prompt_ids(ctx.tok, p) for p in prompts]
    else:
        ids = [ctx.tok.encode(completion_prompt(p)) for p in prompts]
    keep = ctx.model.cfg.max_seq_len - room
    return [x[-keep:] for x in ids]


def generate(ctx: EvalContext, prompts: list[str], stage: str, decoder: str) -> list[decoding.Generation]:
    ids = encode_prompts(ctx, prompts, stage, room=ctx.cfg.max_new_tokens)
    stop = {ctx.tok.eos_id, ctx.tok.end_id}
    c = ctx.cfg
    if decoder == "topk":
        return decoding.generate_topk(ctx.model, ids, max_new_tokens=c.max_new_tokens, top_k=c.topk.k,
                                      temperature=c.topk.temperature, stop_ids=stop, pad_id=ctx.tok.pad_id,
                                      seed=ctx.seed, batch_size=c.batch_size, tag_id=ctx.tok.tag_id)
    sb = c.safebeam
    return decoding.safe_beam_search(ctx.model, ids, tag_id=ctx.tok.tag_id, beam_size=sb.beam_size,
                                     candidates_per_beam=sb.candidates_per_beam, drop_fraction=sb.drop_fraction,
                                     max_new_tokens=c.max_new_tokens, stop_ids=stop, pad_id=ctx.tok.pad_id,
                                     short_circuit=sb.short_circuit, batch_size=max(1, c.batch_size // 2))


class Task(Protocol):
    name: str
    version: int
    uses_decoder: bool
    higher_is_better: dict[str, bool]

    def run(self, ctx: EvalContext, stage: str, decoder: str) -> tuple[list[dict], list[dict]]:
        """(metric rows, per-example samples)."""
        ...


def _judged(ctx: EvalContext, items: list[dict], stage: str, decoder: str) -> tuple[list, list[dict]]:
    gens = generate(ctx, [x["prompt"] for x in items], stage, decoder)
    texts = [ctx.tok.decode(g.tokens) for g in gens]
    verdicts = ctx.judge.judge([x["prompt"] for x in items], texts, [g.short_circuited for g in gens])
    samples = [{"id": x["id"], "prompt": x["prompt"], "response": t, "refused": v.refused, "harm_score": v.harm_score,
                "relevance": round(v.relevance, 4), "harmful": v.harmful, "success": v.success,
                "short_circuited": g.short_circuited, "tag_emitted": g.tag_emitted, "stopped": g.stopped}
               for x, t, v, g in zip(items, texts, verdicts, gens)]
    return verdicts, samples


class AttackSuccess:
    name, version, uses_decoder = "asr", 1, True
    higher_is_better = {"asr": False, "harmful_rate": False, "refusal_rate": True}

    def run(self, ctx: EvalContext, stage: str, decoder: str) -> tuple[list[dict], list[dict]]:
        verdicts, samples = _judged(ctx, ctx.harmful, stage, decoder)
        rows = []
        for metric, attr in (("asr", "success"), ("harmful_rate", "harmful"), ("refusal_rate", "refused")):
            values = np.array([getattr(v, attr) for v in verdicts], float)
            rows.append(metric_row(metric, *bootstrap_ci(values, ctx.cfg.bootstrap, ctx.seed), len(values)))
        return rows, samples


class OverRefusal:
    name, version, uses_decoder = "overrefusal", 1, True
    higher_is_better = {"overrefusal": False}

    def run(self, ctx: EvalContext, stage: str, decoder: str) -> tuple[list[dict], list[dict]]:
        verdicts, samples = _judged(ctx, ctx.benign_edgy, stage, decoder)
        refused = np.array([v.refused for v in verdicts], float)
        return [metric_row("overrefusal", *bootstrap_ci(refused, ctx.cfg.bootstrap, ctx.seed), len(refused))], samples


class HeldoutLoss:
    name, version, uses_decoder = "heldout_loss", 1, False
    higher_is_better = {"loss": False}

    @torch.inference_mode()
    def run(self, ctx: EvalContext, stage: str, decoder: str) -> tuple[list[dict], list[dict]]:
        seq = min(128, ctx.model.cfg.max_seq_len - 1)
        n_windows = max(1, min(ctx.cfg.heldout_tokens, len(ctx.val)) // seq)
        device = next(ctx.model.parameters()).device
        losses = []
        for i in range(0, n_windows, 16):
            rows = [ctx.val.window(j * seq, seq + 1) for j in range(i, min(n_windows, i + 16))]
            data = torch.from_numpy(np.stack(rows)).to(device)
            logits, _ = ctx.model(data[:, :-1])
            ce = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), data[:, 1:], reduction="none")
            losses.extend(ce.mean(dim=1).tolist())
        row = metric_row("loss", *bootstrap_ci(np.array(losses), ctx.cfg.bootstrap, ctx.seed), len(losses) * seq)
        return [row], []


class LinearProbe:
    name, version, uses_decoder = "probe", 1, False
    higher_is_better = {"auroc_best": True}

    def run(self, ctx: EvalContext, stage: str, decoder: str) -> tuple[list[dict], list[dict]]:
        negatives = ([x["prompt"] for x in ctx.benign_edgy] if ctx.cfg.probe.negatives == "benign_edgy"
                     else ctx.benign)
        k = min(ctx.cfg.probe.n_per_class, len(ctx.harmful), len(negatives))
        prompts = [x["prompt"] for x in ctx.harmful[:k]] + negatives[:k]
        labels = np.array([1] * k + [0] * k)
        hidden = last_token_states(ctx.model, encode_prompts(ctx, prompts, stage), ctx.tok.pad_id)
        per_layer = layer_aurocs(hidden, labels, ctx.cfg.probe, ctx.cfg.bootstrap, ctx.seed)
        rows = [metric_row(f"auroc_layer_{i}", *v, 2 * k) for i, v in enumerate(per_layer)]
        best = max(range(len(per_layer)), key=lambda i: per_layer[i][0])
        rows.append({**metric_row("auroc_best", *per_layer[best], 2 * k), "layer": best})
        return rows, []


TASKS: dict[str, Task] = {t.name: t for t in (AttackSuccess(), OverRefusal(), HeldoutLoss(), LinearProbe())}
