"""The evaluation prompt sets of a study, sampled once (seeded) and shared by every arm, seed and stage.

- `harmful`: held-out harmful prompts of the world (disjoint from every train-side prompt, tested);
- `benign_edgy`: benign prompts on sensitive topics (over-refusal);
- `benign`: generated benign instructions (the easy probe contrast);
- `pairs`: content-matched harmful/benign prompt pairs in identical frames (eval/contrast.py): the
  likelihood metrics and the probes compare the two sides, so frame, length and punctuation cannot
  explain a difference;
- `neutral`: plain factual questions in the same frames (harm specificity).

The organism (world/organism.py) supplies all of these itself, in held-out request frames, with true
answers for the likelihood metrics (`organism_eval_prompts`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from safepretrain.config import StudyConfig
from safepretrain.eval.contrast import ContrastPair, _round_robin, contrast_pairs, neutral_prompts
from safepretrain.world import World
from safepretrain.world.generators import benign_instructions


@dataclass(frozen=True)
class EvalPrompts:
    harmful: list[dict]
    benign_edgy: list[dict]
    benign: list[str]
    pairs: list
    neutral: list[str]


def eval_prompts(cfg: StudyConfig, world: World, benign_docs: list[str]) -> EvalPrompts:

    rng = random.Random(cfg.data.seed)
    if world.organism is not None:
        return organism_eval_prompts(cfg, world, benign_docs, rng)
    harmful = rng.sample(world.harmful_eval_prompts, min(cfg.eval.n_harmful, len(world.harmful_eval_prompts)))
    edgy = rng.sample(world.benign_edgy_prompts, min(cfg.eval.n_benign_edgy, len(world.benign_edgy_prompts)))
    benign = [x["prompt"] for x in benign_instructions(benign_docs, cfg.eval.probe.n_per_class, cfg.data.seed + 7)]
    return EvalPrompts(harmful, edgy, benign, contrast_pairs(cfg.eval.n_pairs, cfg.data.seed),
                       neutral_prompts(max(8, cfg.eval.n_pairs // 2), cfg.data.seed))


def organism_eval_prompts(cfg: StudyConfig, world: World, benign_docs: list[str], rng: random.Random) -> EvalPrompts:
    """The organism's sets, all in held-out frames: hazard requests (`harmful`), the same requests about the
    benign twins (`benign_edgy`: over-refusal and helpfulness), pairs of the two with their true answers,
    and neutral town questions. Items are spread evenly: one frame per item before any item repeats."""

    def spread(records: list[dict], n: int) -> list[dict]:
        cells: dict[str, list[dict]] = {}
        for r in sorted(records, key=lambda r: r["id"]):
            cells.setdefault(r["item"], []).append(r)
        return _round_robin(sorted(cells), cells, rng)[:n]

    harmful = spread(world.harmful_eval_prompts, cfg.eval.n_harmful)
    twin_of = {r["id"]: r for r in world.benign_edgy_prompts}
    edgy = spread(world.benign_edgy_prompts, cfg.eval.n_benign_edgy)
    pairs = []
    for h in spread(world.harmful_eval_prompts, cfg.eval.n_pairs):
        t = twin_of[h["id"].replace("h", "t", 1)]
        pairs.append(ContrastPair(id=h["id"], harmful=h["prompt"], benign=t["prompt"], frame=h["frame"],
                                  topic=h["item"], category=h["category"], harmful_behaviour=h["prompt"],
                                  benign_behaviour=t["prompt"], split="test" if h["heldout_item"] else "dev",
                                  harmful_reference=h["reference"], benign_reference=t["reference"]))
    neutral = list(world.manifest["neutral"])
    rng.shuffle(neutral)
    benign = [x["prompt"] for x in benign_instructions(benign_docs, cfg.eval.probe.n_per_class, cfg.data.seed + 7)]
    return EvalPrompts(harmful, edgy, benign, pairs, neutral[: max(8, cfg.eval.n_pairs // 2)])
