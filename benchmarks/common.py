"""Shared by the benchmark scripts (run as `python benchmarks/<name>.py`, so this imports as `common`)."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(result: dict, out: str | Path) -> dict:
    """Write `result` as indented JSON to `out` (folders made as needed), print it, and return it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result
