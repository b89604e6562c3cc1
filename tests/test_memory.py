"""The per-GPU memory estimate, checked against a case computed by hand.

    python -m pytest tests/test_memory.py -q
"""

from pathlib import Path

from safepretrain.config import ModelConfig, load_config
from safepretrain.train.memory import GIB, count_params, estimate_memory, memory_plan
from safepretrain.train.model import Transformer

SHAPE = dict(d_model=4, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=8, vocab=10)


def test_parameter_count_matches_the_model():
    # by hand: embedding 10*4 = 40; per layer norms 2*4 + wq,wo 2*16 + wk,wv 2*4*2 + SwiGLU 3*4*8 = 152; final norm 4
    assert count_params(**SHAPE) == 40 + 2 * 152 + 4 == 348
    model = Transformer(ModelConfig(preset=None, d_model=4, n_layers=2, n_heads=2, n_kv_heads=1, ffn_hidden=8,
                                    max_seq_len=8, vocab_size=10))
    assert model.num_params() == 348
    big = ModelConfig(preset="smollm2-1.7b")  # too big to build in a test: SmolLM2-1.7B has 1.71B parameters
    n = count_params(big.d_model, big.n_layers, big.n_heads, big.n_kv_heads, big.ffn_hidden, 49152)
    assert 1.70e9 < n < 1.72e9


def test_hand_computed_fsdp2_case():
    # 4 rows / (2 ranks x 2 micro-batches) = 1 row of 3 tokens per micro-batch
    est = estimate_memory(**SHAPE, batch_size=4, seq_len=3, grad_accum_steps=2, world_size=2, distributed="fsdp2")
    assert est.micro_batch == 1
    # shard = 348/2 = 174 params; one block = 152 params, two gathered in fp32
    assert (est.params, est.grads, est.optimizer) == (4 * 174 + 2 * 4 * 152, 4 * 174, 8 * 174)
    # per token and layer: 18*4 + 8*2 + 8*8 = 152 bytes; 3 tokens, 2 layers; logits 3 tokens x 10 x (2 + 4)
    assert est.activations == 2 * 3 * 152 + 3 * 10 * 6 == 1092
    assert est.total == 1912 + 696 + 1392 + 1092
    ckpt = estimate_memory(**SHAPE, batch_size=4, seq_len=3, grad_accum_steps=2, world_size=2, distributed="fsdp2",
                           activation_checkpointing=True)
    assert ckpt.activations == 2 * 3 * 4 * 4 + 3 * 152 + 180  # block inputs (fp32) + one block recomputed + logits
    ddp = estimate_memory(**SHAPE, batch_size=4, seq_len=3, grad_accum_steps=2, world_size=2, distributed="ddp")
    assert (ddp.params, ddp.grads, ddp.optimizer) == (4 * 348, 8 * 348, 8 * 348)


def test_paper_config_fits_an_80gb_gpu():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "paper-1.7b.yaml")
    assert cfg.pretrain.batch_size * cfg.pretrain.seq_len == 1024 * 2048
    lines = memory_plan(cfg, world_size=64)
    assert len(lines) == 1 and "fsdp2" in lines[0] and "1,7" in lines[0]
    p, m = cfg.pretrain, cfg.model
    est = estimate_memory(d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads, n_kv_heads=m.n_kv_heads,
                          ffn_hidden=m.ffn_hidden, vocab=cfg.tokenizer.vocab_size, batch_size=p.batch_size,
                          seq_len=p.seq_len, grad_accum_steps=p.grad_accum_steps, world_size=64,
                          distributed=p.distributed, activation_checkpointing=p.activation_checkpointing)
    assert est.total < 80 * GIB * 0.8
    assert "not divisible" in memory_plan(cfg, world_size=3)[0]
