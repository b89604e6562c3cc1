"""GCG jailbreak suffixes (Zou et al. 2023, greedy coordinate gradient) for our own models, plus an
adaptive variant that also attacks SafeBeam.

The attacker controls `suffix_len` tokens placed between a prompt prefix and the text after it (e.g. the
chat template's assistant header), and wants the model to continue with `target_ids` ("Sure, here is").
The model sees `prefix + suffix + after + target` with teacher forcing, and the objective is the mean NLL
of the target tokens, each predicted from everything before it.

Each step of GCG:
1. Write the suffix as a one-hot matrix (suffix_len, vocab) times the embedding matrix and take the
   gradient of the objective w.r.t. the one-hot: a first-order estimate of how much swapping in each
   token at each position would change the objective.
2. Per position, keep the `topk` allowed tokens with the most negative gradient.
3. Sample `candidates` suffixes, each the current one with one uniformly chosen position replaced by a
   uniformly chosen token of that position's top-k; score them exactly in one batched forward.
4. Move to the best candidate (as the reference implementation does, even if it is worse, so the search
   can leave a local minimum) and remember the best suffix seen so far, which is what is returned.

Adaptive objective. SafeBeam drops the continuations whose next-token probability of the harm tag is
highest, so a suffix that only makes the target likely can still be filtered out if the model keeps
putting mass on the tag. The adaptive variant adds `tag_weight * mean_t -log(1 - p(tag | context_t))`
over the target positions: zero when the tag is unlikely and growing without bound as it becomes
certain, so the attack looks for a suffix under which the target is likely AND the tag stays quiet
where SafeBeam looks. The papers only ran the non-adaptive attack.

Runs wherever the model's parameters are; the sampling generator lives on the CPU, so a seed gives the
same suffix on any device up to floating-point differences in the scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from safepretrain.config.evaluation import AttackConfig
from safepretrain.eval.attacks.base import Attacked, prefill_ids
from safepretrain.eval.context import EvalContext
from safepretrain.rundir import CHAT_STAGES
from safepretrain.train.model import Transformer

_DEFAULT = AttackConfig()  # the one copy of GCG's defaults: eval.attack.gcg_*


@dataclass(frozen=True)
class GCGSettings:
    suffix_len: int = _DEFAULT.gcg_suffix_len
    steps: int = _DEFAULT.gcg_steps
    topk: int = _DEFAULT.gcg_topk
    """Tokens kept per suffix position from the gradient ranking."""
    candidates: int = _DEFAULT.gcg_candidates
    """Single-token swaps scored exactly per step (one batched forward)."""
    tag_weight: float = _DEFAULT.gcg_tag_weight
    """Weight of the tag penalty in the adaptive objective."""
    init_token: int | None = None
    """Token the suffix starts as (GCG uses "!": pass the tokenizer's id); None = the first allowed id."""

    @classmethod
    def from_config(cls, a: AttackConfig, init_token: int | None = None) -> GCGSettings:
        return cls(suffix_len=a.gcg_suffix_len, steps=a.gcg_steps, topk=a.gcg_topk, candidates=a.gcg_candidates,
                   tag_weight=a.gcg_tag_weight, init_token=init_token)


@dataclass
class GCGResult:
    suffix_ids: list[int]
    loss: float
    """Mean NLL of the target tokens under the best suffix."""
    tag_logprob: float
    """Mean log p(tag) over the target positions under the best suffix; nan without a tag_id."""
    trace: list[float]
    """Best objective so far after each step (non-increasing)."""
    initial_loss: float
    """Mean target NLL under the initial suffix."""


@dataclass
class _Scores:
    nll: torch.Tensor  # (N,) mean target NLL per sequence
    tag_penalty: torch.Tensor  # (N,) mean -log(1 - p(tag)) over the target positions; zeros without a tag
    tag_logprob: torch.Tensor  # (N,) mean log p(tag) over the target positions; nan without a tag

    def objective(self, tag_weight: float) -> torch.Tensor:
        return self.nll + tag_weight * self.tag_penalty


def _score(logits: torch.Tensor, target: torch.Tensor, first_target_pos: int, tag_id: int | None) -> _Scores:
    """Scores of sequences whose target starts at column `first_target_pos` of the full (unshifted) sequence;
    `logits` (N, T, V) come from the sequence without its last token."""
    n_target = target.shape[0]
    logprobs = F.log_softmax(logits[:, first_target_pos - 1:first_target_pos - 1 + n_target].float(), dim=-1)
    nll = -logprobs.gather(-1, target.expand(logprobs.shape[0], -1).unsqueeze(-1)).squeeze(-1).mean(-1)
    if tag_id is None:
        nan = torch.full_like(nll, math.nan)
        return _Scores(nll, torch.zeros_like(nll), nan)
    # -log(1 - p(tag)) = -logsumexp over the other tokens: stable even when p(tag) rounds to 1
    others = logprobs.clone()
    others[..., tag_id] = -math.inf
    return _Scores(nll, -others.logsumexp(-1).mean(-1), logprobs[..., tag_id].mean(-1))


def gcg_suffix(model: Transformer, prefix_ids: list[int], after_ids: list[int], target_ids: list[int], *,
               settings: GCGSettings, seed: int, allowed_ids: list[int] | torch.Tensor, tag_id: int | None = None,
               adaptive: bool = False) -> GCGResult:
    """Search a `settings.suffix_len`-token suffix of `allowed_ids` that makes `target_ids` likely after
    `prefix_ids + suffix + after_ids`; with `adaptive`, also keep p(tag_id) low along the target.

    Deterministic for a given seed. Needs autograd: raises RuntimeError under `torch.inference_mode()`.
    The model is used in eval mode (its previous mode is restored); its parameters are neither changed
    nor given gradients.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("gcg_suffix needs gradients w.r.t. the suffix's one-hot tokens, which "
                           "torch.inference_mode() forbids; call it outside inference mode (no_grad is fine)")
    if adaptive and tag_id is None:
        raise ValueError("the adaptive attack penalises the tag's probability: pass tag_id")
    if not target_ids:
        raise ValueError("target_ids is empty: nothing to make likely")
    if settings.suffix_len < 1 or settings.steps < 0 or settings.topk < 1 or settings.candidates < 1:
        raise ValueError(f"GCGSettings needs suffix_len, topk, candidates >= 1 and steps >= 0; got {settings}")
    device = next(model.parameters()).device
    embedding_matrix = model.tok_emb.weight.detach()  # (V, D)
    vocab_size = embedding_matrix.shape[0]
    allowed = torch.as_tensor(allowed_ids, dtype=torch.long).unique()
    if allowed.numel() == 0 or allowed.min() < 0 or allowed.max() >= vocab_size:
        raise ValueError(f"allowed_ids must be a non-empty set of ids in [0, {vocab_size})")
    init_token = int(allowed[0]) if settings.init_token is None else settings.init_token
    if init_token not in allowed:
        raise ValueError(f"init_token {init_token} is not in allowed_ids")
    tag_weight = settings.tag_weight if adaptive else 0.0
    topk = min(settings.topk, allowed.numel())
    disallowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
    disallowed[allowed.to(device)] = False

    def ids(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    prefix, after, target = ids(prefix_ids), ids(after_ids), ids(target_ids)
    first_target_pos = len(prefix_ids) + settings.suffix_len + len(after_ids)

    def sequences(suffixes: torch.Tensor) -> torch.Tensor:
        """(N, suffix_len) suffixes → (N, T) model inputs (the last target token is only predicted)."""
        n = suffixes.shape[0]
        return torch.cat([prefix.expand(n, -1), suffixes, after.expand(n, -1), target[:-1].expand(n, -1)], dim=1)

    def scores(suffixes: torch.Tensor) -> _Scores:
        with torch.no_grad():
            logits, _ = model(sequences(suffixes))
        return _score(logits, target, first_target_pos, tag_id)

    def token_gradient(suffix: torch.Tensor) -> torch.Tensor:
        """d objective / d one-hot (suffix_len, V) at the current suffix."""
        one_hot = F.one_hot(suffix, vocab_size).to(embedding_matrix.dtype).requires_grad_(True)
        embeddings = torch.cat([embedding_matrix[prefix], one_hot @ embedding_matrix, embedding_matrix[after],
                                embedding_matrix[target[:-1]]])  # (T, D)
        logits, _ = model(embeddings=embeddings[None])
        objective = _score(logits, target, first_target_pos, tag_id).objective(tag_weight).sum()
        (gradient,) = torch.autograd.grad(objective, one_hot)  # w.r.t. the one-hot only: parameters get no .grad
        return gradient

    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            current = ids([init_token] * settings.suffix_len)
            initial = scores(current[None])
            best, best_objective = current, float(initial.objective(tag_weight))
            trace = []
            for _ in range(settings.steps):
                gradient = token_gradient(current).masked_fill(disallowed, math.inf)
                top_tokens = (-gradient).topk(topk, dim=1).indices.cpu()  # (suffix_len, topk)
                positions = torch.randint(settings.suffix_len, (settings.candidates,), generator=generator)
                choices = torch.randint(topk, (settings.candidates,), generator=generator)
                candidates = current.cpu().repeat(settings.candidates, 1)
                candidates[torch.arange(settings.candidates), positions] = top_tokens[positions, choices]
                candidates = candidates.to(device)
                objectives = scores(candidates).objective(tag_weight)
                step_best = int(objectives.argmin())
                current = candidates[step_best]
                if float(objectives[step_best]) < best_objective:
                    best, best_objective = current, float(objectives[step_best])
                trace.append(best_objective)
            final = scores(best[None])
    finally:
        model.train(was_training)
    return GCGResult(suffix_ids=best.tolist(), loss=float(final.nll[0]), tag_logprob=float(final.tag_logprob[0]),
                     trace=trace, initial_loss=float(initial.nll[0]))


# ------------------------------------------------------------------------------------------------ the attacks
def _gcg(ctx: EvalContext, items: list[dict], stage: str, adaptive: bool) -> list[Attacked]:
    tok = ctx.tok
    settings = GCGSettings.from_config(ctx.cfg.attack, init_token=(tok.encode("!") or [tok.pad_id + 1])[0])
    special = {tok.pad_id, tok.eos_id, tok.end_id, tok.user_id, tok.assistant_id, tok.tag_id}
    allowed = [i for i in range(ctx.model.cfg.vocab_size) if i not in special]
    target = prefill_ids(ctx, stage)
    out = []
    for x in items:
        if stage in CHAT_STAGES:
            before, after = [tok.user_id, *tok.encode(x["prompt"])], [tok.end_id, tok.assistant_id]
        else:
            before, after = tok.encode(f"Question: {x['prompt']}"), tok.encode("\nAnswer:")
        with torch.inference_mode(False), torch.enable_grad():
            found = gcg_suffix(ctx.model, before, after, target, settings=settings, seed=ctx.seed,
                               allowed_ids=allowed, tag_id=tok.tag_id, adaptive=adaptive)
        out.append(Attacked(before + found.suffix_ids + after, info={
            "target_nll_before": round(found.initial_loss, 4), "target_nll_after": round(found.loss, 4),
            "tag_logprob": round(found.tag_logprob, 4)}))
    return out


def gcg(ctx: EvalContext, items: list[dict], stage: str) -> list[Attacked]:
    """`gcg`: a suffix optimised per prompt and model to make the prefill string the answer (not adaptive)."""
    return _gcg(ctx, items, stage, adaptive=False)


def gcg_adaptive(ctx: EvalContext, items: list[dict], stage: str) -> list[Attacked]:
    """`gcg_adaptive`: the same, with p(tag) along the target penalised (against SafeBeam's lookahead)."""
    return _gcg(ctx, items, stage, adaptive=True)
