"""A compact Llama-style decoder (SmolLM2 family shapes, papers §4), nanoGPT-sized.

RMSNorm → grouped-query attention with RoPE → RMSNorm → SwiGLU MLP, pre-norm residual blocks, a
final norm and an output head tied to the token embedding. No biases, no dropout.

Three entry points share the same blocks:
- `forward(tokens, targets)`: training and scoring; causal, no cache.
- `hidden_states(tokens, attention_mask)`: residual stream after every block (linear probes).
- `new_cache` / `prefill` / `decode` / `decode_candidates`: KV-cached inference for `eval/decoders/`.
  Prompts are left-padded, so every row's last prompt token sits in the same column; RoPE positions come
  from the mask (cumsum − 1), so padding shifts nothing and a padded row computes what the prompt alone
  would. `decode_candidates` scores N alternative next tokens of a row in one forward over that row's
  cache (SafeBeam's lookahead); `KVCache.reorder(index, candidate)` appends the chosen one.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from safepretrain.config import ModelConfig
from safepretrain.train.memory import count_params


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in fp32 even under bf16 autocast: the mean of squares loses precision in bf16
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (max_len, head_dim/2): angle = position · theta^(-2i/head_dim)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+hd/2}) (the Llama/HF "rotate half" layout). x: (B, H, T, hd);
    cos, sin: broadcastable to (B, H, T, hd/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)  # keep q, k, v in one dtype under autocast


class KVCache:
    """Preallocated keys/values for all layers, plus what left padding and beams need per row.

    kv: (rows, 2, n_layers, n_kv_heads, slots, head_dim), keys at [:, 0] and values at [:, 1], rows
    first so that a row subset is one contiguous block. `length` slots are filled and shared by all
    rows (every row appends one token per decode); `key_mask` (rows, slots) is False at padding
    slots; `pos` (rows,) is the RoPE position of each row's next token. `slots` = max_len +
    candidates − 1: `decode_candidates` writes its N ≤ candidates alternatives after the last token
    (`pending` of them), where `reorder(index, candidate)` finds the one each row appends.
    """

    def __init__(self, n_layers: int, rows: int, n_kv_heads: int, max_len: int, head_dim: int, *,
                 device: torch.device, dtype: torch.dtype, candidates: int = 1):
        slots = max_len + candidates - 1
        self.kv = torch.zeros(rows, 2, n_layers, n_kv_heads, slots, head_dim, device=device, dtype=dtype)
        self.key_mask = torch.zeros(rows, slots, dtype=torch.bool, device=device)
        self.pos = torch.zeros(rows, dtype=torch.long, device=device)
        self.length = 0
        self.max_len = max_len  # tokens a row may hold; the extra slots only ever hold pending candidates
        self.pending = 0  # candidates written by the last decode_candidates, not yet appended
        self._active = self.kv  # full-capacity buffer behind self.kv
        self._spare: torch.Tensor | None = None  # reorder's destination, reused across calls

    @property
    def rows(self) -> int:
        return self.kv.shape[0]

    @property
    def slots(self) -> int:
        return self.kv.shape[4]

    def keys_values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views (rows, n_kv_heads, max_len, head_dim) of one layer's keys and values."""
        return self.kv[:, 0, layer], self.kv[:, 1, layer]

    def reorder(self, index: torch.Tensor, candidate: torch.Tensor | None = None) -> None:
        """Rows become `self[index]` (select, repeat or permute); beam search calls this every step.

        With `candidate` (same shape as index), new row r also appends candidate[r] of the last
        `decode_candidates` on its source row: that candidate's keys/values move from its pending
        slot to the first free one, and the row is one token longer. Without it, pending candidates
        are discarded.

        The gather writes into a second buffer kept from the previous call and the two then swap
        roles: a fresh tens-of-MB buffer every step costs more in page faults than the copy itself
        (on a 2-core VM, SafeBeam ran 2.3x faster end to end with the reused buffer). Only the
        filled slots are copied: the others are written before anything reads them."""
        index = index.to(self.kv.device)
        if candidate is not None:  # checked before anything moves, so a bad call leaves the cache as it was
            candidate = candidate.to(self.kv.device)
            if candidate.shape != index.shape or int(candidate.min()) < 0 or int(candidate.max()) >= self.pending:
                raise ValueError(f"candidate must match index in shape and point at one of the {self.pending} "
                                 "candidates pending (decode_candidates writes them)")
        n, L = index.numel(), self.length
        if self._spare is None or self._spare.shape[0] < n:
            self._spare = self.kv.new_empty(n, *self.kv.shape[1:])
        out = self._spare[:n]
        torch.index_select(self.kv[:, :, :, :, :L], 0, index, out=out[:, :, :, :, :L])  # a strided `out` is fine
        if candidate is not None:  # advanced indices on dims 0 and 4 → (n, 2, n_layers, n_kv_heads, head_dim)
            out[:, :, :, :, L] = self.kv[index, :, :, :, L + candidate]
        self._active, self._spare = self._spare, self._active
        self.kv = out
        self.key_mask = self.key_mask.index_select(0, index)
        self.pos = self.pos.index_select(0, index)
        if candidate is not None:
            self.key_mask[:, L] = True
            self.length += 1
            self.pos += 1
        self.pending = 0


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, mask=None, cache: KVCache | None = None, layer: int = 0):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            L = cache.length  # the model advances it once all layers have written
            ck, cv = cache.keys_values(layer)
            ck[:, :, L:L + T] = k
            cv[:, :, L:L + T] = v
            k = ck[:, :, :L + T].to(q.dtype)  # (B, Hkv, L+T, hd)
            v = cv[:, :, :L + T].to(q.dtype)
        # no mask → plain causal attention (the fused path used in training)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           enable_gqa=self.n_kv_heads != self.n_heads)  # (B, H, T, hd)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)  # gate
        self.w3 = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)  # up
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)  # down

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask=None, cache=None, layer=0):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


def flops_per_token(cfg: ModelConfig, seq_len: int, vocab_size: int | None = None) -> float:
    """Training FLOPs per token (forward + backward) of a `Transformer(cfg)` on sequences of `seq_len`: 6N for the
    matmuls (the tied head is a real matmul, so N includes it) plus 12·L·D·T for attention scores (PaLM appendix
    B / nanoGPT). N is counted from the shape (`memory.count_params`, equal to `num_params()`), so no model is
    built; `vocab_size` is used when `cfg.vocab_size` is unset (a study config's tokenizer size). The one copy
    of this count: the `--dry-run` time estimate and the train benchmark's MFU call it."""
    vocab = cfg.vocab_size or vocab_size
    if vocab is None:
        raise ValueError("flops_per_token needs a vocabulary size: set ModelConfig.vocab_size or pass vocab_size")
    n = count_params(cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_hidden, vocab)
    return 6 * n + 12 * cfg.n_layers * cfg.d_model * seq_len


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is None: set it from the tokenizer "
                             "(cfg.model_copy(update={'vocab_size': tok.vocab_size})) before building the model")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied input/output embeddings
        cos, sin = rope_tables(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
        # not persistent: derived from the config, so checkpoints hold weights only
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        # training-only switch (set by train()): recompute each block in backward instead of storing activations
        self.activation_checkpointing = False
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2 scaled init: each block adds two residual writes
            for w in (block.attn.wo.weight, block.mlp.w2.weight):
                nn.init.normal_(w, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    @property
    def max_seq_len(self) -> int:
        return self.cfg.max_seq_len

    @property
    def device(self) -> torch.device:
        return self.tok_emb.weight.device

    # ------------------------------------------------------------------ training / scoring
    def forward(self, tokens: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, *, return_logits: bool = False,
                embeddings: torch.Tensor | None = None):
        """tokens (B, T) → (logits (B, T, V) or None, mean next-token CE or None).

        Loss averages over positions where `loss_mask` (B, T) is true and `targets` != -100. With
        targets, logits are returned only if `return_logits` (they are the largest activation).
        `embeddings` (B, T, D), given instead of `tokens`, replaces `tok_emb(tokens)` (nothing scales
        or offsets the embedding afterwards), so gradients w.r.t. soft/one-hot inputs can be taken (GCG).
        """
        if (tokens is None) == (embeddings is None):
            raise ValueError("pass exactly one of tokens (B, T) or embeddings (B, T, d_model)")
        T = tokens.shape[1] if tokens is not None else embeddings.shape[1]
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.cos[:T], self.sin[:T]  # (T, hd/2), broadcast over batch and heads
        x = self.tok_emb(tokens) if tokens is not None else embeddings  # (B, T, D)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:  # non-reentrant: works with autocast, DDP and FSDP2, and with inputs lacking grads
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x = block(x, cos, sin)
        logits = self.head(self.norm(x))  # (B, T, V)
        if targets is None:
            return logits, None
        ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                             reduction="mean" if loss_mask is None else "none")
        if loss_mask is None:
            loss = ce
        else:  # ignored targets already contribute 0 to ce; leave them out of the denominator too
            weight = (loss_mask.bool() & (targets != -100)).flatten().float()
            loss = (ce * weight).sum() / weight.sum().clamp(min=1.0)
        return (logits if return_logits else None), loss

    @staticmethod
    def _padded_mask(attention_mask: torch.Tensor, past: int = 0, past_mask: torch.Tensor | None = None):
        """Boolean SDPA mask (B, 1, T, past+T): causal, no padded keys, every query sees itself.

        The self term only matters for padding queries (all their keys are padding): without it their
        softmax row is all -inf and SDPA returns NaN there, and a NaN value times a zero attention
        weight is still NaN, so it would poison the real tokens in the next layer.
        """
        B, T = attention_mask.shape
        keys = attention_mask if past_mask is None else torch.cat([past_mask, attention_mask], dim=1)  # (B, S)
        qi = torch.arange(T, device=keys.device)[:, None] + past  # absolute slot of each query
        kj = torch.arange(past + T, device=keys.device)[None, :]
        mask = (kj <= qi)[None] & keys[:, None, :]  # (B, T, S)
        mask = mask | (kj == qi)[None]
        return mask[:, None]

    def _rope_at(self, positions: torch.Tensor):
        """cos, sin gathered at per-row positions (B, T) → (B, 1, T, hd/2)."""
        if int(positions.max()) >= self.cfg.max_seq_len:
            raise ValueError(f"position {int(positions.max())} exceeds max_seq_len={self.cfg.max_seq_len}")
        return self.cos[positions][:, None], self.sin[positions][:, None]

    def hidden_states(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Residual stream (B, T, D) after the embedding and after each block (n_layers + 1 tensors,
        no final norm). `tokens` are left-padded with `attention_mask` (B, T) False at padding."""
        mask = attention_mask.bool()
        cos, sin = self._rope_at((mask.long().cumsum(1) - 1).clamp(min=0))
        attn_mask = self._padded_mask(mask)
        x = self.tok_emb(tokens)
        states = [x]
        for block in self.blocks:
            x = block(x, cos, sin, attn_mask)
            states.append(x)
        return states

    # ------------------------------------------------------------------ KV-cached inference
    def new_cache(self, rows: int, max_len: int, candidates: int = 1) -> KVCache:
        """A cache for `rows` sequences of at most `max_len` tokens, with room for `decode_candidates` of up to
        `candidates` alternatives after them."""
        if max_len > self.cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds max_seq_len={self.cfg.max_seq_len}")
        if candidates < 1:
            raise ValueError(f"candidates={candidates} must be at least 1")
        c = self.cfg
        return KVCache(c.n_layers, rows, c.n_kv_heads, max_len, c.d_model // c.n_heads,
                       device=self.device, dtype=self.tok_emb.weight.dtype, candidates=candidates)

    @torch.no_grad()  # inference only: the cache must not hold (and grow) an autograd graph
    def _step(self, tokens: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append tokens (B, T) to the cache; logits (B, V) at the last column."""
        B, T = tokens.shape
        L = cache.length
        if L + T > cache.max_len:
            raise ValueError(f"KV cache full: {L} + {T} tokens > max_len={cache.max_len}")
        cache.pending = 0  # this step overwrites the slots pending candidates sat in
        mask = attention_mask.bool()
        positions = cache.pos[:, None] + (mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        cos, sin = self._rope_at(positions)
        attn_mask = self._padded_mask(mask, L, cache.key_mask[:, :L])
        cache.key_mask[:, L:L + T] = mask
        x = self.tok_emb(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn_mask, cache, i)
        cache.length += T
        cache.pos += mask.sum(1)
        return self.head(self.norm(x[:, -1]))  # (B, V)

    def prefill(self, tokens: torch.Tensor, attention_mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run left-padded prompts (B, T) into an empty cache; next-token logits (B, V)."""
        return self._step(tokens, attention_mask, cache)

    def decode(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Append one token per row (B,); next-token logits (B, V)."""
        return self._step(tokens[:, None], torch.ones_like(tokens, dtype=torch.bool)[:, None], cache)

    @torch.no_grad()
    def decode_candidates(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Score N alternative next tokens per row, tokens (B, N) → logits (B, N, V) for the token after each.

        Each candidate is a query at the row's next position that attends to the row's cache and to itself
        only (the tree attention of speculative decoding's verification, one level deep), so candidate j
        gets exactly what `decode` of that token alone would give, while the row's cache is read once for
        all N. The cache does not grow: the candidates' keys/values wait in the slots after its last token
        until `cache.reorder(index, candidate)` appends one per new row (the next step overwrites them).
        """
        B, N = tokens.shape
        L = cache.length
        if L + 1 > cache.max_len or L + N > cache.slots:
            raise ValueError(f"KV cache has no room for {N} candidates after {L} tokens (max_len={cache.max_len}, "
                             f"slots={cache.slots}): create it with new_cache(..., candidates={N})")
        cos, sin = self._rope_at(cache.pos[:, None].expand(B, N))  # all N at the row's next position
        own = torch.eye(N, dtype=torch.bool, device=tokens.device).expand(B, N, N)
        attn_mask = torch.cat([cache.key_mask[:, None, :L].expand(B, N, L), own], dim=2)[:, None]  # (B,1,N,L+N)
        x = self.tok_emb(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn_mask, cache, i)  # writes the candidates' k/v at slots L..L+N-1
        cache.pending = N
        return self.head(self.norm(x))  # (B, N, V)

    # ------------------------------------------------------------------ accounting
    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameters (the tied embedding/head matrix counted once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if exclude_embeddings else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token of this model (see the module-level `flops_per_token`)."""
        return flops_per_token(self.cfg, seq_len)
