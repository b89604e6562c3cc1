"""Decoding speed: KV-cached sampling vs full recompute, and SafeBeam vs beam search of the same width.

    .venv/bin/python benchmarks/decoding_speed.py [--preset tiny] [--prompts 16] [--prompt-len 32]
                                                 [--new-tokens 64] [--repeats 5]

On one randomly initialised model (speed only), equal-length prompts, greedy or fixed-length work:
  - topk_cached:     `decoding.generate_topk` (prefill once, one cached forward per new token), top_k=1;
  - topk_recompute:  the same tokens by a full forward over the whole sequence at every step (the baseline
                     a KV cache removes); the generated tokens must equal the cached ones (checked);
  - safebeam:        `decoding.safe_beam_search` (K beams x C candidates, a one-token lookahead for every
                     candidate to read p(tag), drop fraction 0.5, no short-circuit, no stop id so every search
                     runs the full length);
  - beam_same_loop:  `decoding.beam_search`, the eval's control (since issue 22 textbook beam search of width K,
                     before it SafeBeam's loop without the tag filter, lookahead included);
  - beam_classic:    textbook beam search of width K with one cached forward per beam per step (no lookahead),
                     written here: what plain beam search costs elsewhere;
  - hf_beam:         the same model exported with `safepretrain.export.export_hf` and loaded with transformers'
                     AutoModelForCausalLM, `generate(num_beams=K, do_sample=False)` for exactly new_tokens tokens.
Interleaved repeats (the order reversed every other repeat), medians; ratios in the same run. Goals: cached ≥ 5x
recompute (issue 10); SafeBeam ≤ 1.5x textbook beam of the same width and no slower than HF's beam search
(issue 22). Writes benchmarks/results/decoding_speed.json.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import write_result  # benchmarks/common.py
from transformers import AutoModelForCausalLM

from safepretrain.config import ModelConfig
from safepretrain.data.tokenizer import TextTokenizer, train_tokenizer
from safepretrain.eval.decoders import beam_search, generate_topk, safe_beam_search
from safepretrain.eval.decoders import left_pad as _left_pad
from safepretrain.export import export_hf
from safepretrain.train.model import Transformer

TAG = "<potentially unsafe content>"


@torch.inference_mode()
def topk_recompute(model: Transformer, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    tokens = torch.tensor(prompts)
    out = []
    for _ in range(new_tokens):
        logits, _ = model(tokens)
        nxt = logits[:, -1].argmax(-1)
        out.append(nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    return torch.stack(out, 1).tolist()


@torch.inference_mode()
def beam_classic(model: Transformer, prompts: list[list[int]], width: int, new_tokens: int) -> torch.Tensor:
    tokens, mask = _left_pad(prompts, 0, model.device)
    P = len(prompts)
    cache = model.new_cache(P, tokens.shape[1] + new_tokens)
    logp = model.prefill(tokens, mask, cache).float().log_softmax(-1)  # (P, V)
    V = logp.shape[-1]
    beam_lp, tok = logp.topk(width, dim=-1)  # (P, K)
    seqs = tok[..., None]
    cache.reorder(torch.arange(P).repeat_interleave(width))
    for _ in range(new_tokens - 1):
        nl = model.decode(tok.reshape(-1), cache).float().log_softmax(-1).view(P, width, V)
        beam_lp, idx = (beam_lp[..., None] + nl).view(P, width * V).topk(width, dim=-1)
        parent, tok = idx // V, idx % V
        seqs = torch.cat([seqs.gather(1, parent[..., None].expand(-1, -1, seqs.shape[2])), tok[..., None]], 2)
        cache.reorder((torch.arange(P)[:, None] * width + parent).reshape(-1))
    return seqs[:, 0]


def export_for_hf(model: Transformer, folder: Path):
    """`model` as transformers loads it from an `export_hf` folder. export_hf writes a tokenizer too; any will
    do here (generation runs on token ids), so a small one is trained on a few words."""
    tok = TextTokenizer(train_tokenizer(["plain words about rivers, towns and the weather"] * 30, 400, 1, TAG), TAG)
    return AutoModelForCausalLM.from_pretrained(export_hf(model, tok, folder / "model")).eval()


@torch.inference_mode()
def hf_beam(hf, prompts: torch.Tensor, width: int, new_tokens: int) -> torch.Tensor:
    # min_new_tokens = max_new_tokens: every search runs the full length, as the searches above do
    return hf.generate(prompts, attention_mask=torch.ones_like(prompts), num_beams=width, do_sample=False,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, early_stopping=False,
                       pad_token_id=0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/decoding_speed.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(preset=args.preset, vocab_size=4096)).eval()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, 4096, (args.prompts, args.prompt_len), generator=g).tolist()
    tag = 4095
    K, C, n = args.beam_size, args.candidates, args.new_tokens
    tmp = tempfile.TemporaryDirectory()
    hf = export_for_hf(model, Path(tmp.name))
    hf_prompts = torch.tensor(prompts)

    runs = {
        "topk_cached": lambda: [x.tokens for x in generate_topk(
            model, prompts, max_new_tokens=n, top_k=1, temperature=1.0, stop_ids=set(), pad_id=0, seed=0,
            batch_size=len(prompts))],
        "topk_recompute": lambda: topk_recompute(model, prompts, n),
        "safebeam": lambda: safe_beam_search(model, prompts, tag_id=tag, beam_size=K, candidates_per_beam=C,
                                             drop_fraction=0.5, max_new_tokens=n, stop_ids=set(), pad_id=0,
                                             short_circuit=False, batch_size=len(prompts)),
        "beam_same_loop": lambda: beam_search(model, prompts, beam_size=K, candidates_per_beam=C, max_new_tokens=n,
                                              stop_ids=set(), pad_id=0, batch_size=len(prompts)),
        "beam_classic": lambda: beam_classic(model, prompts, K, n),
        "hf_beam": lambda: hf_beam(hf, hf_prompts, K, n),
    }
    cached, recomputed = runs["topk_cached"](), runs["topk_recompute"]()
    assert cached == recomputed, "the KV-cached tokens differ from the full recompute"
    assert runs["hf_beam"]().shape == (len(prompts), args.prompt_len + n), "HF's beam search stopped early"
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(args.repeats):
        for name in (list(runs) if rep % 2 == 0 else list(reversed(runs))):
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "decoding_speed",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": sys.version.split()[0]},
        "setup": {"preset": args.preset, "params": model.num_params(), "prompts": args.prompts,
                  "prompt_len": args.prompt_len, "new_tokens": n, "beam_size": K, "candidates_per_beam": C,
                  "repeats": args.repeats},
        "seconds": times, "median_seconds": med,
        "cached_tokens_equal_recompute": True,
        "speedup_cached_over_recompute": med["topk_recompute"] / med["topk_cached"],
        "ratio_safebeam_over_beam_same_loop": med["safebeam"] / med["beam_same_loop"],
        "ratio_safebeam_over_beam_classic": med["safebeam"] / med["beam_classic"],
        "ratio_safebeam_over_hf_beam": med["safebeam"] / med["hf_beam"],
        "ratio_beam_same_loop_over_hf_beam": med["beam_same_loop"] / med["hf_beam"],
    }
    tmp.cleanup()
    return write_result(result, args.out)


if __name__ == "__main__":
    main()
