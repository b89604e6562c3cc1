"""Judges of generated responses: a name → builder registry (`eval.judges`); the first listed is primary.

Every judge has `name` and `judge(prompts, responses, short_circuited, kind) -> list[Verdict]`, where `kind` is
"harmful" (attack success) or "benign" (over-refusal). Adding a judge is one file and one line in `JUDGES`.

- `default`: the study's own judge: the exact judge on the organism (ground truth), else `classifier`;
- `classifier`: refusal by structure + the response-harm classifier (eval/judges.py), fitted on the world;
- `keyword`: the GCG paper's refusal-string match (eval/keyword_judge.py);
- `llm`: an OpenAI-compatible endpoint with the HarmBench question (eval/llm_judge.py);
- `hf`: a local HarmBench-style causal-LM classifier (eval/hf_judge.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from safepretrain.config import StudyConfig
from safepretrain.world import World


class ContextFreeJudge:
    """A judge whose verdict does not depend on the prompt's kind (the exact and classifier judges), named."""

    def __init__(self, judge, name: str):
        self.inner, self.name = judge, name
        self.tag = getattr(judge, "tag", None)

    def judge(self, prompts, responses, short_circuited, kind: str = "harmful"):
        return self.inner.judge(prompts, responses, short_circuited)

    def __getattr__(self, item):  # the inner judge's extras (e.g. the exact judge's helpfulness answers)
        if item == "inner":  # not set yet (copying): never recurse
            raise AttributeError(item)
        return getattr(self.inner, item)


def _default(cfg: StudyConfig, world: World, run_dir: Path):
    from safepretrain.eval.runner import load_or_fit_judge

    judge = load_or_fit_judge(cfg, world, run_dir / "judge")
    return ContextFreeJudge(judge, "exact" if world.organism is not None else "classifier")


def _classifier(cfg: StudyConfig, world: World, run_dir: Path):
    if world.organism is not None:
        raise ValueError("eval.judges: `classifier` needs a world with human harm labels (the registry-text pack); "
                         "the organism's judge is `default` (exact)")
    return _default(cfg, world, run_dir)


def _keyword(cfg: StudyConfig, world: World, run_dir: Path):
    from safepretrain.eval.judges.keyword import KeywordJudge

    return KeywordJudge(cfg.data.interventions.tag)


def _llm(cfg: StudyConfig, world: World, run_dir: Path):
    from safepretrain.eval.judges.llm import LLMJudge

    c = cfg.eval.llm_judge
    return LLMJudge(c, cfg.data.interventions.tag, os.environ.get(c.api_key_env))


def _hf(cfg: StudyConfig, world: World, run_dir: Path):
    from safepretrain.eval.judges.hf import HFJudge

    return HFJudge(cfg.eval.hf_judge, cfg.data.interventions.tag)


JUDGES: dict[str, Callable] = {"default": _default, "classifier": _classifier, "keyword": _keyword, "llm": _llm,
                               "hf": _hf}


def build_judges(cfg: StudyConfig, world: World, run_dir: Path) -> dict:
    """Resolved name → judge for every judge in `eval.judges`, primary first; `default` and `classifier` on a
    pack world are one judge."""
    out: dict = {}
    for name in cfg.eval.judges:
        judge = JUDGES[name](cfg, world, run_dir)
        out.setdefault(judge.name, judge)
    return out
