"""The data safety report card: phrase-matched harm categories, rejected records (subfolders, gzip), the figure.

    python -m pytest tests/test_report_card.py -q
"""

import json
import random
import re
from pathlib import Path

from safepretrain.data.report_card import build_report_card, harm_phrases_markdown, phrase_category_rates
from safepretrain.report.provenance import data_and_judge
from safepretrain.utils import write_jsonl
from safepretrain.world.taxonomy import CATEGORY_PHRASES, HARM_CATEGORIES, categories_by_phrases

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_every_category_has_short_lowercase_phrases():
    assert set(CATEGORY_PHRASES) == set(HARM_CATEGORIES)
    for cat, phrases in CATEGORY_PHRASES.items():
        assert 8 <= len(phrases) <= 16, cat
        assert all(p == p.lower().strip() and 0 < len(p.split()) <= 3 for p in phrases), cat


def test_phrases_match_whole_words_only_case_insensitively():
    assert categories_by_phrases("We had scampi for dinner.") == []
    assert categories_by_phrases("A SCAM, they said.") == ["fraud_deception"]
    assert categories_by_phrases("Two scams and a Phishing mail") == ["fraud_deception"]
    assert categories_by_phrases("the passwordless login") == []
    assert categories_by_phrases("his Home   Address was posted") == ["privacy"]  # any whitespace inside a phrase
    assert categories_by_phrases("an anti-scam leaflet") == ["fraud_deception"]  # a hyphen is a word boundary
    assert categories_by_phrases("") == []


def test_a_text_can_match_several_categories_in_taxonomy_order():
    text = "A conspiracy post asked for a password; the hoax spread, the propaganda too."
    assert categories_by_phrases(text) == ["malware_hacking", "disinformation"]  # HARM_CATEGORIES order


DOCS = [  # (id, source, score, text)
    ("a1", "web", 0, "A recipe for scampi with lemon and garlic."),
    ("a2", "web", 0, "The train left the station at noon."),
    ("a3", "web", 0, "How to pick a strong password for your email."),
    ("a4", "forum", 2, "This is a scam: the offer is fake and the conspiracy is a hoax."),
    ("a5", "forum", 4, "Someone posted her home address and phone number online."),
    ("a6", "forum", 3, "A long rant full of propaganda."),
]


def _data_folder(root: Path, with_scored: bool = True) -> Path:
    folder = root / "data"
    write_jsonl(folder / "scores" / "00000.jsonl.gz",
                [{"id": i, "source": src, "kind": None, "score": s, "chunk_scores": [s], "category": "privacy"}
                 for i, src, s, _ in DOCS])
    if with_scored:
        write_jsonl(folder / "scored" / "00000.jsonl.gz",
                    [{"id": i, "text": t, "source": src, "harm_score": s} for i, src, s, t in DOCS[:3]])
        write_jsonl(folder / "scored" / "00001.jsonl.gz",
                    [{"id": i, "text": t, "source": src, "harm_score": s} for i, src, s, t in DOCS[3:]])
    for stream, docs in (("safe", DOCS[:2]), ("val", DOCS[2:3]), ("unsafe", DOCS[3:])):
        write_jsonl(folder / "streams" / stream / "00000.jsonl.gz",
                    [{"id": f"{i}:{stream}", "text": t, "source": src, "harm_score": s, "stream": stream}
                     for i, src, s, t in docs])
    # a synthetic stream that is not an original document: never counted by the phrase rates
    write_jsonl(folder / "streams" / "refusal" / "00000.jsonl.gz",
                [{"id": "a5:refusal", "text": "I cannot help with a scam.", "source": "forum", "harm_score": 4}])
    (folder / "rejected").mkdir(parents=True)
    (folder / "rejected" / "00000.jsonl").write_text(
        json.dumps({"file": "x", "line": 2, "reason": "invalid_json", "raw": "{"}) + "\n"
        + json.dumps({"file": "x", "line": 3, "reason": "missing_text", "raw": "{}"}) + "\n")
    write_jsonl(folder / "rejected" / "llm_rephrase" / "00000.jsonl.gz",
                [{"id": "a4", "reason": "refused"}, {"id": "a6", "reason": "refused"},
                 {"id": "a5", "reason": "too_short"}])
    return folder


SIZES = {"safe": {"docs": 2, "tokens": 20}, "val": {"docs": 1, "tokens": 10}, "unsafe": {"docs": 3, "tokens": 40}}


def test_card_has_category_rates_rejects_by_reason_and_a_png(tmp_path):
    folder = _data_folder(tmp_path)
    card = build_report_card(folder, SIZES, {"f1_macro": 0.8, "recall@1": 0.9, "recall@3": 0.7, "n": 10})

    hp = card["harm_phrases"]
    assert hp["read_from"] == "scored" and hp["docs"] == 6 and hp["docs_scored_ge1"] == 3 and not hp["capped"]
    cats = hp["categories"]
    assert list(cats) == list(HARM_CATEGORIES)
    assert cats["fraud_deception"] == {"docs": 1, "share": round(1 / 6, 4), "docs_scored_ge1": 1,
                                       "share_scored_ge1": round(1 / 3, 4)}  # scampi (a1) is not a scam
    assert cats["disinformation"]["docs"] == 2 and cats["disinformation"]["share_scored_ge1"] == round(2 / 3, 4)
    assert cats["malware_hacking"] == {"docs": 1, "share": round(1 / 6, 4), "docs_scored_ge1": 0,
                                       "share_scored_ge1": 0.0}  # the password advice scored 0
    assert cats["privacy"]["docs_scored_ge1"] == 1
    assert cats["sexual_adult"]["docs"] == 0

    assert card["rejected"] == {"total": 5, "by_reason": {"refused": 2, "invalid_json": 1, "missing_text": 1,
                                                          "too_short": 1}}  # the gzip file in a subfolder counts
    assert card["score_histogram"]["(all)"] == {"0": 3, "1": 0, "2": 1, "3": 1, "4": 1, "5": 0}

    assert card["png"] == "report_card.png"
    png = folder / "report_card.png"
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    assert not list(folder.glob(".*tmp*"))  # written atomically, no temporary left behind
    assert json.loads((folder / "report_card.json").read_text())["harm_phrases"] == hp

    md = (folder / "report_card.md").read_text()
    assert "## Harm categories (phrase matching)" in md
    assert "coarse indicator, not the scorer" in md
    assert "| fraud_deception | 1 | 16.7% | 1 | 33.3% |" in md
    assert "](report_card.png)" in md
    assert "## Rejected records: 5" in md

    summary = "\n".join(data_and_judge(tmp_path))
    assert "Top harm categories among documents scored >= 1 (phrase matching, a coarse indicator): " \
           "disinformation 67%, fraud_deception 33%, privacy 33%." in summary
    assert "![data safety report card](../data/report_card.png)" in summary


def test_without_scored_folder_the_original_streams_are_read(tmp_path):
    folder = _data_folder(tmp_path, with_scored=False)
    hp = build_report_card(folder, SIZES, {})["harm_phrases"]
    assert hp["read_from"] == "streams/safe,val,unsafe"
    assert hp["docs"] == 6 and hp["docs_scored_ge1"] == 3  # the refusal stream is not read
    assert hp["categories"]["fraud_deception"]["docs"] == 1


def test_the_number_of_documents_read_is_capped_and_said_so(tmp_path):
    folder = _data_folder(tmp_path)
    hp = phrase_category_rates(folder, cap=3, available=6)
    assert hp["capped"] and hp["every_nth"] == 2 and hp["docs"] == 3  # a1, a3, a5: spans both files
    assert hp["docs_scored_ge1"] == 1 and hp["categories"]["privacy"]["docs"] == 1
    hp = phrase_category_rates(folder, cap=4)  # document count unknown: the first ones
    assert hp["capped"] and hp["every_nth"] == 1 and hp["docs"] == 4
    assert not phrase_category_rates(folder, cap=6)["capped"]

    md = "\n".join(harm_phrases_markdown({"harm_phrases": phrase_category_rates(folder, cap=3, available=6)}))
    assert "capped at 3: one in every 2 of the stage's 6 documents" in md


def test_an_empty_data_folder_still_gives_a_card(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    card = build_report_card(folder, {}, {})
    assert card["harm_phrases"]["docs"] == 0 and card["harm_phrases"]["read_from"] is None
    assert card["rejected"] == {"total": 0, "by_reason": {}}
    assert (folder / "report_card.png").read_bytes()[:8] == PNG_MAGIC
    assert "No document texts to match" in (folder / "report_card.md").read_text()


def _reference_regexes() -> dict:
    """The plain definition: one regex per category, whole words (longest phrase first), optional plural."""

    out = {}
    for cat in HARM_CATEGORIES:
        alts = sorted({r"\W+".join(re.escape(w) for w in re.findall(r"\w+", p)) for p in CATEGORY_PHRASES[cat]},
                      key=len, reverse=True)
        out[cat] = re.compile(r"\b(?:" + "|".join(alts) + r")(?:e?s)?\b")
    return out


def test_the_word_tables_agree_with_one_regex_per_category():

    ref = _reference_regexes()
    vocab = sorted({w for ps in CATEGORY_PHRASES.values() for p in ps for w in p.replace("-", " ").split()})
    vocab += [w + "s" for w in vocab[:20]] + ["scampi", "passwordless", "skill", "paradox", "the", "a", "Home",
                                              "ADDRESS", "harasses", "x_scam", "scam_x", "2scam", "café"]
    rng = random.Random(7)
    for _ in range(2000):
        text = "".join(rng.choice(vocab) + rng.choice([" ", " ", " ", "  ", "\n", ", ", "-", ". "])
                       for _ in range(rng.randint(0, 12)))
        low = text.lower()
        counts = {c: len(rx.findall(low)) for c, rx in ref.items()}
        assert categories_by_phrases(text) == [c for c in HARM_CATEGORIES if counts[c]], text
