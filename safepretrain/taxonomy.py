"""The toolkit's shared word lists: the harm categories and the stopwords (one copy of each)."""

from __future__ import annotations

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

