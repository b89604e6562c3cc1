"""`safepretrain eval`: prompt files are read and checked before any model loads.

    python -m pytest tests/test_eval_cli.py -q
"""

import pytest

from safepretrain.cli import main
from safepretrain.run.adhoc import EvalInputError, read_prompt_file


def test_txt_jsonl_and_csv_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("first prompt\n\n  second prompt  \n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n\n{"prompt": "b", "x": 1}\n')
    (tmp_path / "p.csv").write_text("id,text\n1,hello there\n2,general kenobi\n")
    assert [p["prompt"] for p in read_prompt_file(tmp_path / "p.txt")] == ["first prompt", "second prompt"]
    assert [p["prompt"] for p in read_prompt_file(tmp_path / "p.jsonl")] == ["a", "b"]
    assert [p["prompt"] for p in read_prompt_file(tmp_path / "p.csv", "text")] == ["hello there", "general kenobi"]
    (tmp_path / "bom.txt").write_bytes("\ufeffwith a byte order mark\n".encode())
    assert read_prompt_file(tmp_path / "bom.txt")[0]["prompt"] == "with a byte order mark"


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", "\n\n", "has no prompts"),
    ("bad.jsonl", '{"prompt": "ok"}\n{broken\n', "bad.jsonl:2: not valid JSON"),
    ("field.jsonl", '{"text": "x"}\n', "no string field 'prompt'"),
    ("col.csv", "a,b\n1,2\n", "no column 'prompt'"),
    ("p.docx", "x", "unknown format"),
])
def test_bad_prompt_files_fail_with_the_file_named(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(EvalInputError, match=message):
        read_prompt_file(tmp_path / name)


def test_binary_file_is_refused(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(EvalInputError, match="not readable UTF-8"):
        read_prompt_file(tmp_path / "bin.txt")


def test_cli_refuses_before_loading_anything(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    assert main(["eval", str(tmp_path), "--task", "asr", "--prompts", str(tmp_path / "empty.txt")]) == 2
    assert "has no prompts" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--task", "nope"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--task", "asr_dan"]) == 2  # attacks are tasks: asr_<attack>
    assert "asr_gcg_adaptive" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--task", "asr", "--judge", "vibes"]) == 2
    assert "unknown judge(s) ['vibes']" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--task", "asr"]) == 2  # not a run directory
    assert "not inside a safepretrain run directory" in capsys.readouterr().err
