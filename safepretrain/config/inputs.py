"""Corpus input specs (`world.corpus`): which kind of input a spec names, checked on the local file system only.

Owned by the config layer because config validation parses specs at load; the readers (data/readers.py) read them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ACCEPTED_INPUTS = (".jsonl, .jsonl.gz or .parquet file (.json / .json.gz are read as JSON lines), a datasets "
                   "save_to_disk folder (FOLDER@SPLIT for one split of a DatasetDict), or hf:NAME[/CONFIG]@SPLIT")
"""What `ReadCorpus` accepts, for error messages."""

JSONL_SUFFIXES = (".jsonl", ".json")
GZIP_SUFFIXES = (".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class HFSpec:
    """A hub dataset input `hf:NAME[/CONFIG]@SPLIT`."""

    name: str
    config: str | None
    split: str


def parse_hf_spec(spec: str) -> HFSpec:
    """`hf:NAME@SPLIT`, `hf:OWNER/NAME@SPLIT` or `hf:OWNER/NAME/CONFIG@SPLIT` → HFSpec; ValueError otherwise.
    Two parts are read as a repo id (`owner/name`), since hub datasets are namespaced; a config needs three."""
    if not spec.startswith(HF_PREFIX):
        raise ValueError(f"{spec!r} is not a hub input; give hf:NAME[/CONFIG]@SPLIT")
    ref, at, split = spec[len(HF_PREFIX):].rpartition("@")
    parts = ref.split("/")
    if not at or not split.strip() or not ref or len(parts) > 3 or any(not p.strip() for p in parts):
        raise ValueError(f"{spec!r}: a hub input is hf:NAME@SPLIT, hf:OWNER/NAME@SPLIT or "
                         f"hf:OWNER/NAME/CONFIG@SPLIT (e.g. hf:allenai/c4/en@train)")
    if len(parts) == 3:
        return HFSpec("/".join(parts[:2]), parts[2], split)
    return HFSpec(ref, None, split)


def dataset_folder_kind(folder: Path) -> str | None:
    if (folder / "dataset_dict.json").is_file():
        return "dataset_dict"
    if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
        return "dataset"
    return None


def split_folder_spec(spec: str) -> tuple[str, str | None]:
    """(folder, split) of a `FOLDER@SPLIT` input whose folder exists; (spec, None) otherwise."""
    folder, at, split = spec.rpartition("@")
    if at and split and "/" not in split and os.sep not in split and not os.path.exists(spec) \
            and os.path.isdir(folder):
        return folder, split
    return spec, None


def input_kind(spec: str) -> str:
    """Kind of an input: `jsonl`, `jsonl.gz`, `parquet`, `dataset` (a save_to_disk folder, or `FOLDER@SPLIT`)
    or `hf`. Touches only the local file system. FileNotFoundError for a missing path, ValueError for an
    unknown extension, a folder that is not a datasets folder, an unknown split or a malformed `hf:` input; each
    message names the input and what is accepted."""
    if spec.startswith(HF_PREFIX):
        parse_hf_spec(spec)
        return "hf"
    folder, split = split_folder_spec(spec)
    path = Path(folder)
    if split is not None:
        kind = dataset_folder_kind(path)
        if kind != "dataset_dict":
            raise ValueError(f"corpus input {spec!r}: {folder} is not a DatasetDict save_to_disk folder "
                             f"(no dataset_dict.json), so it has no split {split!r}; accepted: {ACCEPTED_INPUTS}")
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        if split not in splits:
            raise ValueError(f"corpus input {spec!r}: no split {split!r} in {folder}; its splits: {splits}")
        return "dataset"
    if not path.exists():
        raise FileNotFoundError(f"corpus input {spec!r}: no such file or folder; give a {ACCEPTED_INPUTS}")
    if path.is_dir():
        if dataset_folder_kind(path) is None:
            raise ValueError(f"corpus input {spec!r}: folder is not a datasets save_to_disk folder (no "
                             f"dataset_dict.json, or state.json + dataset_info.json); accepted: {ACCEPTED_INPUTS}")
        return "dataset"
    name = path.name.lower()
    if name.endswith(GZIP_SUFFIXES):
        return "jsonl.gz"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise ValueError(f"corpus input {spec!r}: unknown format (extension {''.join(path.suffixes) or 'none'}); "
                     f"accepted: {ACCEPTED_INPUTS}")
