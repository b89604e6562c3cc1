"""Security properties kept as tests: nothing unpickles, no remote code, and stored paths stay in the run.

    python -m pytest tests/test_security.py -q
"""

import re
from pathlib import Path

import pytest

from safepretrain.rundir import RunDirError, inside_run

SOURCE = sorted((Path(__file__).parents[1] / "safepretrain").rglob("*.py"))


def _code(path: Path) -> str:
    """Source without comments and docstring-only lines (the rules are about code, not prose)."""
    return "\n".join(ln.split("#", 1)[0] for ln in path.read_text().splitlines())


def test_nothing_unpickles():
    bad = []
    for path in SOURCE:
        code = _code(path)
        for pattern in (r"\bimport pickle\b", r"\bpickle\.load", r"\bjoblib\b", r"allow_pickle\s*=\s*True",
                        r"\bdill\b"):
            if re.search(pattern, code):
                bad.append(f"{path.name}: {pattern}")
        for call in re.findall(r"torch\.load\(([^)]*)\)", code):
            if "weights_only=True" not in call:
                bad.append(f"{path.name}: torch.load without weights_only=True")
    assert bad == []


def test_no_remote_code_unless_the_user_sets_it():
    offenders = [p.name for p in SOURCE if re.search(r"trust_remote_code\s*=\s*True", _code(p))]
    assert offenders == []


def test_stored_paths_cannot_leave_the_run(tmp_path):


    for stored in ("../../etc/passwd", "/tmp/x", "arms/../../../x"):
        with pytest.raises(RunDirError):
            inside_run(stored, tmp_path)
