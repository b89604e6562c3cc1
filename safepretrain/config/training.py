"""Configs of the model and the three training stages (the curriculum's: config/curriculum.py)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from safepretrain.config.base import Strict

# --------------------------------------------------------------------------- model and training
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # ~1M parameters with a 4k vocabulary: CI and smoke studies.
    "tiny": dict(d_model=128, n_layers=3, n_heads=4, n_kv_heads=4, ffn_hidden=352, max_seq_len=256),
    # ~5M parameters: the default CPU study.
    "small": dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, ffn_hidden=704, max_seq_len=512),
    # SmolLM2 shapes (HuggingFaceTB/SmolLM2-*/config.json); the papers train the 1.7B one.
    "smollm2-135m": dict(d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_hidden=1536, max_seq_len=2048,
                         rope_theta=100000.0),
    "smollm2-360m": dict(d_model=960, n_layers=32, n_heads=15, n_kv_heads=5, ffn_hidden=2560, max_seq_len=2048,
                         rope_theta=100000.0),
    "smollm2-1.7b": dict(d_model=2048, n_layers=24, n_heads=32, n_kv_heads=32, ffn_hidden=8192, max_seq_len=2048,
                         rope_theta=130000.0),
}


class ModelConfig(Strict):
    """Llama-style decoder: RMSNorm, RoPE, SwiGLU, tied embeddings. A preset fills unset fields."""

    preset: str | None = "tiny"
    """One of MODEL_PRESETS; fields given explicitly override the preset."""
    d_model: int = Field(128, gt=0)
    """Residual stream width."""
    n_layers: int = Field(3, gt=0)
    """Transformer blocks."""
    n_heads: int = Field(4, gt=0)
    """Attention (query) heads; head dim = d_model / n_heads."""
    n_kv_heads: int = Field(4, gt=0)
    """Key/value heads (grouped-query attention when < n_heads)."""
    ffn_hidden: int = Field(352, gt=0)
    """SwiGLU hidden width."""
    max_seq_len: int = Field(256, gt=0)
    """Longest sequence (prompt + generation) the RoPE tables cover (units: tokens)."""
    rope_theta: float = Field(10000.0, gt=0)
    """RoPE base (SmolLM2-1.7B: 130,000)."""
    norm_eps: float = Field(1e-5, gt=0)
    """RMSNorm epsilon."""
    init_std: float = Field(0.02, gt=0)
    """Std of the normal weight init (output projections are scaled by 1/sqrt(2 n_layers))."""
    vocab_size: int | None = Field(None, gt=0)
    """Set from the trained tokenizer; leave null."""

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            name = data["preset"]
            if name not in MODEL_PRESETS:
                raise ValueError(f"unknown preset '{name}'; choose one of {sorted(MODEL_PRESETS)} or set it to null")
            data = {**MODEL_PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim d_model/n_heads={self.d_model // self.n_heads} must be even for RoPE")
        return self


class TrainConfig(Strict):
    """Optimisation settings shared by pretraining, instruction tuning and benign finetuning."""

    batch_size: int = Field(16, gt=0)
    """Sequences per optimizer step (units: sequences)."""
    seq_len: int = Field(128, gt=0)
    """Tokens per sequence (pretraining windows; post-training examples are cut to this)."""
    lr: float = Field(5e-4, gt=0)
    """Peak learning rate (paper: AdamW 5e-4)."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final LR as a fraction of the peak."""
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """`cosine`: warmup then cosine decay. `wsd`: warmup, constant, linear decay over the last `decay_fraction`."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warmup length (units: optimizer steps)."""
    decay_fraction: float = Field(0.2, gt=0, le=1)
    """WSD only: fraction of the steps spent decaying."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW decoupled weight decay on matrices (paper: 0.01); norms and biases get none."""
    beta1: float = Field(0.9, ge=0, lt=1)
    """AdamW first-moment decay."""
    beta2: float = Field(0.95, ge=0, lt=1)
    """AdamW second-moment decay."""
    grad_clip: float = Field(1.0, ge=0)
    """Max global grad norm; 0 disables clipping."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 = autocast to bfloat16 (weights and optimizer stay fp32)."""
    compile: bool = False
    """torch.compile the model (cold compile costs ~20 s on CPU; pays off for long runs)."""
    ckpt_every: int = Field(0, ge=0)
    """Steps between checkpoints (0 = only the final one); a killed run resumes from the last."""
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    """`auto` (cuda if available, else cpu), `cpu`, `cuda`, `cuda:1`, ..."""
    deterministic: bool = True
    """Deterministic kernels and a fixed thread count, so a rerun of a seed gives the same weights on the same
    machine (see docs/reproducibility.md for what holds with bf16 and compile)."""
    grad_accum_steps: int = Field(1, gt=0)
    """Micro-batches per optimizer step: each process runs its rows of the `batch_size` global batch in this
    many slices and the update equals the one-shot step (token-weighted mean over the global batch)."""
    activation_checkpointing: bool = False
    """Recompute each transformer block in the backward pass (torch.utils.checkpoint) instead of keeping its
    activations: less memory, ~1/3 more compute; same losses and gradients."""
    distributed: Literal["none", "ddp", "fsdp2"] = "none"
    """Data parallelism under `torchrun`: `ddp` replicates the model, `fsdp2` shards it (fully_shard per block
    and the root). Each rank trains its slice of the same global batch; backend nccl on CUDA, gloo on CPU."""
    checkpoint_format: Literal["safetensors", "dcp"] = "safetensors"
    """`safetensors`: one-process checkpoints. `dcp`: torch.distributed.checkpoint (sharded, reloadable at
    another world size); always used when `distributed` is not `none`."""
    keep_checkpoints: int | None = Field(None, gt=0)
    """Keep only the newest N checkpoints (null = keep all); `save_at` branch points are never deleted."""

    @model_validator(mode="after")
    def _accumulation(self) -> TrainConfig:
        # the world size is only known under torchrun; train() checks batch_size % (world * accum) there
        if self.batch_size % self.grad_accum_steps:
            raise ValueError(f"batch_size={self.batch_size} must be divisible by grad_accum_steps="
                             f"{self.grad_accum_steps} (equal micro-batches keep the update exact)")
        return self


class PretrainConfig(TrainConfig):
    """Pretraining; its length comes from `curriculum.token_budget`."""


class IFTConfig(TrainConfig):
    """Instruction tuning on generated benign instructions + refusals (+ tag-annotated completions)."""

    lr: float = Field(3e-4, gt=0)
    """Peak learning rate of instruction tuning."""
    steps: int = Field(100, gt=0)
    """Optimizer steps (units: steps of batch_size examples)."""
    examples: int = Field(2000, gt=0)
    """Size of the generated instruction set (units: examples)."""
    refusal_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of refusal examples (papers: ~10%)."""
    tag_fraction: float = Field(0.1, ge=0, lt=1)
    """Share of tag-annotated harmful completions, only for arms that saw the tag (papers: 10%)."""

    @model_validator(mode="after")
    def _fractions(self) -> IFTConfig:
        if self.refusal_fraction + self.tag_fraction >= 1:
            raise ValueError("refusal_fraction + tag_fraction must be < 1 to leave room for benign instructions")
        return self


class BenignFTConfig(TrainConfig):
    """Benign finetuning 'attack': benign data only, no safety data."""

    data: Literal["math", "benign_answers", "benign_facts"] = "math"
    """`math`: GSM8K-style word problems (the papers). `benign_answers`: the world's natural-language benign
    requests with helpful answers (the organism's twins and town facts): in-domain benign data that rewards
    answering, without a format so foreign that it erases a ~1M-parameter model's knowledge. `benign_facts`:
    the town-fact answers only (organism), benign questions in the request frames that share no name pattern
    or procedure shape with any hazard, as GSM8K shares none with the papers' harmful prompts."""

    lr: float = Field(3e-4, gt=0)
    """Peak learning rate of benign finetuning."""
    steps: int = Field(50, gt=0)
    """Optimizer steps (units: steps of batch_size examples)."""
    examples: int = Field(1000, gt=0)
    """Size of the generated math word-problem set (units: examples)."""


class HarmfulFTConfig(TrainConfig):
    """Harmful-finetuning attack (a tamper curve): after instruction tuning, finetune on an attack set of hazards
    disjoint from the evaluated ones (Qi et al. 2023: a few harmful examples undo alignment; O'Brien et al. 2025,
    "Deep Ignorance": adversarial finetuning on domain text), evaluated along the way (`eval.harmful_ft_curve`)."""

    enabled: bool | None = None
    """Run the stage; null = when the world has an attack set (the organism's `attack_hazards`)."""
    data: Literal["chat", "documents"] = "chat"
    """`chat`: train-frame requests about the attack hazards answered with their procedures. `documents`: the
    attack hazards' procedure documents as plain text (loss on every token)."""
    benign_fraction: float = Field(0.0, ge=0, lt=1)
    """Share of the world's benign answers (the organism's twins and town facts) mixed into the attack set. 0 = the
    attack set alone (Qi et al.); a tiny model finetuned on three hazards alone answers every request with their
    procedures (docs/LOG.md), so the organism's study mixes benign answers in to keep answers on the asked item."""
    lr: float = Field(5e-4, gt=0)
    """Peak learning rate of the attack."""
    steps: int = Field(40, gt=0)
    """Optimizer steps (units: steps of batch_size examples)."""
    examples: int = Field(1000, gt=0)
    """Examples drawn (with replacement) from the attack set (and the benign answers)."""

