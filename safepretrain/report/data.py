"""Read a run directory's evaluation outputs back: aggregate rows, per-item records, curves, directions,
completeness.

Everything the report shows comes from files, so `safepretrain report RUN_DIR` rebuilds it without
recomputing anything. Paths and globs come from `safepretrain.rundir.RunDir`, the one owner of the layout.
"""

from __future__ import annotations

from pathlib import Path

from safepretrain.config import StudyConfig
from safepretrain.eval.stats import hierarchical_bootstrap_mean, index_records, sample_matrix
from safepretrain.rundir import BENIGN_FT, IFT, STAGE_NAMES, RunDir
from safepretrain.utils import read_json, read_jsonl

COLUMNS = ["arm", "seed", "stage", "decoder", "task", "judge", "metric", "value", "ci_low", "ci_high", "n"]


def as_rundir(run_dir: Path | str | RunDir) -> RunDir:
    """The report's functions take a run directory as a path or a `RunDir`."""
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)


# ---- files RunDir has no method for (yet): one helper each
def curve_stage(step: int, stage: str = BENIGN_FT) -> str:
    """The stage label of a finetuning curve point in records and pooled rows: `<stage>@<step>`."""
    return f"{stage}@{step}"


def curve_step(stage: str) -> int:
    return int(stage.split("@")[1])


def collect_rows(run_dir: Path | RunDir, arms: list[str]) -> list[dict]:
    """Aggregate rows of every finished evaluation of the configured `arms` (one row per model and metric)."""
    rows = []
    for path in as_rundir(run_dir).results_files():
        res = read_json(path)
        if res["arm"] not in arms:
            continue  # an arm removed from the config: its files stay, its rows leave the report
        for r in res["rows"]:
            rows.append({"arm": res["arm"], "seed": res["seed"], "stage": res["stage"], "decoder": res["decoder"],
                         "task": res["task"], "judge": r.get("judge", ""),
                         **{k: r[k] for k in ("metric", "value", "ci_low", "ci_high", "n")}})
    return rows


def collect_records(run_dir: Path | RunDir, arms: list[str], curve: str | None = None) -> list[dict]:
    """Per-item records `{arm, seed, stage, decoder, metric: task/metric, item, value}` (eval/stats.py).

    With `curve` (a finetuning stage), that stage's curve instead, with stage `<stage>@<step>` (`curve_stage`). Its
    step 0 is the model the finetuning started from, the IFT model, whose own evaluation is not repeated on the curve
    (eval/runner.py): its records of the curve's (decoder, metric)s are step 0."""
    out = []
    for path in as_rundir(run_dir).items_files(curve=curve):
        res = read_json(path.with_name("results.json"))
        if res["arm"] not in arms:
            continue
        stage = curve_stage(res["ft_step"], curve) if curve else res["stage"]
        for it in read_jsonl(path):
            out.append({"arm": res["arm"], "seed": res["seed"], "stage": stage, "decoder": res["decoder"],
                        "metric": f"{res['task']}/{it['metric']}", "item": it["item"], "value": it["value"]})
    if curve and out:
        measured = {(r["decoder"], r["metric"]) for r in out}
        out += [{**r, "stage": curve_stage(0, curve)} for r in collect_records(run_dir, arms)
                if r["stage"] == IFT and (r["decoder"], r["metric"]) in measured]
    return out


def directions(run_dir: Path | RunDir) -> dict[str, bool]:
    """`task/metric` → higher is better (or safer), as each task declared it (`higher_is_better` of its
    results.json); a metric no task declared has no direction."""
    out = {}
    for path in as_rundir(run_dir).results_files():
        res = read_json(path)
        out.update({f"{res['task']}/{m}": v for m, v in res.get("higher_is_better", {}).items()})
    return out


def pooled_rows(records: list[dict], arms: list[str], n_boot: int) -> list[dict]:
    """One row per (arm, stage, decoder, metric): the mean over seeds and items with a hierarchical bootstrap
    CI (seeds, then items); `seed` is "pooled" and `n` says seeds × items."""
    idx = index_records(records)
    keys = sorted({(r["arm"], r["stage"], r["decoder"], r["metric"]) for r in records})
    rows = []
    for arm, stage, decoder, metric in keys:
        if arm not in arms:
            continue
        m = sample_matrix(idx, arm, stage, decoder, metric)
        value, lo, hi = hierarchical_bootstrap_mean(m, n_boot=n_boot, seed=0)
        task, name = metric.split("/", 1)
        rows.append({"arm": arm, "seed": "pooled", "stage": stage, "decoder": decoder, "task": task, "metric": name,
                     "value": value, "ci_low": lo, "ci_high": hi, "n": f"{m.shape[0]}x{m.shape[1]}"})
    return rows


def missing_evaluations(run_dir: Path | RunDir, cfg: StudyConfig) -> list[str]:
    """(arm, seed, stage) evaluations that have not finished: a report built without them says so."""
    rd = as_rundir(run_dir)
    missing = []
    for seed in cfg.seeds:
        for arm in cfg.curriculum.arms:
            for stage in STAGE_NAMES:
                if not rd.eval_done_file(arm.name, seed, stage).is_file():
                    missing.append(f"{arm.name} seed {seed} {stage}")
    return missing
