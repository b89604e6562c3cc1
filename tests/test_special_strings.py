"""Literal special-token strings in corpus text (the tag, chat markers, end of text) never become special
tokens: the reader makes them inert and counts them.

    python -m pytest tests/test_special_strings.py -q
"""

import json

from hypothesis import given
from hypothesis import strategies as st

from safepretrain.config.base import EOS, USER
from safepretrain.data.read_step import ReadCorpus, neutralise_special
from safepretrain.data.tokenizer import TextTokenizer, special_tokens, train_tokenizer

TAG = "<potentially unsafe content>"
SPECIALS = special_tokens(TAG)
QUOTING = f"A forum post quoting {USER} and {TAG} twice: {TAG}. End{EOS}"


def test_special_strings_are_made_inert_and_counted():
    text, n = neutralise_special(QUOTING, SPECIALS)
    assert n == 4
    assert not any(s in text for s in SPECIALS)
    assert "‹potentially unsafe content>" in text and "‹|user|>" in text  # still readable
    assert neutralise_special(text, SPECIALS) == (text, 0)  # inert text stays as it is


def test_the_tokenizer_would_read_them_as_special_ids_and_reads_inert_text_as_plain_tokens():
    tok = TextTokenizer(train_tokenizer(["plain words about rivers and towns"] * 20, 300, 1, TAG), TAG)
    special_ids = {tok.eos_id, tok.user_id, tok.tag_id}
    assert special_ids <= set(tok.encode(QUOTING))  # the hazard: raw text carries tag and chat ids
    assert not special_ids & set(tok.encode(neutralise_special(QUOTING, SPECIALS)[0]))


@given(st.lists(st.sampled_from([*SPECIALS, "<", "|", ">", "a", " ", "<|", "content>", "‹"]), max_size=30))
def test_no_special_string_survives_any_mix_of_fragments(parts):
    text, _ = neutralise_special("".join(parts), SPECIALS)
    assert not any(s in text for s in SPECIALS)


def test_reader_counts_them_in_the_metadata(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"id": "q", "text": QUOTING}) + "\n" + json.dumps({"id": "p", "text": "plain"}) + "\n")
    docs = list(ReadCorpus([str(corpus)], str(tmp_path / "rejected"), 1000, specials=SPECIALS).run(None, 0, 1))
    by_id = {d.id: d for d in docs}
    assert by_id["q"].metadata["special_strings"] == 4 and TAG not in by_id["q"].text
    assert "special_strings" not in by_id["p"].metadata
