"""Per-GPU memory estimate of a pretraining config: will it fit before we queue it on a cluster?

Pure arithmetic on the config, no torch. Counted, in bytes:
- parameters, gradients and AdamW's two moments, all fp32 (4 + 4 + 8 bytes per parameter): `precision:
  bf16` is autocast, so weights and optimizer stay fp32. FSDP2 shards all three over the world size and
  gathers one block's weights at a time (two with prefetch); DDP keeps full copies plus its gradient buckets.
- activations of one micro-batch (`batch_size / (world * grad_accum_steps)` rows of `seq_len` tokens) saved
  for the backward pass, per token and layer (bf16 = 2 bytes, the fp32 residual stream = 4 bytes):
      residual inputs of both RMSNorms   2 x 4D     norm outputs (matmul inputs)       2 x 2D
      q, k, v (SDPA inputs)              2(D+2K)    q, k upcast to fp32 inside RoPE    4(D+K)
      attention output (wo input)        2D         SwiGLU: w1, w3, silu and product   4 x 2F
  = 18D + 8K + 8F bytes (D = d_model, K = kv width, F = ffn_hidden); SDPA's fused kernels keep no T x T
  scores. With activation checkpointing only each block's input (4D) stays, plus one block being recomputed.
  The head's logits (bf16) and their fp32 copy for the loss add 6V bytes per token.
It omits the CUDA context, allocator fragmentation and communication buffers: keep ~10-20% headroom.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    params: int
    grads: int
    optimizer: int
    activations: int
    n_params: int
    micro_batch: int  # rows per rank per micro-batch

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations


def count_params(d_model: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_hidden: int, vocab: int) -> int:
    """Parameters of model.Transformer (tied embedding/head counted once)."""
    kv = n_kv_heads * (d_model // n_heads)
    per_layer = 2 * d_model + 2 * d_model * d_model + 2 * d_model * kv + 3 * d_model * ffn_hidden
    return vocab * d_model + n_layers * per_layer + d_model


def estimate_memory(*, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_hidden: int, vocab: int,
                    batch_size: int, seq_len: int, grad_accum_steps: int = 1, world_size: int = 1,
                    distributed: str = "none", activation_checkpointing: bool = False,
                    precision: str = "bf16") -> MemoryEstimate:
    """Peak-ish bytes per GPU (see the module docstring for what is counted)."""
    n = count_params(d_model, n_layers, n_heads, n_kv_heads, ffn_hidden, vocab)
    world = world_size if distributed != "none" else 1
    micro = batch_size // (world * grad_accum_steps)
    tokens = micro * seq_len
    kv = n_kv_heads * (d_model // n_heads)
    act = 2 if precision == "bf16" else 4  # bytes of a matmul output; fp32 roughly doubles the bf16 count
    block_act = tokens * (18 * d_model + 8 * kv + 8 * ffn_hidden) * act // 2
    if activation_checkpointing:
        stored = n_layers * tokens * 4 * d_model + block_act
    else:
        stored = n_layers * block_act
    logits = tokens * vocab * (act + 4)
    block_params = (n - vocab * d_model - d_model) // n_layers
    if distributed == "fsdp2":
        shard = -(-n // world)  # ceil: the last rank's shard may be padded
        params = 4 * shard + 2 * 4 * block_params  # own shard + two gathered blocks (current, prefetched)
        grads, optimizer = 4 * shard, 8 * shard
    else:
        params, grads, optimizer = 4 * n, 4 * n, 8 * n
        if distributed == "ddp":
            grads += 4 * n  # DDP's all-reduce buckets are a second copy of the gradients
    return MemoryEstimate(params, grads, optimizer, stored + logits, n, micro)


def memory_plan(cfg, world_size: int = 8) -> list[str]:
    """`--dry-run` lines for the pretraining stage of a StudyConfig at `world_size` GPUs."""
    m, p = cfg.model, cfg.pretrain
    vocab = m.vocab_size or cfg.tokenizer.vocab_size
    world = world_size if p.distributed != "none" else 1
    if p.batch_size % (world * p.grad_accum_steps):
        return [f"memory: batch_size={p.batch_size} is not divisible by {world} GPUs x grad_accum_steps="
                f"{p.grad_accum_steps}; pick sizes that divide it"]
    est = estimate_memory(d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads, n_kv_heads=m.n_kv_heads,
                          ffn_hidden=m.ffn_hidden, vocab=vocab, batch_size=p.batch_size, seq_len=p.seq_len,
                          grad_accum_steps=p.grad_accum_steps, world_size=world, distributed=p.distributed,
                          activation_checkpointing=p.activation_checkpointing, precision=p.precision)
    g = lambda b: f"{b / GIB:.1f} GiB"  # noqa: E731
    return [f"memory per GPU ({p.distributed}, {world} GPU(s), {est.n_params / 1e6:,.0f}M params, micro-batch "
            f"{est.micro_batch} x {p.seq_len} tokens, activation checkpointing "
            f"{'on' if p.activation_checkpointing else 'off'}): ~{g(est.total)} = params {g(est.params)} + "
            f"grads {g(est.grads)} + AdamW {g(est.optimizer)} + activations {g(est.activations)}"]


def estimate_decode_memory(*, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_hidden: int,
                           vocab: int, prompts: int, prompt_len: int, max_new_tokens: int, rows_per_prompt: int,
                           dtype_bytes: int = 4) -> int:
    """Bytes one KV-cached generation call (`eval.decoders`) may hold beyond the weights: an upper bound that
    `serve` checks before it runs a request. All `prompts` are counted as one batch (a decoder may split them),
    each holding `rows_per_prompt` cache rows (1 for sampling; beam_size x candidates_per_beam for the beam
    decoders, whose caches are reordered into a second buffer every step, so counted twice). With R rows, P
    prompts, T = prompt_len, S = T + max_new_tokens, the weights' dtype b bytes, H heads of width h, K kv heads:
        KV cache        R x S x (2 x n_layers x K x h x b + 1 mask byte)       (x 2 when reordered)
        one decode step R x (2 x S x H x h x b   keys/values of one layer cast and expanded to H heads
                             + 2 x S x H x 4     fp32 scores and their softmax
                             + V x (b + 12)      logits, their fp32 copy, log-softmax, p(tag)
                             + 3 x F x b)        the SwiGLU of one layer
        prefill         P x T x (6 x D x b + 3 x F x b + 3 x H x S x 4)   one layer; the masked attention's
                        scores, mask and softmax are T x S per head (no fused kernel with a padding mask)."""
    head_dim = d_model // n_heads
    rows = prompts * rows_per_prompt
    seq = prompt_len + max_new_tokens
    cache = rows * seq * (2 * n_layers * n_kv_heads * head_dim * dtype_bytes + 1)
    if rows_per_prompt > 1:
        cache *= 2
    step = rows * (2 * seq * n_heads * head_dim * dtype_bytes + 2 * seq * n_heads * 4 + vocab * (dtype_bytes + 12)
                   + 3 * ffn_hidden * dtype_bytes)
    prefill = prompts * prompt_len * (6 * d_model * dtype_bytes + 3 * ffn_hidden * dtype_bytes
                                      + 3 * n_heads * seq * 4)
    return cache + step + prefill
