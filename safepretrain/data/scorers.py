"""Harm scorers (`data.scorer.kind`): name → builder, each scoring text 0-5 (papers: a max-ensemble of scorers).

Two sorts, told apart by the `rollout` option:
- in-process chunk scorers run inside the `ScoreHarm` step, once per datatrove task:
  `build(scorer_cfg, scorer_dir) -> scorer` with `.name` and `.score_chunks(chunks) -> (scores, embeddings)`
  (scoring.py). Option `fit(texts, labels, scorer_cfg, seed) -> (scorer, metrics)`: the scorer is fitted on the
  world's labels first (`embedding`); the data stage fits it once into `scoring/scorer/`.
- rollout scorers (`rollout=True`) run after it as a datatrove InferenceRunner pass: `build(cfg) -> Rollout` (llm.py).

Adding a scorer is a file plus a `SCORERS.register` line. `check(cfg)`: what a config that selects it lacks;
`input_problems(cfg)`: what is missing on disk (checked before work, after `--dry-run`'s plan).
"""

from __future__ import annotations

from pathlib import Path

from safepretrain.config import ScorerConfig, StudyConfig
from safepretrain.config.data import LLMConfig
from safepretrain.data.hf_scorer import HFClassifierScorer
from safepretrain.data.llm import RubricRollout
from safepretrain.data.scoring import EmbeddingScorer
from safepretrain.registry import Registry


def _embedding(sc: ScorerConfig, scorer_dir: Path) -> EmbeddingScorer:
    return EmbeddingScorer.load(Path(scorer_dir))


def _hf_classifier(sc: ScorerConfig, scorer_dir: Path) -> HFClassifierScorer:
    return HFClassifierScorer(sc.hf_model, sc.hf_trust_remote_code, sc.hf_max_tokens, sc.batch_size, sc.device)


def _hf_needs(cfg: StudyConfig) -> list[str]:
    if cfg.data.scorer.hf_model:
        return []
    return ["data.scorer.hf_model: scorer.kind hf_classifier needs scorer.hf_model: the folder of a local "
            "6-label sequence-classification model"]


def _hf_inputs(cfg: StudyConfig) -> list[str]:
    sc = cfg.data.scorer
    if (Path(sc.hf_model) / "config.json").is_file():
        return []
    return [f"data.scorer.hf_model: {sc.hf_model} is not a model folder (no config.json); download a 6-label "
            "classifier there first, e.g. locuslab/safety-classifier_gte-large-en-v1.5"]


def _rubric(cfg: StudyConfig) -> RubricRollout:
    prefill = cfg.data.llm.server in ("vllm", "sglang")  # vLLM / SGLang continue the paper's forced JSON prefix
    return RubricRollout(cfg.data.llm, cfg.data.seed, cfg.data.scorer.chunk_words, prefill)


def _rubric_needs(cfg: StudyConfig) -> list[str]:
    llm = cfg.data.llm
    if llm.server != "endpoint" or llm.endpoint_url:
        return []
    return ["data.llm.endpoint_url is required with data.llm.server=endpoint (used by scorer.kind llm_rubric), "
            "e.g. http://host:8000/v1"]


SCORERS: Registry = Registry("scorer")
SCORERS.register("embedding", _embedding, settings=ScorerConfig, section="scorer", fit=EmbeddingScorer.fit)
SCORERS.register("hf_classifier", _hf_classifier, settings=ScorerConfig, section="scorer", check=_hf_needs,
                 input_problems=_hf_inputs)
SCORERS.register("llm_rubric", _rubric, settings=LLMConfig, section="llm", check=_rubric_needs, rollout=True)


def in_process(kinds: list[str]) -> list[str]:
    """The in-process chunk scorers among `kinds` (those `ScoreHarm` runs)."""
    return [k for k in kinds if not SCORERS[k].options.get("rollout")]


def rollouts(kinds: list[str]) -> list[str]:
    """The rollout scorers among `kinds` (InferenceRunner passes after `ScoreHarm`)."""
    return [k for k in kinds if SCORERS[k].options.get("rollout")]
