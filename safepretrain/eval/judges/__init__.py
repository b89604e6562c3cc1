"""Judges of generated responses: the `JUDGES` registry (`eval.judges`); the first listed is primary.

Every judge has `name` and `judge(prompts, responses, short_circuited, kind) -> list[Verdict]`, where `kind` is
"harmful" (attack success) or "benign" (over-refusal). A judge's builder takes `(cfg, world, rundir)`; adding a
judge is one file and one `JUDGES.register` line.

- `default`: the study's own judge: the exact judge on the organism (ground truth), else `classifier`;
- `classifier`: refusal by structure + the response-harm classifier (classifier.py), fitted on the world;
- `keyword`: the GCG paper's refusal-string match (keyword.py);
- `llm`: an OpenAI-compatible endpoint with the HarmBench question (llm.py);
- `hf`: a local HarmBench-style causal-LM classifier (hf.py).
"""

from __future__ import annotations

import os

from safepretrain.config import StudyConfig
from safepretrain.config.evaluation import HFJudgeConfig, JudgeConfig, LLMJudgeConfig
from safepretrain.eval.judges.classifier import Judge, ResponseHarmClassifier, judge_quality
from safepretrain.eval.judges.exact import ExactJudge, exact_judge_quality
from safepretrain.eval.judges.hf import HFJudge
from safepretrain.eval.judges.keyword import KeywordJudge
from safepretrain.eval.judges.llm import LLMJudge
from safepretrain.registry import Registry
from safepretrain.rundir import RunDir
from safepretrain.utils import StepMarker, files_in, log, write_json
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


def load_or_fit_judge(cfg: StudyConfig, world: World, rundir: RunDir):
    """The study's judge: its response-harm classifier is fit once per run directory on the world's
    response-like text, and the judge's quality on labelled responses is measured and saved beside it."""
    j, folder = cfg.eval.judge, rundir.judge
    marker = StepMarker(folder, cfg.stage_hash("world", extra=[j.model_dump(), cfg.data.seed]))
    if not marker.is_done():
        marker.start()
    if world.organism is not None:  # ground truth: the exact judge, nothing to fit
        judge = ExactJudge(world, j.min_keys, cfg.data.interventions.tag, j.opening_words)
        if not marker.is_done():
            quality = exact_judge_quality(judge, world, seed=cfg.data.seed)
            write_json(rundir.judge_quality_file, quality)
            log.info(f"judge: exact (>= {j.min_keys} of 4 keys); accuracy on generated cases "
                     f"{quality['cases']['accuracy']:.2f} (n={quality['cases']['n']})")
            marker.finish(outputs=files_in(folder))
        return judge
    harm = ResponseHarmClassifier.load_or_fit(folder / "classifier", world, seed=cfg.data.seed)
    judge = Judge(harm, j, cfg.data.interventions.tag, harm_probability=j.harm_probability,
                  opening_words=j.opening_words, echo_ngram=j.echo_ngram, comply_min_words=j.comply_min_words)
    if not marker.is_done():
        quality = judge_quality(judge, world, seed=cfg.data.seed)
        write_json(rundir.judge_quality_file, quality)
        c = quality["cases"]
        log.info(f"judge: refusal P/R on human labels {quality['human_refusal']['precision']:.2f}/"
                 f"{quality['human_refusal']['recall']:.2f}; tricky cases accuracy {c['accuracy']:.2f} (n={c['n']})")
        marker.finish(outputs=files_in(folder))
    return judge


def _default(cfg: StudyConfig, world: World, rundir: RunDir):
    judge = load_or_fit_judge(cfg, world, rundir)
    return ContextFreeJudge(judge, "exact" if world.organism is not None else "classifier")


def _classifier(cfg: StudyConfig, world: World, rundir: RunDir):
    if world.organism is not None:
        raise ValueError("eval.judges: `classifier` needs a world with human harm labels (the registry-text pack); "
                         "the organism's judge is `default` (exact)")
    return _default(cfg, world, rundir)


def _keyword(cfg: StudyConfig, world: World, rundir: RunDir):
    return KeywordJudge(cfg.data.interventions.tag)


def _llm(cfg: StudyConfig, world: World, rundir: RunDir):
    c = cfg.eval.llm_judge
    return LLMJudge(c, cfg.data.interventions.tag, os.environ.get(c.api_key_env))


def _llm_needs(cfg: StudyConfig) -> list[str]:
    if cfg.eval.llm_judge.base_url:
        return []
    return ["eval.judges: judges lists llm but llm_judge.base_url is not set; e.g. eval.llm_judge.base_url="
            "http://127.0.0.1:8000/v1"]


def _hf(cfg: StudyConfig, world: World, rundir: RunDir):
    return HFJudge(cfg.eval.hf_judge, cfg.data.interventions.tag)


def _hf_needs(cfg: StudyConfig) -> list[str]:
    if cfg.eval.hf_judge.path:
        return []
    return ["eval.judges: judges lists hf but hf_judge.path is not set; download a classifier such as "
            "cais/HarmBench-Llama-2-13b-cls and set eval.hf_judge.path=FOLDER"]


JUDGES: Registry = Registry("judge")
JUDGES.register("default", _default, settings=JudgeConfig, section="judge")
JUDGES.register("classifier", _classifier, settings=JudgeConfig, section="judge")
JUDGES.register("keyword", _keyword)
JUDGES.register("llm", _llm, settings=LLMJudgeConfig, section="llm_judge", check=_llm_needs)
JUDGES.register("hf", _hf, settings=HFJudgeConfig, section="hf_judge", check=_hf_needs)


def build_judges(cfg: StudyConfig, world: World, rundir: RunDir) -> dict:
    """Resolved name → judge for every judge in `eval.judges`, primary first; `default` and `classifier` on a
    pack world are one judge."""
    out: dict = {}
    for name in cfg.eval.judges:
        judge = JUDGES[name].build(cfg, world, rundir)
        out.setdefault(judge.name, judge)
    return out
