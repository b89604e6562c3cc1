"""Load a built world pack (the embedded one by default).

A pack is a folder of xz-compressed JSON-lines files plus ``manifest.json`` (see ``build.py``). Each
file's sha256 is checked against the manifest while it is read, so a truncated or hand-edited pack
fails loudly instead of silently changing a study's data.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from dataclasses import dataclass, field
from pathlib import Path

FIX = "fix: run `safepretrain world build --out DIR` (or `python -m safepretrain.world.build --out DIR`)"

# World attribute → file in the pack
FILES = {
    "documents": "documents.jsonl.xz",
    "scorer_labels": "scorer_labels.jsonl.xz",
    "harmful_train_prompts": "prompts_harmful_train.jsonl.xz",
    "harmful_eval_prompts": "prompts_harmful_eval.jsonl.xz",
    "benign_edgy_prompts": "prompts_benign_edgy.jsonl.xz",
    "refusal_labels": "refusal_labels.jsonl.xz",
    "jailbreak_templates": "jailbreak_templates.jsonl.xz",
}


class WorldPackError(FileNotFoundError):
    """The pack folder or one of its files is missing or does not match its manifest."""


@dataclass(frozen=True)
class World:
    """All records of one pack, as lists of dicts (schemas in ``NOTICE.md`` / the build docs)."""

    path: Path
    documents: list[dict] = field(repr=False)
    scorer_labels: list[dict] = field(repr=False)
    harmful_train_prompts: list[dict] = field(repr=False)
    harmful_eval_prompts: list[dict] = field(repr=False)
    benign_edgy_prompts: list[dict] = field(repr=False)
    refusal_labels: list[dict] = field(repr=False)
    manifest: dict = field(repr=False)
    benign_train_prompts: list[dict] = field(default_factory=list, repr=False)
    """Natural-language benign requests with helpful answers ({prompt, response}) for instruction tuning;
    empty for packs, which then use generated instructions (world/generators.py)."""
    jailbreak_templates: list[dict] = field(default_factory=list, repr=False)
    """Single-prompt jailbreak templates ({id, name, source, text with a `{prompt}` slot}) for the template
    attack (eval/attacks/template.py); the organism reads the embedded pack's."""
    harmful_ft_examples: list[dict] = field(default_factory=list, repr=False)
    """The harmful-finetuning attack set ({prompt, response, item, kind}: `chat` answers, or `document` text with
    prompt None), about hazards that are never evaluated; empty for packs (the `harmful_ft` stage is then skipped)."""
    organism: object | None = field(default=None, repr=False)
    """The generated items with ground truth (world/organism.py) when this world is the organism."""

    def sources(self) -> list[str]:
        """Sorted names of the document sources."""
        return sorted({d["source"] for d in self.documents})


def default_pack_path() -> Path:
    """The pack embedded in the package (``safepretrain/world/pack``)."""
    return Path(__file__).resolve().parent / "pack"


def _pack_dir(pack: str | Path | None) -> Path:
    path = default_pack_path() if pack is None else Path(pack).expanduser()
    if not path.is_dir():
        raise WorldPackError(f"world pack folder {path} does not exist; {FIX}")
    return path


def read_manifest(pack: str | Path | None = None) -> dict:
    path = _pack_dir(pack) / "manifest.json"
    if not path.is_file():
        raise WorldPackError(f"world pack {path.parent} has no manifest.json; {FIX}")
    return json.loads(path.read_text(encoding="utf-8"))


def pack_sources(pack: str | Path | None = None) -> list[str]:
    """Document source names of a pack, from its manifest only (cheap; for config validation)."""
    manifest = read_manifest(pack)
    return sorted(manifest["files"][FILES["documents"]]["counts"]["by_source"])


def read_records(path: Path, expected: dict | None = None) -> list[dict]:
    """Records of one ``*.jsonl.xz`` file; checks sha256 and record count when ``expected`` is given."""
    if not path.is_file():
        raise WorldPackError(f"world pack file {path} is missing; {FIX}")
    blob = path.read_bytes()
    if expected is not None and hashlib.sha256(blob).hexdigest() != expected["sha256"]:
        raise WorldPackError(f"{path} does not match the sha256 in manifest.json (edited or truncated?); {FIX}")
    records = [json.loads(line) for line in lzma.decompress(blob).decode("utf-8").split("\n") if line]
    if expected is not None and len(records) != expected["records"]:
        raise WorldPackError(f"{path}: {len(records)} records, manifest says {expected['records']}; {FIX}")
    return records


def load_world(pack: str | Path | None = None) -> World:
    """Load a pack folder (None = the embedded pack). Raises WorldPackError with the fix if incomplete."""
    path = _pack_dir(pack)
    manifest = read_manifest(path)
    data = {attr: read_records(path / name, manifest["files"].get(name)) for attr, name in FILES.items()}
    return World(path=path, manifest=manifest, **data)
