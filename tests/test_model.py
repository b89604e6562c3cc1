"""The Transformer: shapes, loss, KV-cached inference, left padding, hidden states, bf16.

    python -m pytest tests/test_model.py -q
"""

import pytest
import torch
import torch.nn.functional as F

from safepretrain.config import ModelConfig
from safepretrain.train.model import Transformer

V = 61


def tiny_cfg(**kw) -> ModelConfig:
    # n_kv_heads < n_heads so grouped-query attention is exercised everywhere
    base = dict(preset=None, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=64, max_seq_len=64,
                vocab_size=V)
    return ModelConfig(**{**base, **kw})


@pytest.fixture
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_cfg()).eval()


def left_pad(prompts, pad_id=0):
    width = max(map(len, prompts))
    tokens = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    return tokens, mask


def test_vocab_size_must_be_set():
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer(tiny_cfg(vocab_size=None))


def test_shapes_params_and_tied_head(model):
    x = torch.randint(0, V, (3, 10))
    logits, loss = model(x)
    assert logits.shape == (3, 10, V) and loss is None
    logits, loss = model(x, targets=x)
    assert logits is None and loss.shape == ()
    logits, _ = model(x, targets=x, return_logits=True)
    assert logits.shape == (3, 10, V)
    assert model.head.weight is model.tok_emb.weight
    assert model.num_params() - model.num_params(exclude_embeddings=True) == V * 32
    assert model.flops_per_token(16) == 6 * model.num_params() + 12 * 2 * 32 * 16
    assert set(model.state_dict()) == {n for n, _ in model.named_parameters()} | {"head.weight"}  # no RoPE tables
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_scaled_init_of_output_projections():
    torch.manual_seed(0)
    m = Transformer(tiny_cfg(d_model=64, ffn_hidden=256, n_layers=8, n_heads=4, n_kv_heads=4))
    assert abs(m.blocks[0].attn.wq.weight.std().item() - 0.02) < 0.002
    assert abs(m.blocks[0].mlp.w2.weight.std().item() - 0.02 / 4) < 0.0005  # 0.02 / sqrt(2 * 8)


def test_overfits_one_batch():
    torch.manual_seed(0)
    m = Transformer(tiny_cfg()).train()
    x = torch.randint(0, V, (4, 16))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        _, loss = m(x[:, :-1], targets=x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_loss_mask_and_ignored_targets(model):
    x = torch.randint(0, V, (2, 12))
    y = torch.randint(0, V, (2, 12))
    y[0, 3] = -100
    mask = torch.rand(2, 12) > 0.5
    mask[0, 3] = True  # masked in but ignored by target: must still be left out
    logits, loss = model(x, targets=y, loss_mask=mask, return_logits=True)
    keep = mask & (y != -100)
    expected = F.cross_entropy(logits[keep], y[keep])
    assert torch.allclose(loss, expected, atol=1e-6)
    _, plain = model(x, targets=y)
    assert torch.allclose(plain, F.cross_entropy(logits[y != -100], y[y != -100]), atol=1e-6)
    _, float_mask = model(x, targets=y, loss_mask=mask.float())
    assert torch.allclose(float_mask, loss)


def test_cached_decode_matches_full_forward(model):
    x = torch.randint(1, V, (3, 14))
    full, _ = model(x)
    cache = model.new_cache(3, 14)
    logits = model.prefill(x[:, :5], torch.ones(3, 5, dtype=torch.bool), cache)
    assert torch.allclose(logits, full[:, 4], atol=1e-4)
    for t in range(5, 14):
        logits = model.decode(x[:, t], cache)
        assert torch.allclose(logits, full[:, t], atol=1e-4)
    with pytest.raises(ValueError, match="full"):
        model.decode(x[:, 0], cache)


def test_left_padded_batch_matches_prompts_alone(model):
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15], [20]]
    follow = torch.tensor([[30, 31, 32], [40, 41, 42], [50, 51, 52]])  # 3 decoded tokens per row
    tokens, mask = left_pad(prompts)
    cache = model.new_cache(3, tokens.shape[1] + 3)
    batched = [model.prefill(tokens, mask, cache)] + [model.decode(follow[:, t], cache) for t in range(3)]
    for r, p in enumerate(prompts):
        alone, _ = model(torch.tensor([p + follow[r].tolist()]))
        for t, got in enumerate(batched):
            assert torch.allclose(got[r], alone[0, len(p) - 1 + t], atol=1e-4)


def test_cache_reorder_follows_rows(model):
    x = torch.randint(1, V, (2, 6))
    cache = model.new_cache(2, 9)
    model.prefill(x, torch.ones(2, 6, dtype=torch.bool), cache)
    cache.reorder(torch.tensor([1, 1, 0, 0]))  # expand and permute (as beam search does)
    model.decode(torch.tensor([3, 4, 5, 6]), cache)
    cache.reorder(torch.tensor([2, 1]))  # shrink: the swapped-in spare buffer is larger than needed
    logits = model.decode(torch.tensor([7, 8]), cache)
    cache.reorder(torch.tensor([0, 1, 1]))  # grow again past the spare's capacity
    again = model.decode(torch.tensor([9, 10, 11]), cache)
    seqs = torch.cat([x[[0, 1]], torch.tensor([[5, 7], [4, 8]])], dim=1)
    full, _ = model(seqs)
    assert torch.allclose(logits, full[:, -1], atol=1e-4)
    full, _ = model(torch.cat([seqs[[0, 1, 1]], torch.tensor([[9], [10], [11]])], dim=1))
    assert torch.allclose(again, full[:, -1], atol=1e-4)


def test_hidden_states_layers_and_padding_invariance(model):
    prompts = [[5, 6, 7, 8], [9, 10]]
    tokens, mask = left_pad(prompts)
    states = model.hidden_states(tokens, mask)
    assert len(states) == model.cfg.n_layers + 1
    assert all(s.shape == (2, 4, 32) for s in states)
    assert all(torch.isfinite(s).all() for s in states)  # padding queries must not produce NaN
    for r, p in enumerate(prompts):
        alone = model.hidden_states(torch.tensor([p]), torch.ones(1, len(p), dtype=torch.bool))
        for s, a in zip(states, alone):
            assert torch.allclose(s[r, -1], a[0, -1], atol=1e-5)
    # final norm not applied: head(norm(last state)) is the forward's logits
    logits, _ = model(torch.tensor([prompts[0]]))
    assert torch.allclose(model.head(model.norm(states[-1][0, -1])), logits[0, -1], atol=1e-4)


def test_bf16_autocast_trains():
    torch.manual_seed(0)
    m = Transformer(tiny_cfg()).train()
    x = torch.randint(0, V, (2, 16))
    _, ref = m(x, targets=x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = m(x, targets=x)
    loss.backward()
    assert loss.dtype == torch.float32 and abs(loss.item() - ref.item()) < 0.05
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
