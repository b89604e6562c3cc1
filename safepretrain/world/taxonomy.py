"""The toolkit's shared word lists: the harm categories and the stopwords (one copy of each)."""

from __future__ import annotations

import re
from collections import Counter

# The RefuseWeb harm categories (paper §2.4); a document's category is the nearest description.
HARM_CATEGORIES = {
    "harassment_discrimination": "insults, slurs, hate and discrimination against people or groups",
    "malware_hacking": "hacking computers, malware, stealing passwords, breaking into accounts",
    "physical_harm": "violence, weapons, injuring or killing people, self-harm, dangerous acts",
    "economic_harm": "gambling, theft of money, destroying someone's finances or business",
    "fraud_deception": "scams, spam, fraud, fake offers, phishing and deceiving people for profit",
    "disinformation": "false news, conspiracy theories, propaganda and misleading claims",
    "sexual_adult": "sexual content, explicit adult material, pornography",
    "privacy": "personal information, doxxing, stalking, surveillance of private people",
}


# Function words and very common words, skipped when picking topic words from a text.
STOPWORDS = frozenset("""
a about above after again against all also always among an and another any anything are around as at
away back be because been before being below between both but by came can cannot come could did didn
do does doing done doth down during each even ever every few first for from further get good got
great had has hath have having he her here hers herself him himself his how i if in into is it its
itself just know last left like little long made make makes many may me might more most much must my
near never next no none not nothing of off often on once one only or other ought our ours ourselves
out over own part people place right said same says shall she should since so some something still
such take than that the thee their theirs them themselves then there these they thing things this
those thou though through thus thy time times to today told too took two under until unto up upon us
very want was way ways we well went were what when where which while who whom whose why will with
within without would year years you your yours yourself yourselves
""".split())



# Indicator words and phrases per harm category (lower case), for a coarse count of which categories a corpus
# touches (the data report card). An indicator, not a classifier: the scorer decides routing, never these.
CATEGORY_PHRASES: dict[str, tuple[str, ...]] = {
    "harassment_discrimination": ("slur", "racist", "racism", "sexist", "sexism", "bigot", "bigotry", "hate speech",
                                  "harassment", "harass", "bullying", "bully", "discrimination", "insult",
                                  "xenophobia", "homophobic"),
    "malware_hacking": ("malware", "ransomware", "spyware", "password", "hacking", "hacker", "exploit", "keylogger",
                        "botnet", "trojan", "rootkit", "ddos", "sql injection", "brute force", "backdoor"),
    "physical_harm": ("weapon", "explosive", "bomb", "poison", "violence", "assault", "murder", "kill", "killing",
                      "self-harm", "suicide", "firearm", "stabbing", "injure", "hurt", "arson"),
    "economic_harm": ("gambling", "casino", "betting", "embezzlement", "theft", "extortion", "money laundering",
                      "insider trading", "tax evasion", "shoplifting", "bankrupt", "sabotage", "debt"),
    "fraud_deception": ("scam", "scammer", "phishing", "fraud", "spam", "fake offer", "ponzi scheme",
                        "pyramid scheme", "identity theft", "forgery", "counterfeit", "impersonate", "con artist",
                        "deceive"),
    "disinformation": ("conspiracy", "hoax", "propaganda", "fake news", "misinformation", "disinformation",
                       "false flag", "cover-up", "rigged election", "debunked", "flat earth", "chemtrails"),
    "sexual_adult": ("explicit", "pornography", "porn", "nude", "nudity", "erotic", "adult content", "sexual",
                     "nsfw", "fetish", "xxx"),
    "privacy": ("home address", "doxxing", "dox", "stalking", "stalker", "surveillance", "phone number",
                "social security number", "personal information", "tracking device", "spy on", "location data",
                "private data"),
}


# A phrase matches as whole words: its words are consecutive words (\w+ runs) of the lower-cased text, the last
# one optionally with a plural "s"/"es", so "scam" matches "Scams" and "anti-scam" but never "scampi", and
# "home address" matches whatever separates the two words (spaces, a line break, punctuation); "self-harm" also
# matches "self harm". The text is split into words once and looked up in
# tables built here, for all categories in one pass (a regex alternation per category was 2-3x slower, and the
# card matches up to 200k documents).
_WORD = re.compile(r"\w+")
_SEP = "\x01"  # joins the words of a text for multi-word lookups (never inside a \w+ word)


def _phrase_tables() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[tuple[str, tuple[int, ...]], ...]]]:
    """(single word form -> category indices, first word -> ((joined multi-word form, category indices), ...))."""
    single: dict[str, set[int]] = {}
    multi: dict[str, dict[str, set[int]]] = {}
    for k, cat in enumerate(HARM_CATEGORIES):
        for phrase in CATEGORY_PHRASES[cat]:
            words = _WORD.findall(phrase.lower())
            for last in (words[-1], words[-1] + "s", words[-1] + "es"):
                if len(words) == 1:
                    single.setdefault(last, set()).add(k)
                else:
                    needle = _SEP + (2 * _SEP).join([*words[:-1], last]) + _SEP
                    multi.setdefault(words[0], {}).setdefault(needle, set()).add(k)
    return ({w: tuple(sorted(ks)) for w, ks in single.items()},
            {w: tuple((n, tuple(sorted(ks))) for n, ks in forms.items()) for w, forms in multi.items()})


_SINGLE, _MULTI = _phrase_tables()
_CATS = tuple(HARM_CATEGORIES)


def _phrase_hits(text: str, count: bool) -> Counter:
    """Category index -> occurrences of its phrases in `text` (`count`), or 1 where any occurs."""
    words = _WORD.findall(text.lower())
    hits: Counter = Counter()
    if count:
        for w, n in Counter(words).items():
            for k in _SINGLE.get(w, ()):
                hits[k] += n
    else:
        for w in _SINGLE.keys() & set(words):
            hits.update(_SINGLE[w])
    firsts = _MULTI.keys() & set(words)
    if firsts:
        # every word framed by separators, doubled between words: an occurrence of a framed phrase is a run of
        # whole consecutive words, and back-to-back occurrences are each counted
        joined = _SEP + (2 * _SEP).join(words) + _SEP
        for first in firsts:
            for needle, ks in _MULTI[first]:
                n = joined.count(needle)
                if n:
                    for k in ks:
                        hits[k] += n if count else 1
    return hits


def categories_by_phrases(text: str) -> list[str]:
    """The harm categories (in HARM_CATEGORIES order) with at least one indicator phrase in `text`
    (whole words, case-insensitive). A coarse indicator of topic, not a harmfulness judgement."""
    return [_CATS[k] for k in sorted(_phrase_hits(text, count=False))]
