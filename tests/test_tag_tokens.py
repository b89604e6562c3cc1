"""Tag injection on token ids (TextTokenizer.encode_tagged) equals encoding the tagged text (inject_tags).

    python -m pytest tests/test_tag_tokens.py -q
"""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from safepretrain.config import DataConfig
from safepretrain.config.base import EOS
from safepretrain.data import interventions as iv
from safepretrain.data.pipeline import encode_stream
from safepretrain.data.tokenizer import UNSURE, TextTokenizer, byte_decoder, train_tokenizer

TAG = "<potentially unsafe content>"
# Word pieces and gaps that reach every case: ASCII words and punctuation, contractions, digits, multi-byte
# letters and symbols (CJK, accents, emoji), every kind of space the tokenizer knows (tab, newline, no-break,
# ideographic, em space, NEL), U+001C (a space to Python, punctuation to the tokenizer), a special token's text.
PIECES = ["alpha", "beta", "gamma", "it's", "we'll", "x", ".", ",", "!?", "--", "(", ")", "42", "7", "naïve",
          "größe", "中文", "字", "😀", "🙂x", "é", "\u00a0", "\u3000", "\u2003", "\u0085", "\u001c", "\u2028",
          " ", "  ", "\n", "\n\n", "\t", " \t", "\r\n", "\u000b"]
SPACE = "\u00a0\u3000\u2003\u0085\u2028 \n\t\r\u000b"
RARE = {"\u2003", "\u2028", "\u0085", "😀", "größe"}  # left out of the tokenizer's training: split into bytes


def corpus(n: int, seed: int, pieces=PIECES) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok():
    """A small byte-level BPE trained like the data stage's, on text without RARE: those are encoded as byte
    tokens, some of them parts of a multi-byte space character (the UNSURE path)."""
    common = [x for x in PIECES if x not in RARE]
    return TextTokenizer(train_tokenizer(corpus(3000, 0, common) + ["ordinary words and spaces here"] * 50,
                                         vocab_size=420, min_frequency=2, tag=TAG), TAG)


def test_whitespace_is_the_tokenizers():
    """WHITESPACE is exactly the characters the pre-tokenizer splits as `\\s` (probed over the BMP's first
    planes and every character Python calls a space)."""
    pt = pre_tokenizers.ByteLevel(add_prefix_space=False)
    candidates = {chr(c) for c in range(0x3100)} | {chr(c) for c in range(0x110000) if chr(c).isspace()}
    candidates -= {chr(c) for c in range(0xD800, 0xE000)}
    probed = {c for c in candidates if c == " " or all(len(pt.pre_tokenize_str(f"{a}{c}{a}")) == 3 for a in ".a1")}
    assert probed == set(iv.WHITESPACE)
    assert set(iv.WHITESPACE) == {c for c in candidates if c.isspace()} - set("\x1c\x1d\x1e\x1f")


def testbyte_decoder_inverts_the_byte_level_alphabet():
    decoder = byte_decoder()
    assert set(decoder) == set(pre_tokenizers.ByteLevel.alphabet()) and sorted(decoder.values()) == list(range(256))
    pt = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    for c in ["a", "~", "\x00", " ", "\x7f", "é", "ÿ", "\u0100", "中", "\u3000", "😀", "\U0010fffd"]:
        [(piece, _)] = pt.pre_tokenize_str(c)
        assert bytes(decoder[ch] for ch in piece) == c.encode()


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 40)), max_size=20),
       st.floats(0, 1))
def test_random_below_draws_what_random_draws(seeds_counts, p):
    rngs = [random.Random(s) for s, _ in seeds_counts]
    ref = [random.Random(s) for s, _ in seeds_counts]
    got = iv.random_below(rngs, [n for _, n in seeds_counts], p).tolist()
    assert got == [r.random() < p for r, (_, n) in zip(ref, seeds_counts) for _ in range(n)]
    assert [r.random() for r in rngs] == [r.random() for r in ref]  # each rng left where n random() leave it


texts = st.lists(st.sampled_from(PIECES + [TAG, EOS]), max_size=40).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(texts, st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
                          st.text(alphabet=SPACE + "ab.中😀\x1c", max_size=30)), max_size=12),
       st.sampled_from([0.0, 0.05, 0.3, 0.5, 1.0]), st.integers(0, 2**32))
def test_injection_on_ids_equals_encoding_the_tagged_text(tok, batch, p, seed):
    ids = tok.encode_tagged(batch, [random.Random(seed + i) for i in range(len(batch))], p)
    assert ids == [tok.encode(iv.inject_tags(t, TAG, p, random.Random(seed + i))) for i, t in enumerate(batch)]


def test_injection_on_ids_at_scale_and_edges(tok):
    edges = ["", " ", "word", "word ", " word", "a b", "a  b ", "\n\nx\n", "x\u3000y\u3000"]
    batch = [*corpus(1800, 1, [x for x in PIECES if x not in RARE]), *corpus(200, 3), *edges]
    unsure = sum(any(tok.tag_flags[i] & UNSURE for i in ids) for ids in tok.encode_batch(batch))
    assert 0 < unsure < len(batch) / 2  # both paths run, on ids for most documents
    for p in (0.05, 1.0):
        got = tok.encode_tagged(batch, [random.Random(i) for i in range(len(batch))], p)
        assert got == [tok.encode(iv.inject_tags(t, TAG, p, random.Random(i))) for i, t in enumerate(batch)]
    assert tok.encode_tagged([], [], 0.5) == []
    tag = tok.tag_id
    assert tok.encode_tagged(["a b c "], [random.Random(0)], 1.0) == [tok.encode(f"a{TAG} b{TAG} c ")]
    assert tag in tok.encode_tagged(["a b c "], [random.Random(0)], 1.0)[0]


def test_flags_mark_partial_space_characters_and_specials_unsure(tok):
    flags = tok.tag_flags
    assert flags[tok.tag_id] & UNSURE and flags[tok.eos_id] & UNSURE
    assert not flags[tok.encode("alpha")[0]] & UNSURE


def test_tagged_stream_is_stored_untagged_and_encoded_with_its_tags(tok):
    cfg = DataConfig()
    recs = [{"text": t, "source_id": f"d{i}", "tag_probability": cfg.interventions.tag_probability}
            for i, t in enumerate(corpus(200, 2))]
    got = encode_stream(tok, "tagged", recs, cfg)
    assert got == [tok.encode(iv.tagged_text(r, TAG, cfg.seed)) for r in recs]
    assert any(tok.tag_id in ids for ids in got)
    assert encode_stream(tok, "unsafe", recs, cfg) == tok.encode_batch([r["text"] for r in recs])
