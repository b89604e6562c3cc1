"""GCG jailbreak suffixes on a tiny random model: the embeddings path, descent, determinism, the adaptive
objective against the tag, and that the model is left as it was.

    python -m pytest tests/test_gcg.py -q
"""

import math

import pytest
import torch

from safepretrain.config import ModelConfig
from safepretrain.config.evaluation import AttackConfig
from safepretrain.eval.attacks.gcg import GCGSettings, gcg_suffix
from safepretrain.train.model import Transformer

V = 64
TAG = V - 1
ALLOWED = list(range(2, 60))  # excludes the tag, so the suffix cannot simply be made of tags
PREFIX, AFTER, TARGET = [5, 6, 7], [8, 9], [10, 11, 12, 13]


def tiny_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    # init_std 0.3 rather than 0.02: a near-uniform random model barely reacts to its input, leaving GCG little to find
    cfg = ModelConfig(preset=None, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, ffn_hidden=64, max_seq_len=64,
                      vocab_size=V, init_std=0.3)
    return Transformer(cfg).eval()


def attack(model, *, seed=0, adaptive=False, tag_id=None, **settings):
    return gcg_suffix(model, PREFIX, AFTER, TARGET, settings=GCGSettings(**settings), seed=seed, allowed_ids=ALLOWED,
                      tag_id=tag_id, adaptive=adaptive)


def test_embeddings_path_matches_tokens_path():
    model = tiny_model()
    tokens = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, _ = model(tokens)
        logits_emb, _ = model(embeddings=model.tok_emb(tokens))
        _, loss = model(tokens, targets)
        _, loss_emb = model(targets=targets, embeddings=model.tok_emb(tokens))
    torch.testing.assert_close(logits_emb, logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss_emb, loss, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="exactly one"):
        model(tokens, embeddings=model.tok_emb(tokens))


def test_gcg_lowers_the_target_loss():
    result = attack(tiny_model(), init_token=ALLOWED[0])
    assert result.loss < result.initial_loss - 0.5  # seed 0: about 5.2 → 3.1 nats
    assert len(result.trace) == GCGSettings().steps
    assert all(later <= earlier for earlier, later in zip(result.trace, result.trace[1:]))
    assert result.trace[-1] == pytest.approx(result.loss, abs=1e-5)  # non-adaptive: objective = target NLL
    assert len(result.suffix_ids) == GCGSettings().suffix_len
    assert set(result.suffix_ids) <= set(ALLOWED)
    assert math.isnan(result.tag_logprob)  # no tag_id given


def test_gcg_is_deterministic_for_a_seed():
    model = tiny_model()
    first, second = attack(model, seed=3), attack(model, seed=3)
    assert first.suffix_ids == second.suffix_ids
    assert first.trace == second.trace


def test_adaptive_attack_keeps_the_tag_quieter():
    """With the tag made likely everywhere (a constant bias on its logit, as in a model that learned to
    emit it), the adaptive objective finds a suffix under which the tag is less likely along the target."""
    model = tiny_model()
    tag_bias = torch.zeros(V)
    tag_bias[TAG] = 6.0
    # a hook rather than editing weights: the head is tied to the embedding, whose tag row is an input too
    model.head.register_forward_hook(lambda module, inputs, logits: logits + tag_bias)
    plain = attack(model, tag_id=TAG, tag_weight=5.0)
    adaptive = attack(model, tag_id=TAG, adaptive=True, tag_weight=5.0)
    assert plain.tag_logprob > math.log(0.2)  # the rig works: the non-adaptive suffix leaves the tag likely
    assert adaptive.tag_logprob < plain.tag_logprob - 0.5  # seed 0: about -2.1 vs -1.1
    assert set(adaptive.suffix_ids) <= set(ALLOWED)


def test_refuses_to_run_under_inference_mode():
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        attack(tiny_model())


def test_model_is_left_unchanged():
    model = tiny_model().train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():  # the attack enables gradients itself
        attack(model, tag_id=TAG, adaptive=True)
    assert model.training
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
        assert p.grad is None, name


def test_the_attack_runs_with_what_the_study_config_says():
    """One copy of GCG's settings: `eval.attack` (AttackConfig). A direct call's defaults are its defaults, and a
    study's values reach the attack field by field."""
    a = AttackConfig(gcg_suffix_len=3, gcg_steps=2, gcg_topk=5, gcg_candidates=7, gcg_tag_weight=0.25)
    g = GCGSettings.from_config(a, init_token=11)
    assert (g.suffix_len, g.steps, g.topk, g.candidates, g.tag_weight, g.init_token) == (3, 2, 5, 7, 0.25, 11)
    assert GCGSettings() == GCGSettings.from_config(AttackConfig())
