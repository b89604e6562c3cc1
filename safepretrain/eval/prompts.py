"""The evaluation prompt sets of a study, sampled once (seeded) and shared by every arm, seed and stage.

- `harmful`: held-out harmful prompts of the world (disjoint from every train-side prompt, tested);
- `benign_edgy`: benign prompts on sensitive topics (over-refusal);
- `benign`: generated benign instructions (the easy probe contrast);
- `pairs`: content-matched harmful/benign prompt pairs in identical frames (eval/contrast.py): the
  likelihood metrics and the probes compare the two sides, so frame, length and punctuation cannot
  explain a difference;
- `neutral`: plain factual questions in the same frames (harm specificity).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from safepretrain.config import StudyConfig
from safepretrain.world import World


@dataclass(frozen=True)
class EvalPrompts:
    harmful: list[dict]
    benign_edgy: list[dict]
    benign: list[str]
    pairs: list
    neutral: list[str]


def eval_prompts(cfg: StudyConfig, world: World, benign_docs: list[str]) -> EvalPrompts:
    from safepretrain.eval.contrast import contrast_pairs, neutral_prompts
    from safepretrain.world.generators import benign_instructions

    rng = random.Random(cfg.data.seed)
    harmful = rng.sample(world.harmful_eval_prompts, min(cfg.eval.n_harmful, len(world.harmful_eval_prompts)))
    edgy = rng.sample(world.benign_edgy_prompts, min(cfg.eval.n_benign_edgy, len(world.benign_edgy_prompts)))
    benign = [x["prompt"] for x in benign_instructions(benign_docs, cfg.eval.probe.n_per_class, cfg.data.seed + 7)]
    return EvalPrompts(harmful, edgy, benign, contrast_pairs(cfg.eval.n_pairs, cfg.data.seed),
                       neutral_prompts(max(8, cfg.eval.n_pairs // 2), cfg.data.seed))
