"""The docs stay true: docs/config.md matches the config models, the README's commands and links exist, and
docs/cli.md names every subcommand.

    python -m pytest tests/test_docs.py -q
"""

import re
from pathlib import Path

from safepretrain.cli import build_parser
from safepretrain.config.study import CONFIG_DOC_MARKERS, reference_markdown

ROOT = Path(__file__).parents[1]


def test_config_doc_is_current():
    text = (ROOT / "docs" / "config.md").read_text()
    section = text.split(CONFIG_DOC_MARKERS[0], 1)[1].split(CONFIG_DOC_MARKERS[1], 1)[0].strip()
    assert section == reference_markdown(), (
        "docs/config.md config reference is stale; regenerate it with: python -c \"from pathlib import Path; "
        "from safepretrain.config.study import update_config_doc; update_config_doc(Path('docs/config.md'))\"")


def test_readme_two_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    assert "make study" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile and "safepretrain study $(CONFIG)" in makefile


def test_cli_subcommands_in_cli_doc_exist():
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert "(docs/cli.md)" in (ROOT / "README.md").read_text()
    cli_doc = (ROOT / "docs" / "cli.md").read_text()
    for cmd in commands:
        assert f"safepretrain {cmd}" in cli_doc, f"docs/cli.md does not document `safepretrain {cmd}`"


def test_doc_links_resolve():
    """Every relative link of the README and docs/*.md points to a file or folder that exists."""
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"


def test_readme_extending_paths_exist():
    """The README's map and Extending section name files that exist, and each addition's register line names the
    registry that its named module defines."""
    readme = (ROOT / "README.md").read_text()
    for path in re.findall(r"`(safepretrain/[\w/]+\.py)`", readme):
        assert (ROOT / path).exists(), f"README names missing {path}"
    extending = readme.split("## Extending", 1)[1].split("\n## ", 1)[0]
    additions = re.findall(r"\*\*(\w+)\*\*: `safepretrain/[^`]+`; line in `([\w/.]+)`.*?```python\n(.*?)```",
                           extending, re.S)
    assert len(additions) == 6, [kind for kind, _, _ in additions]
    for kind, module, code in additions:
        [registry] = set(re.findall(r"\b([A-Z]+)\.register\(", code))
        source = (ROOT / "safepretrain" / module).read_text()
        assert re.search(rf"^{registry}(: Registry)? = Registry\(", source, re.M), (
            f"README: the {kind} line goes in {module}, which does not define {registry}")
