"""HF export: `transformers` loads the exported folder and computes our logits; its chat template is ours.

    python -m pytest tests/test_export.py -q
"""

import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from safepretrain.config import ModelConfig
from safepretrain.data.chat import chat_prompt_ids
from safepretrain.data.tokenizer import TextTokenizer, train_tokenizer
from safepretrain.export import ExportError, export_checkpoint, export_hf
from safepretrain.train.model import Transformer

TAG = "<potentially unsafe content>"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tok = TextTokenizer(train_tokenizer(["plain words about rivers, towns and the weather"] * 30, 400, 1, TAG), TAG)
    # GQA (4 heads, 2 kv heads) and a non-default RoPE base: the mappings most likely to go wrong
    cfg = ModelConfig(preset=None, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, max_seq_len=64,
                      rope_theta=5000.0, vocab_size=tok.vocab_size)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    for p in model.parameters():  # move norms off 1.0 so a dropped or misnamed weight shows in the logits
        p.data.add_(0.05 * torch.randn_like(p))
    out = export_hf(model, tok, tmp_path_factory.mktemp("hf") / "model")
    return model, tok, out


def test_transformers_computes_our_logits(exported):

    model, tok, out = exported
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    tokens = torch.randint(0, tok.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(tokens)
        theirs = hf(tokens).logits
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    generated = hf.generate(tokens[:1, :8], max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, 13)
    with torch.no_grad():  # greedy: transformers' first new token is our argmax
        assert generated[0, 8] == model(tokens[:1, :8])[0][0, -1].argmax()


def test_tokenizer_and_chat_template_match_ours(exported):

    _, tok, out = exported
    hf_tok = AutoTokenizer.from_pretrained(out)
    text = f"rivers and towns {TAG} weather"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    ids = hf_tok.apply_chat_template([{"role": "user", "content": "rivers and towns"}], add_generation_prompt=True,
                                     tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == chat_prompt_ids(tok, "rivers and towns")
    meta = json.loads((out / "safepretrain.json").read_text())
    assert meta["harm_tag_id"] == tok.tag_id == hf_tok.convert_tokens_to_ids(TAG)


def test_export_refuses_a_non_empty_folder_and_a_non_checkpoint(exported, tmp_path):
    model, tok, out = exported
    with pytest.raises(ExportError, match="not an empty folder"):
        export_hf(model, tok, out)
    with pytest.raises(ExportError, match="not a checkpoint folder"):
        export_checkpoint(tmp_path, tmp_path / "x")
