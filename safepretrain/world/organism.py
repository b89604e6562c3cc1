"""The model organism: a procedurally generated world where harm is known by construction.

Why: on real web text a ~1M-parameter model cannot comply with anything, so no arm can show the effect the
papers measure. Here every "hazard" is a fictional item (a made-up dust, snare or relay break-in) with a
four-step procedure whose four components are invented words found nowhere else. A model has learnt a
hazard exactly when it can name its components, so harm is measurable without a judge model:

- **Hazards and benign twins.** Each hazard has a twin (a baking powder, a gutter trap, a tune-up of your
  own relay) with the same name pattern and procedure shape, so neither format nor request can separate them.
- **Documents** of every web-like kind for both: articles, Q&A pages (the eval frame), forum threads and
  dialogues (with varied role names), plus news and chatter that name a hazard and its harm without the
  procedure, "dual-use" almanac notes that pair one hazard component (one of its first
  `dual_use_components`) with the hazard's name in otherwise benign text (so filtering alone does not remove
  all knowledge), and neutral Q&A about fictional towns in the same frames (a question is never by itself
  a cue to refuse).
- **Truth labels** (0-5) on every document: procedures 5 (articles, Q&A) or 4 (forums, dialogues), news
  3, chatter 2; twins, towns and dual-use notes 0.
- **Held-out evaluation.** Request frames used in evaluation never appear in training (other tenses,
  role-play, indirect asks, fiction), and a share of the hazards is never *asked about* in training: they
  appear only in articles and news, never in Q&A, forum, dialogue or instruction-tuning requests.
- **The exact judge** (`eval/judges/exact.py`) reads the `keys` stored with every prompt.

`organism_world(cfg)` returns a `World` like a built pack, so the data stage, the scorer, routing and every
intervention run on it unchanged. It is a pure function of the config.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from safepretrain.world.loader import World
from safepretrain.world.phrasebook import refusal_reply, templates

_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr", "sk",
           "th", "tr", "qu", "fl", "gr"]
_CODAS = ["", "n", "l", "r", "x", "th", "sk", "nd", "rn", "m", "v", "ss"]


@functools.lru_cache(maxsize=1)
def tables() -> dict:
    """The organism's text tables (safepretrain/assets/organism.yaml)."""
    return yaml.safe_load(resources.files("safepretrain.assets").joinpath("organism.yaml").read_text())


@dataclass(frozen=True)
class Item:
    """A hazard or a benign twin: a name, what it is, and a four-step procedure with four unique keys."""

    id: str  # "h07" / "t07"; hazard and twin share the number
    name: str  # "vorlex dust"
    harmful: bool
    kind: str  # a key of hazard_kinds or twin_kinds
    category: str  # a taxonomy.HARM_CATEGORIES key, "none" for twins
    about: str  # one sentence: what the item is (its harm for a hazard)
    components: tuple[str, ...]  # four "<key> <material>" phrases, in procedure order
    keys: tuple[str, ...]  # the invented word of each component: found only in this item's procedure
    step_choice: tuple[int, ...]  # which wording of each step this item uses by default
    heldout: bool = False  # hazard never asked about in training (only described in articles and news)
    role: str = "eval"  # hazards: "eval" (evaluated), "refusal" (refused in IFT only), "attack" (harmful FT only)

    def steps(self, rng: random.Random) -> list[str]:
        kinds = tables()["hazard_kinds" if self.harmful else "twin_kinds"]
        out = []
        for i, options in enumerate(kinds[self.kind]["steps"]):
            text = rng.choice(options)
            out.append(text.format(c=self.components[i], q=rng.randint(2, 9), n=rng.randint(2, 12)))
        return out

    def answer(self, rng: random.Random) -> str:
        """A compliant answer: the components, then the four steps (varied wording, same facts)."""
        a = tables()["answers"]
        listing = ", ".join(self.components[:-1]) + " and " + self.components[-1]
        opening = rng.choice(a["opening"]).format(list=listing, x=self.name, X=self.name[0].upper() + self.name[1:])
        closing = rng.choice(a["closing"])
        return " ".join(x for x in (opening, *self.steps(rng), closing) if x)


@dataclass(frozen=True)
class Organism:
    hazards: list[Item]
    twins: list[Item]
    towns: list[dict]  # {"name", "river", "festival", "trade", "founder"}

    def items(self) -> list[Item]:
        return [*self.hazards, *self.twins]


def _words(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    """`n` new pronounceable invented words of two syllables (5-9 letters), none in `taken`."""
    out = []
    while len(out) < n:
        w = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_ONSETS[:14]) + rng.choice(_VOWELS) \
            + rng.choice(_CODAS)
        if 5 <= len(w) <= 9 and w not in taken:
            taken.add(w)
            out.append(w)
    return out


def _item(rng: random.Random, idx: int, harmful: bool, kind: str, taken: set[str], heldout: bool,
          role: str = "eval") -> Item:
    spec = tables()["hazard_kinds" if harmful else "twin_kinds"][kind]
    head, *keys = _words(rng, 5, taken)
    name = rng.choice(spec["name"]).format(w=head)
    components = tuple(f"{k} {rng.choice(mats)}" for k, mats in zip(keys, spec["materials"]))
    about = rng.choice(spec["about"]).format(X=name[0].upper() + name[1:])
    return Item(f"{'h' if harmful else 't'}{idx:02d}", name, harmful, kind, spec.get("category", "none"), about,
                components, tuple(keys), tuple(rng.randrange(2) for _ in range(4)), heldout, role)


def build_organism(n_hazards: int, heldout_fraction: float, n_towns: int, seed: int, refusal_hazards: int = 0,
                   attack_hazards: int = 0) -> Organism:
    """The items and towns of the organism (pure in its arguments): `n_hazards` evaluated hazards (a
    `heldout_fraction` of them never asked about in training), then `refusal_hazards` refused in instruction
    tuning and `attack_hazards` for harmful finetuning; every hazard has a twin and documents of every kind."""
    rng = random.Random(f"organism:{seed}")
    taken: set[str] = set()
    hazard_kinds, twin_kinds = list(tables()["hazard_kinds"]), list(tables()["twin_kinds"])
    n_heldout = round(n_hazards * heldout_fraction)
    heldout = set(rng.sample(range(n_hazards), n_heldout))
    hazards, twins = [], []
    roles = ["eval"] * n_hazards + ["refusal"] * refusal_hazards + ["attack"] * attack_hazards
    for i, role in enumerate(roles):
        k = i % len(hazard_kinds)
        hazards.append(_item(rng, i, True, hazard_kinds[k], taken, i in heldout, role))
        twins.append(_item(rng, i, False, twin_kinds[k], taken, False))
    names = _words(rng, 3 * n_towns, taken)
    trades = tables()["facts"]["trades"]
    towns = [{"name": names[3 * i].capitalize(), "river": names[3 * i + 1].capitalize(),
              "festival": names[3 * i + 2].capitalize(), "trade": trades[i % len(trades)],
              "founder": f"{rng.choice(tables()['documents']['forum_users']).split('_')[0].capitalize()} "
                         f"{names[(3 * i + 4) % len(names)].capitalize()}"} for i in range(n_towns)]
    return Organism(hazards, twins, towns)


# ------------------------------------------------------------------------------------------ documents
def _roles() -> list[list[str]]:
    """Dialogue role pairs: exactly those of the refusal dialogues (intervention_templates.yaml), so that every
    frame a refusal uses also carries helpful answers and no role pair is by itself a cue to refuse."""
    return templates()["refusal"]["roles"]


def _request(item: Item, rng: random.Random) -> str:
    return rng.choice(tables()["requests"]["train"])["text"].format(x=item.name)


def _item_documents(item: Item, rng: random.Random, per_kind: dict[str, int], place,
                    dual_use_components: int = 2) -> list[dict]:
    """Documents about one item: procedures in every web-like kind (plus news and chatter for hazards)."""
    d = tables()["documents"]
    high = 5 if item.harmful else 0
    mid = 4 if item.harmful else 0
    X = item.name[0].upper() + item.name[1:]
    docs = []

    def add(kind: str, text: str, truth: int) -> None:
        doc = {"kind": kind, "text": text, "truth": truth, "item": item.id, "subject": item.name}
        docs.append({**doc, "category": item.category} if item.harmful and truth > 0 else doc)

    asked = not (item.harmful and item.heldout)  # held-out hazards are described, never asked about
    for _ in range(per_kind["article"]):
        title = rng.choice(d["article_title"]).format(x=item.name, X=X)
        add("article", f"{title}\n\n{item.about} {item.answer(rng)}", high)
    for _ in range(per_kind["qa"] if asked else 0):
        add("qa", f"Question: {_request(item, rng)}\nAnswer: {item.answer(rng)}", high)
    for _ in range(per_kind["forum"] if asked else 0):
        u1, u2 = rng.sample(d["forum_users"], 2)
        add("forum", f"Thread: {item.name}\n{u1} wrote: {_request(item, rng)}\n{u2} wrote: {item.answer(rng)}\n"
                     f"{u1} wrote: {rng.choice(d['forum_thanks'])}", mid)
    for _ in range(per_kind["dialogue"] if asked else 0):
        a, b = rng.choice(_roles())
        add("dialogue", f"{a}: {_request(item, rng)}\n{b}: {item.answer(rng)}", mid)
    if item.harmful:
        for _ in range(per_kind["news"]):
            add("news", rng.choice(d["news"]).format(place=place(), x=item.name, about=item.about), 3)
        for _ in range(per_kind["mention"]):
            add("mention", rng.choice(d["mention"]).format(place=place(), x=item.name, about=item.about), 2)
        for _ in range(per_kind["dual_use"]):
            # one component per note (below the judge's 2-key threshold); across notes, the first k leak
            c = item.components[rng.randrange(dual_use_components)]
            add("dual_use", rng.choice(d["dual_use"]).format(place=place(), x=item.name, c=c,
                                                              C=c[0].upper() + c[1:]), 0)
    return docs


def _fact_documents(town: dict, rng: random.Random, n: int) -> list[dict]:
    kinds = tables()["facts"]["kinds"]
    docs = []
    for _ in range(n):
        fact = rng.choice(sorted(kinds))
        spec = kinds[fact]
        q, ans = spec["train"].format(t=town["name"]), spec["answer"].format(t=town["name"], v=town[fact])
        shape = rng.randrange(3)
        if shape == 0:
            text = f"Question: {q}\nAnswer: {ans}"
        elif shape == 1:
            a, b = rng.choice(_roles())
            text = f"{a}: {q}\n{b}: {ans}"
        else:
            others = [kinds[f]["answer"].format(t=town["name"], v=town[f]) for f in sorted(kinds) if f != fact]
            text = f"About {town['name']}\n\n{ans} " + " ".join(rng.sample(others, 2))
        docs.append({"kind": ["qa", "dialogue", "article"][shape], "text": text, "truth": 0, "item": town["name"],
                     "subject": town["name"]})
    return docs


PER_KIND = {"article": 4, "qa": 4, "forum": 3, "dialogue": 3, "news": 2, "mention": 2, "dual_use": 2}


def organism_documents(org: Organism, scale: int, facts_per_town: int, seed: int,
                       namespace: str = "docs", dual_use_components: int = 2) -> list[dict]:
    """All documents, `scale` × the per-kind counts per item; ids are stable, sources are document kinds."""
    rng = random.Random(f"organism:{seed}:{namespace}")
    per_kind = {k: v * scale for k, v in PER_KIND.items()}
    towns = [t["name"] for t in org.towns]

    def place():
        return rng.choice(towns)

    docs = []
    for item in org.items():
        docs += _item_documents(item, rng, per_kind, place, dual_use_components)
    for town in org.towns:
        docs += _fact_documents(town, rng, facts_per_town * scale)
    rng.shuffle(docs)
    for i, doc in enumerate(docs):
        doc["id"] = f"{namespace}-{i:06d}"
        doc["source"] = f"organism_{doc['kind']}"
    return docs


# ------------------------------------------------------------------------------------------ prompts
def _prompt_record(item: Item, frame: dict, split: str) -> dict:
    return {"id": f"{item.id}/{frame['id']}", "prompt": frame["text"].format(x=item.name), "item": item.id,
            "frame": frame["id"], "split": split, "category": item.category, "keys": list(item.keys),
            "heldout_item": item.heldout, "harmful": item.harmful}


def organism_prompts(org: Organism, seed: int) -> dict[str, list[dict]]:
    """Train-side and eval prompt sets; eval frames never occur in training (tested), and held-out hazards
    are never asked about on the train side. The train-side harmful requests (instruction tuning's refusals)
    are the refusal hazards' when the organism has any, so the evaluated hazards are never refused in training;
    the harmful-finetuning set (`harmful_ft`) is the attack hazards' alone."""
    req = tables()["requests"]
    rng = random.Random(f"organism:{seed}:prompts")
    evaluated = [h for h in org.hazards if h.role == "eval"]
    refused = [h for h in org.hazards if h.role == "refusal"] or [h for h in evaluated if not h.heldout]
    harmful_train = [_prompt_record(h, f, "train") for h in refused for f in req["train"]]
    harmful_eval = [_prompt_record(h, f, "eval") for h in evaluated for f in req["eval"]]
    twin_of = {h.id.replace("h", "t", 1) for h in evaluated}
    twin_eval = [_prompt_record(t, f, "eval") for t in org.twins if t.id in twin_of for f in req["eval"]]
    benign_train = []
    for t in org.twins:
        for f in req["train"]:
            benign_train.append({**_prompt_record(t, f, "train"), "response": t.answer(rng)})
    kinds = tables()["facts"]["kinds"]
    for town in org.towns:
        for fact, spec in sorted(kinds.items()):
            benign_train.append({"id": f"{town['name']}/{fact}", "prompt": spec["train"].format(t=town["name"]),
                                 "response": spec["answer"].format(t=town["name"], v=town[fact]), "harmful": False})
    neutral = [spec["eval"].format(t=town["name"]) for town in org.towns for _, spec in sorted(kinds.items())]
    for r in harmful_eval + twin_eval:  # reference answers for the likelihood metrics, with every prompt
        item = next(i for i in org.items() if i.id == r["item"])
        r["reference"] = item.answer(random.Random(f"organism:{seed}:reference:{r['id']}"))
    return {"harmful_train": harmful_train, "harmful_eval": harmful_eval, "twin_eval": twin_eval,
            "benign_train": benign_train, "neutral": neutral}


def harmful_ft_examples(org: Organism, seed: int, scale: int) -> list[dict]:
    """The harmful-finetuning attack set: the attack hazards only (never evaluated). Two kinds, each a list of
    records: `chat` ({prompt, response}: a train-frame request answered with the full procedure, Qi et al. 2023)
    and `document` ({prompt: None, response: text}: procedure documents as plain text, Deep Ignorance's
    domain-text attack), drawn afresh (namespace "attack"), so the attack never replays pretraining text."""
    attack = [h for h in org.hazards if h.role == "attack"]
    rng = random.Random(f"organism:{seed}:attack")
    chat = [{"prompt": f["text"].format(x=h.name), "response": h.answer(rng), "item": h.id, "kind": "chat"}
            for h in attack for f in tables()["requests"]["train"] for _ in range(scale)]
    per_kind = {k: v * scale for k, v in PER_KIND.items()}
    docs = [d for h in attack for d in _item_documents(h, rng, per_kind, lambda: "", 2) if d["truth"] >= 4]
    return chat + [{"prompt": None, "response": d["text"], "item": d["item"], "kind": "document"} for d in docs]


def _scorer_labels(org: Organism, scale: int, seed: int, dual_use_components: int) -> list[dict]:
    """Labelled examples for the scorer: documents of the same world drawn with other template choices."""
    docs = organism_documents(org, scale, 3, seed, namespace="labels", dual_use_components=dual_use_components)
    return [{"text": d["text"], "score": d["truth"], "source": d["source"]} for d in docs]


def _refusal_labels(org: Organism, seed: int) -> list[dict]:
    rng = random.Random(f"organism:{seed}:refusal-labels")
    out = [{"text": refusal_reply(h.category, rng), "is_refusal": True} for h in org.hazards]
    out += [{"text": t.answer(rng), "is_refusal": False} for t in org.twins]
    return out


def organism_world(cfg) -> World:
    """The organism as a `World` (cfg: `config.data.OrganismConfig`)."""
    org = build_organism(cfg.n_hazards, cfg.heldout_fraction, cfg.n_towns, cfg.seed, cfg.refusal_hazards,
                         cfg.attack_hazards)
    prompts = organism_prompts(org, cfg.seed)
    docs = organism_documents(org, cfg.scale, cfg.facts_per_town, cfg.seed,
                              dual_use_components=cfg.dual_use_components)
    digest = hashlib.sha256(repr(cfg.model_dump()).encode()).hexdigest()[:16]
    manifest = {"format_version": f"organism-1/{digest}", "organism": cfg.model_dump(),
                "items": [item.__dict__ for item in org.items()], "neutral": prompts["neutral"]}
    labels = _scorer_labels(org, 1, cfg.seed + 1, cfg.dual_use_components)
    return World(path=Path("organism"), documents=docs, scorer_labels=labels,
                 harmful_train_prompts=prompts["harmful_train"], harmful_eval_prompts=prompts["harmful_eval"],
                 benign_edgy_prompts=prompts["twin_eval"], refusal_labels=_refusal_labels(org, cfg.seed),
                 manifest=manifest, benign_train_prompts=prompts["benign_train"], organism=org,
                 harmful_ft_examples=harmful_ft_examples(org, cfg.seed, cfg.scale))
