"""`safepretrain data eval-scorer`: the scorer quality table on held-out labels and the organism's truth."""

import json
from pathlib import Path

from test_hf_scorer import tiny_model_dir

from safepretrain.cli import main

ROOT = Path(__file__).parents[1]
FAST = ["data.scorer.max_label_examples=200", "data.scorer.degenerate_negatives=20"]


def test_eval_scorer_writes_the_table_for_each_scorer_and_the_max_ensemble(tmp_path, capsys):
    model = tiny_model_dir(tmp_path / "clf")
    rc = main(["data", "eval-scorer", str(ROOT / "configs" / "smoke.yaml"), *FAST,
               "data.scorer.kind=[embedding,hf_classifier]", f"data.scorer.hf_model={model}",
               "--out", str(tmp_path / "out")])
    assert rc == 0
    result = json.loads((tmp_path / "out" / "scorer_eval.json").read_text())
    cells = {(r["set"], r["scorer"]) for r in result["rows"]}
    assert cells == {(s, k) for s in ("held-out labels", "ground truth")
                     for k in ("embedding", "hf_classifier", "max-ensemble")}
    for r in result["rows"]:
        assert r["n"] > 0 and all(0 <= r[m] <= 1 for m in ("f1_macro", "recall@1", "recall@3", "fpr@1"))
    by = {(r["set"], r["scorer"]): r for r in result["rows"]}
    for s in ("held-out labels", "ground truth"):  # the max can only raise recall
        best = max(by[(s, k)]["recall@1"] for k in ("embedding", "hf_classifier"))
        assert by[(s, "max-ensemble")]["recall@1"] >= best
    table = (tmp_path / "out" / "scorer_eval.md").read_text()
    assert "| ground truth | max-ensemble |" in table and "Recall@3" in capsys.readouterr().out


def test_eval_scorer_refuses_a_malformed_labels_file(tmp_path, capsys):
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"text": "fine", "score": 0}\n{"text": "x", "score": 9}\n')
    rc = main(["data", "eval-scorer", str(ROOT / "configs" / "smoke.yaml"), *FAST, "--labels", str(bad),
               "--out", str(tmp_path / "out")])
    assert rc == 2 and "line(s) [2]" in capsys.readouterr().err
