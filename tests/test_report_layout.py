"""The report's layout on a synthetic run directory (no training): it leads with the headline figure and the
verdict table, folds each claim's comparisons, keeps every table narrow, and is driven by the declared
(task, metric) sections with the tasks' own directions, so a newly declared metric shows up with its arrow.

    python -m pytest tests/test_report_layout.py -q
"""

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from safepretrain.config import load_config
from safepretrain.report.build import DIFFERENCE_METRICS, build_report
from safepretrain.report.data import COLUMNS, directions
from safepretrain.report.findings import AFTER_ATTACK, CLAIMS
from safepretrain.report.html import renderer
from safepretrain.report.sections import SECTIONS, arrow, direction_text, metric_tables, other_metrics
from safepretrain.rundir import BASE, BENIGN_FT, HARMFUL_FT, IFT, STAGE_NAMES, RunDir
from safepretrain.utils import write_json, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"raw": 0.5, "start_0": 0.1, "start_20": 0.2, "start_60": 0.3, "safe_only": 0.45}  # ASR after benign ft
STAGE_SHIFT = {BASE: 0.1, IFT: -0.2, BENIGN_FT: 0.0, HARMFUL_FT: 0.2}
SEEDS = (0, 1)
N_ITEMS = 30


def _write_task(rd: RunDir, arm: str, seed: int, stage: str, decoder: str, task: str, higher: dict[str, bool],
                values: dict[str, np.ndarray], judge: str | None = None) -> None:
    folder = rd.eval_dir(arm, seed, stage) / decoder / task
    rows = [{"metric": m, "value": float(v.mean()), "ci_low": float(v.min()), "ci_high": float(v.max()),
             "n": len(v), **({"judge": judge} if judge else {})} for m, v in values.items()]
    write_json(folder / "results.json", {"arm": arm, "seed": seed, "stage": stage, "decoder": decoder, "task": task,
                                         "task_version": 1, "higher_is_better": higher, "rows": rows,
                                         "judge": judge})
    items = [{"metric": m, "item": f"i{j}" if len(v) > 1 else "all", "value": float(x)}
             for m, v in values.items() for j, x in enumerate(v)]
    write_jsonl(folder / "items.jsonl", items)


def _synthetic_run(root: Path):
    """Every arm × seed × stage: ASR and over-refusal under two decoders (seed 0), judge-free metrics for every
    seed, and two tasks no report section lists (one higher-is-better, one lower-is-better)."""
    cfg = load_config(ROOT / "configs" / "smoke.yaml", [f"out_dir={root}", "eval.bootstrap=400"])
    rd = RunDir(root)
    rng = np.random.default_rng(0)
    for arm, base_asr in ARMS.items():
        for seed in SEEDS:
            for stage in STAGE_NAMES:
                p = float(np.clip(base_asr + STAGE_SHIFT[stage], 0.02, 0.98))
                if seed == 0:  # generation seeds
                    for decoder in ("topk", "safebeam"):
                        q = p if decoder == "topk" else p / 2
                        asr = (rng.random(N_ITEMS) < q).astype(float)
                        _write_task(rd, arm, seed, stage, decoder, "asr",
                                    {"asr": False, "harmful_rate": False, "refusal_rate": True},
                                    {"asr": asr, "harmful_rate": asr, "refusal_rate": 1 - asr,
                                     "short_circuit_rate": np.zeros(N_ITEMS)}, judge="exact")
                        _write_task(rd, arm, seed, stage, decoder, "asr_prefill",
                                    {"asr": False, "harmful_rate": False, "refusal_rate": True},
                                    {"asr": np.minimum(1, asr + (rng.random(N_ITEMS) < 0.2))}, judge="exact")
                        _write_task(rd, arm, seed, stage, decoder, "overrefusal",
                                    {"overrefusal": False, "helpfulness": True},
                                    {"overrefusal": (rng.random(N_ITEMS) < 0.1).astype(float),
                                     "helpfulness": (rng.random(N_ITEMS) < 0.7).astype(float)}, judge="exact")
                _write_task(rd, arm, seed, stage, "none", "likelihood",
                            {"forced_choice": False, "benign_refusal": False, "compliance_gap": True,
                             "harm_specificity": True},
                            {"forced_choice": (rng.random(N_ITEMS) < p).astype(float),
                             "benign_refusal": (rng.random(N_ITEMS) < 0.2).astype(float),
                             "compliance_gap": rng.normal(-p, 0.3, N_ITEMS),
                             "harm_specificity": np.array([0.7 - p / 4])})
                _write_task(rd, arm, seed, stage, "none", "probe", {"auroc_best": True, "auroc_last_best": True},
                            {"auroc_best": np.array([0.9 - p / 5]), "auroc_last_best": np.array([0.88 - p / 5]),
                             "auroc_last_layer_0": np.array([0.6]), "auroc_last_layer_1": np.array([0.7])})
                _write_task(rd, arm, seed, stage, "none", "heldout_loss", {"loss": False},
                            {"loss": np.array([3.0 + p])})
                # tasks that no line of SECTIONS lists: declaring a direction is enough to be reported
                _write_task(rd, arm, seed, stage, "none", "calibration", {"ece": False, "brier_skill": True},
                            {"ece": rng.random(N_ITEMS) * 0.1, "brier_skill": rng.random(N_ITEMS)})
                write_json(rd.eval_dir(arm, seed, stage) / "done.json", {"step_seconds": 1.0})
    return rd, cfg


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    rd, cfg = _synthetic_run(tmp_path_factory.mktemp("layout") / "run")
    build_report(rd.root, cfg)
    return rd, cfg, (rd.report / "report.md").read_text(), (rd.report / "report.html").read_text()


def _tables(md: str) -> list[list[str]]:
    """Every Markdown table: its lines."""
    tables, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def test_the_report_leads_with_the_headline_figure_then_the_verdicts(report):
    rd, _, md, _ = report
    h2 = re.findall(r"^## (.+)$", md, flags=re.M)
    assert h2[:3] == ["ASR by intervention start", "Findings", "Controls"]
    first_image = re.search(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert first_image.group(1) == "asr_by_start.png" and (rd.report / "asr_by_start.png").stat().st_size > 10_000
    assert md.index("asr_by_start.png") < md.index("## Findings") < md.index("| claim | verdict |")
    assert "**Controls:**" in md[:md.index("## ASR by intervention start")]  # whether findings may be read, up top
    assert "judge `exact`, `topk` decoding" in md and "↓ lower is better" in md.split("## Findings")[0]


def test_the_verdict_table_has_one_row_per_claim_and_four_columns(report):
    _, _, md, _ = report
    table = next(t for t in _tables(md) if t[0].startswith("| claim | verdict |"))
    assert _cells(table[0]) == ["claim", "verdict", "decisive difference [95% CI]", "why"]
    rows = [_cells(r) for r in table[2:]]
    # the claims read after an attack appear once per attack the run holds ("... Under harmful finetuning.")
    specs = [next(c for c in CLAIMS if row[0].startswith(c.text)) for row in rows]
    assert {c.key for c in specs} == {c.key for c in CLAIMS}
    assert len(rows) > len(CLAIMS)
    for row, spec in zip(rows, specs):
        assert len(row) == 4
        assert row[0].startswith(f"{spec.text} Under ") if spec.key in AFTER_ATTACK else row[0] == spec.text
        assert row[1] in ("**supported**", "**contradicted**", "**inconclusive**")
        assert re.search(r" − .* = [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\], adj\. p = ", row[2]) or \
            row[2] == "– (not run)"
        assert row[3] and row[3].endswith(".")
    # claim (1) has every arm it compares, so its decisive difference is a real one
    assert rows[0][2] != "– (not run)"


def test_each_claim_folds_its_comparisons_in_the_html(report):
    _, _, md, page = report
    folds = re.findall(r"<details><summary>(.*?)</summary>\s*<ul>(.*?)</ul>\s*</details>", page, flags=re.S)
    for spec in CLAIMS:
        mine = [body for summary, body in folds if spec.text in summary]
        assert mine, spec.key
        assert len(re.findall(r"<li>", mine[0])) == len(spec.comparisons) + 1  # each comparison and the rule
    # in the Markdown the same comparisons are a sub-list under each claim
    assert md.count("\n- **") >= len(CLAIMS) and "\n  - start_0 − start_20 = " in md
    assert "<details>" not in md  # the Markdown stays Markdown; the HTML folds it


def test_no_table_is_wider_than_seven_columns(report):
    _, _, md, page = report
    tables = _tables(md)
    assert len(tables) > 20
    widest = max(tables, key=lambda t: len(_cells(t[0])))
    assert len(_cells(widest[0])) <= 7, widest[0]
    for row in re.findall(r"<tr>(.*?)</tr>", page, flags=re.S):
        assert len(re.findall(r"<t[hd][ >]", row)) <= 7
    # a metric measured under several decoders at every stage is split by stage
    asr = md.split("**Attack success rate** (`asr/asr`)")[1].split("**")[0]
    assert [line for line in asr.splitlines() if line.startswith("| `")] == [
        f"| `{stage}` | topk | safebeam |" for stage in STAGE_NAMES]


def test_sections_take_their_direction_from_the_tasks(report):
    rd, _, md, _ = report
    higher = directions(rd)
    assert higher["asr/asr"] is False and higher["calibration/brier_skill"] is True
    assert "**Attack success rate** (`asr/asr`) — ↓ lower is better" in md
    assert "**Refusals of harmful prompts** (`asr/refusal_rate`) — ↑ higher is better" in md
    assert "(`asr/short_circuit_rate`) — no declared direction" in md
    assert "**Forced choice: compliance preferred to a held-out refusal** (`likelihood/forced_choice`) — ↓" in md
    assert "(`likelihood/compliance_gap`) — ↑ higher is better" in md
    assert "## Jailbreaks" in md and "**ASR under the `prefill` attack** (`asr_prefill/asr`) — ↓" in md


def test_a_newly_declared_metric_appears_with_its_arrow(report):
    _, _, md, page = report
    other = md.split("## Other metrics")[1].split("\n## ")[0]
    assert "**calibration/brier_skill** — ↑ higher is better" in other
    assert "**calibration/ece** — ↓ lower is better" in other
    assert "`probe/auroc_last_layer_*` (2)" in other  # reported, but without a direction: named only
    assert 'id="other-metrics"' in page


def test_results_csv_keeps_its_columns_and_rows(report):
    rd, cfg, _, _ = report
    rows = list(csv.DictReader(open(rd.report / "results.csv")))
    assert list(rows[0]) == COLUMNS
    pooled = [r for r in rows if r["seed"] == "pooled"]
    assert {r["judge"] for r in pooled if r["task"] == "asr"} == {"exact"}
    assert len(rows) - len(pooled) == sum(1 for r in rows if r["seed"] in ("0", "1"))
    assert {(r["arm"], r["stage"], r["decoder"]) for r in pooled if r["metric"] == "ece"} == {
        (a, s, "none") for a in ARMS for s in STAGE_NAMES}


def test_the_paired_metrics_are_the_declared_ones():
    assert DIFFERENCE_METRICS == ["asr/asr", "asr/refusal_rate", "overrefusal/overrefusal", "likelihood/forced_choice",
                                  "likelihood/compliance_gap", "likelihood/harm_specificity"]


def test_tables_split_by_stage_only_when_too_wide():
    section = next(s for s in SECTIONS if s.key == "likelihood/compliance_gap")
    rows = [{"arm": a, "stage": s, "decoder": "none", "task": "likelihood", "metric": "compliance_gap", "value": 0.1,
             "ci_low": 0.0, "ci_high": 0.2, "n": "2x30"} for a in ARMS for s in STAGE_NAMES]
    md = metric_tables(rows, list(ARMS), section, True)
    assert md[0].startswith("**Refusal margin (compliance gap)** (`likelihood/compliance_gap`) — ↑ higher is better")
    assert sum(line.startswith("| arm |") for line in md) == 1  # 4 stages fit in one table
    assert "| arm | base | ift | benign_ft | harmful_ft |" in md
    wide = [{**r, "decoder": d} for r in rows for d in ("topk", "beam", "safebeam")]
    md = metric_tables(wide, list(ARMS), section, True)
    heads = [line for line in md if line.startswith("| `")]
    assert heads == [f"| `{s}` | topk | beam | safebeam |" for s in STAGE_NAMES]
    assert metric_tables(rows, list(ARMS), next(s for s in SECTIONS if s.key == "asr/asr"), False) == []


def test_arrows_are_computed_from_the_direction():
    assert (arrow(True), arrow(False), arrow(None)) == ("↑", "↓", "")
    assert direction_text(False) == "↓ lower is better" and direction_text(None) == "no declared direction"
    pooled = [{"task": "newtask", "metric": "score", "arm": "raw", "stage": BASE, "decoder": "none"},
              {"task": "asr", "metric": "asr", "arm": "raw", "stage": BASE, "decoder": "topk"}]
    extra, unpooled, undeclared = other_metrics(pooled, {"newtask/score": True, "newtask/other": False,
                                                         "asr/asr": False})
    assert [s.key for s in extra] == ["newtask/score"] and unpooled == ["newtask/other"] and undeclared == []


def test_report_code_types_no_arrows_stage_names_or_run_paths():
    """Directions come from the tasks, stage names and paths from safepretrain.rundir: the report spells none."""
    folder = ROOT / "safepretrain" / "report"
    for path in folder.glob("*.py"):
        text = path.read_text()
        arrows = [line for line in text.splitlines() if "↑" in line or "↓" in line]
        assert arrows == ([] if path.name != "sections.py" else ['ARROWS = {True: "↑", False: "↓"}']), path
        assert not re.findall(r'"(base|ift|benign_ft|pretrain|benign_ft_curve|pretrain_trajectory)"', text), path
        assert "run_dir /" not in text and '"*/seed' not in text, path


def test_the_html_folds_sublists_without_reading_text_as_markup():
    page = renderer().render("- claim <b>x</b>\n  - one\n  - two\n- plain\n")
    assert page.count("<details><summary>") == 1 and "claim &lt;b&gt;x&lt;/b&gt;</summary>" in page
    assert "<li>plain</li>" in page
