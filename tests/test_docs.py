"""The README stays true: its config reference matches the config models, its commands exist.

    python -m pytest tests/test_docs.py -q
"""

from pathlib import Path

from safepretrain.cli import build_parser
from safepretrain.config.study import README_MARKERS, reference_markdown

ROOT = Path(__file__).parents[1]


def test_readme_config_reference_is_current():
    text = (ROOT / "README.md").read_text()
    section = text.split(README_MARKERS[0], 1)[1].split(README_MARKERS[1], 1)[0].strip()
    assert section == reference_markdown(), (
        "README config reference is stale; regenerate it with: python -c \"from pathlib import Path; "
        "from safepretrain.config.study import update_readme; update_readme(Path('README.md'))\"")


def test_readme_two_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    assert "make study" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile and "safepretrain study $(CONFIG)" in makefile


def test_cli_subcommands_in_readme_exist():
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    readme = (ROOT / "README.md").read_text()
    for cmd in commands:
        assert f"safepretrain {cmd}" in readme
