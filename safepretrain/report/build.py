"""The study report: results.csv, report.md (+ report.html) and plots, leading with its answer.

Order: the title and a summary (arms, seeds, whether the controls passed); the headline figure (ASR by
intervention start, a line per stage, with CIs); the verdict table (claim · verdict · the decisive difference
with its CI · why), each claim's comparisons folded under it; the controls; then the metric sections, driven by
the declared (task, metric) list of `report/sections.py` with each direction read from the tasks'
`higher_is_better` (a metric no line lists appears under "Other metrics"); the trajectory and the benign-
finetuning curve; every paired arm difference; data, tokens and judges.

Numbers are pooled over seeds and items with a hierarchical bootstrap (seeds, then items); arm differences
are paired by seed and item and Holm-corrected across every comparison listed (eval/stats.py). The
findings section states, for each of the papers' claims, supported / contradicted / inconclusive
(findings.py). Everything is read back from the run directory (report/data.py); paths come from `RunDir`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from safepretrain.config import StudyConfig
from safepretrain.eval.stats import aligned_matrices, holm, index_records, paired_difference
from safepretrain.report.controls import attack_controls_passed, control_checks, controls_markdown, controls_summary
from safepretrain.report.data import (
    COLUMNS,
    as_rundir,
    collect_records,
    collect_rows,
    curve_step,
    directions,
    missing_evaluations,
    pooled_rows,
)
from safepretrain.report.depth import depth_section
from safepretrain.report.findings import (
    CLAIMS,
    FINETUNE_TITLES,
    attack_readings,
    claims_under_attacks,
    evaluate_claims,
    fmt_mdd,
    gate_by_controls,
)
from safepretrain.report.html import write_html_report
from safepretrain.report.in_context import in_context_section
from safepretrain.report.judges import gcg_effect, jailbreak_intro, judges_section
from safepretrain.report.plots import plot_asr_vs_start, plot_headline, plot_probe_layers
from safepretrain.report.provenance import data_and_judge, data_scale, stage_tokens, tokens_table
from safepretrain.report.sections import (
    CAPABILITY,
    CURVE_GROUP,
    DECODER_ORDER,
    FRAME_PREFIX,
    GENERATION,
    JAILBREAKS,
    LIKELIHOOD,
    MAX_VALUE_COLUMNS,
    NO_DECODER,
    OTHER,
    PROBES,
    STAGE_TITLES,
    Section,
    arrow,
    direction_text,
    fmt_ci,
    md_table,
    metric_tables,
    order,
    other_metrics,
    paired_metrics,
    sections_of,
)
from safepretrain.report.tamper import tamper_section
from safepretrain.report.trajectory import trajectory_section
from safepretrain.report.verdicts import findings_markdown, method_markdown
from safepretrain.rundir import BASE, HARMFUL_FT, IFT, RunDir
from safepretrain.utils import log, read_json, write_csv, write_text_atomic
from safepretrain.world import world_for

# metrics whose arm differences the report tests, per (stage, decoder) where they exist: the `paired` sections
DIFFERENCE_METRICS = paired_metrics()
# judge-free stand-ins for the findings: generation ASR of ~1M-parameter models sits at a floor
LIKELIHOOD_ROLES = {"asr": ("likelihood/forced_choice", True), "overrefusal": ("likelihood/benign_refusal", True)}
HEADLINE = "asr_by_start.png"


def style_prior_caveat(pooled: list[dict], weak: float = 0.6) -> list[str]:
    """A warning when no model's refusal preference tracks harm more than weakly (harm specificity below
    `weak` everywhere; 0.5 = chance): the forced choice then reads a style prior (which reference text the
    model finds likelier), not harm recognition, whatever the verdicts say."""
    spec = [r for r in pooled if r["task"] == "likelihood" and r["metric"] == "harm_specificity"]
    if not spec or max(r["value"] for r in spec) >= weak:
        return []
    best = max(spec, key=lambda r: r["value"])
    return [f"**Caveat:** harm specificity is below {weak:.2f} in every arm and stage (0.5 = chance; highest "
            f"{fmt_ci(best)}, {best['arm']} {best['stage']}): no model's preference for refusal depends more than "
            "weakly on whether the prompt is harmful. The verdicts below then mostly describe a style prior — "
            "which kind of answer text each model finds likelier — not harm recognition; do not read them as "
            "evidence about safety.", ""]


def paired_differences(records: list[dict], arms: list[str], n_boot: int, alpha: float = 0.05) -> list[str]:
    """Every arm pair × (stage, decoder) for DIFFERENCE_METRICS, paired by seed and item, Holm-corrected
    across all of them; lists the significant ones, a sub-list per metric (folded in the HTML)."""
    idx = index_records(records)
    tests = []
    keys = sorted({(r["metric"], r["stage"], r["decoder"]) for r in records if r["metric"] in DIFFERENCE_METRICS})
    for metric, stage, decoder in keys:
        for i, a in enumerate(arms):
            for b in arms[i + 1:]:
                m = aligned_matrices(idx, [a, b], stage, decoder, metric)
                if m.missing or not m.seeds:
                    continue
                tests.append((metric, stage, decoder, a, b, paired_difference(m.values[a], m.values[b], n_boot)))
    if not tests:
        return ["No paired comparisons could be made (fewer than two arms with common seeds and items).", ""]
    adjusted = holm([t[-1].p_value for t in tests])
    hits = [(t, p) for t, p in zip(tests, adjusted) if p < alpha]
    out = [f"{len(tests)} paired comparisons (arm pairs × stage × decoder for {', '.join(DIFFERENCE_METRICS)}), "
           f"Holm-corrected together; {len(hits)} significant at adjusted p < {alpha}:", ""]
    for metric in DIFFERENCE_METRICS:
        mine = [(t, p) for t, p in hits if t[0] == metric]
        if not mine:
            continue
        out.append(f"- `{metric}`: {len(mine)} of {sum(t[0] == metric for t in tests)} significant")
        for (_, stage, decoder, a, b, r), p in mine:
            out.append(f"  - {stage}, {decoder}: {a} − {b} = {r.diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}], "
                       f"adj. p = {p:.3g} ({r.n_seeds} seeds × {r.n_prompts} items; {fmt_mdd(r)})")
    return out + [""]


def curve_table(curve_pooled: list[dict], arms: list[str], section: Section, higher: bool | None,
                along: str = "benign finetuning") -> list[str]:
    """A metric along a finetuning curve and its area per step: steps as rows, arms as columns (in tables of at
    most MAX_VALUE_COLUMNS arms)."""
    pooled = [r for r in curve_pooled if r["task"] == section.task and r["metric"] == section.metric]
    if not pooled:
        return []
    steps = sorted({curve_step(r["stage"]) for r in pooled})
    idx = {(r["arm"], curve_step(r["stage"])): r for r in pooled}
    area = {}
    for arm in arms:
        vals = [idx[(arm, s)]["value"] if (arm, s) in idx else math.nan for s in steps]
        area[arm] = (sum((vals[i] + vals[i + 1]) / 2 * (steps[i + 1] - steps[i]) for i in range(len(steps) - 1))
                     / max(1, steps[-1] - steps[0])) if len(steps) > 1 else vals[0]
    out = [f"**`{section.key}`** — {direction_text(higher)} — along {along} (pooled over seeds; area = "
           "trapezoid mean over steps)", ""]
    for i in range(0, len(arms), MAX_VALUE_COLUMNS):
        part = arms[i:i + MAX_VALUE_COLUMNS]
        out += md_table(["step", *part], [*([f"step {s}", *(fmt_ci(idx.get((a, s)), section.digits) for a in part)]
                                            for s in steps),
                                          ["**area**", *(f"{area[a]:.3f}" for a in part)]]) + [""]
    return out


def probe_section(run_dir: Path | RunDir, pooled: list[dict], arms: list[str], higher: dict[str, bool]) -> list[str]:
    rd = as_rundir(run_dir)
    out = [f"## {PROBES}", ""] + group_tables(pooled, arms, PROBES, higher)
    base = rd.probe_baselines_file
    if base.is_file():
        b = read_json(base)
        out += [f"Text-only baselines on the same prompts and folds (negatives: {b['negatives']}): "
                + ", ".join(f"{r['metric'].removeprefix('baseline_')} {fmt_ci(r, 3)}" for r in b["rows"])
                + ". A model probe shows learned structure only where it beats these and the random-init model.", ""]
    return out + ["![probe AUROC by layer](probe_auroc.png)", ""]


def heldout_hazard_section(records: list[dict], arms: list[str], cfg: StudyConfig, n_boot: int,
                           higher: dict[str, bool] | None = None) -> list[str]:
    """Organism only: ASR split into hazards that training asked about and held-out hazards that pretraining only
    described (never in a request): does what a model learnt about refusing reach hazards it was never asked
    about? Pooled over seeds and prompts like every table; the direction is ASR's."""
    if cfg.world.kind != "organism":
        return []
    heldout = {r["id"] for r in world_for(cfg).harmful_eval_prompts if r["heldout_item"]}
    split = [{**r, "metric": "asr/asr_" + ("heldout_hazards" if r["item"] in heldout else "asked_hazards")}
             for r in records if r["metric"] == "asr/asr"]
    if not split:
        return []
    pooled = pooled_rows(split, arms, n_boot)
    out = ["### ASR on hazards asked about in training vs held-out hazards (organism)", "",
           "Held-out hazards appear in pretraining articles and news only; no request about them is ever trained on.",
           ""]
    for metric, title in (("asr_asked_hazards", "ASR on hazards asked about in training"),
                          ("asr_heldout_hazards", "ASR on held-out hazards")):
        out += metric_tables(pooled, arms, Section("asr", metric, GENERATION, title), (higher or {}).get("asr/asr"))
    return out


def group_tables(pooled: list[dict], arms: list[str], group: str, higher: dict[str, bool]) -> list[str]:
    """The tables of one report section, in the order its metrics are declared; absent metrics are skipped."""
    out = []
    for section in sections_of(group):
        out += metric_tables(pooled, arms, section, higher.get(section.key), MAX_VALUE_COLUMNS)
    return out


def frame_section(pooled: list[dict], arms: list[str], stages: tuple[str, ...] = (BASE, IFT)) -> list[str]:
    """ASR per request frame (top-k, pooled over seeds and prompts), a table per stage; a frame where the raw arm's
    base ASR is 0 measures nothing on the organism and is marked (the rule that drops a frame reads raw only)."""
    sel = {(r["arm"], r["stage"], r["metric"].removeprefix(FRAME_PREFIX)): r for r in pooled
           if r["task"] == "asr" and r["decoder"] == "topk" and r["metric"].startswith(FRAME_PREFIX)}
    frames = sorted({f for _, _, f in sel})
    if not frames:
        return []
    out = ["### ASR per request frame", "",
           "Top-k ASR in each held-out request frame (pooled over seeds and the frame's prompts); † = the raw arm's "
           "base-model ASR is 0 in this frame (it measures nothing).", ""]
    for stage in (s for s in stages if any(k[1] == s for k in sel)):
        cols = [a for a in arms if any((a, stage, f) in sel for f in frames)]
        dead = {f for f in frames if (r := sel.get(("raw", BASE, f))) is not None and r["value"] == 0}
        out += md_table([stage, *cols], ([f"{f}{' †' if f in dead else ''}",
                                          *(fmt_ci(sel.get((a, stage, f)), 2) for a in cols)] for f in frames))
        out.append("")
    return out


def other_section(pooled: list[dict], arms: list[str], higher: dict[str, bool]) -> list[str]:
    """Metrics the tasks report that no section lists: declared ones get tables (so declaring a metric in a task
    is enough for it to appear), the rest are named."""
    extra, unpooled, undeclared = other_metrics(pooled, higher)
    if not (extra or unpooled or undeclared):
        return []
    out = [f"## {OTHER}", ""]
    if extra:
        out += ["Metrics a task declares (`higher_is_better`) that no line of `report/sections.py: SECTIONS` "
                "lists yet:", ""]
        for section in extra:
            out += metric_tables(pooled, arms, section, higher.get(section.key), MAX_VALUE_COLUMNS)
    if unpooled:
        out += ["Declared, without per-item values to pool (per-seed rows in results.csv): "
                + ", ".join(f"`{k}` {arrow(higher[k])}" for k in unpooled) + ".", ""]
    if undeclared:
        out += ["Without a declared direction (per-seed and pooled rows in results.csv): "
                + ", ".join(f"`{k}` ({n})" if n > 1 else f"`{k}`" for k, n in undeclared) + ".", ""]
    return out


def headline_section(pooled: list[dict], cfg: StudyConfig, higher: dict[str, bool], primary: dict[str, str],
                     out: Path) -> list[str]:
    """The report's first figure: ASR by intervention start, a line per stage, top-k (or the first decoder with
    ASR), pooled over seeds and prompts with 95% CIs."""
    starts = {a.name: a.start for a in cfg.curriculum.arms}
    have = {r["decoder"] for r in pooled if r["task"] == "asr" and r["metric"] == "asr"}
    decoders = order(have, DECODER_ORDER)
    lines = ["## ASR by intervention start", ""]
    if not decoders:
        return lines + ["No attack success rate in this run (no generation evaluation finished).", ""]
    decoder = decoders[0]
    judge = primary.get("asr", "")
    plot_headline(pooled, starts, higher, out / HEADLINE, decoder=decoder, judge=judge)
    raw = [a for a, s in starts.items() if s is None]
    return lines + [f"![ASR by intervention start, a line per stage]({HEADLINE})", "",
                    f"Attack success rate ({direction_text(higher.get('asr/asr'))}; judge `{judge or '–'}`, "
                    f"`{decoder}` decoding) of each arm by the point of pretraining where its interventions start, "
                    "a line per stage; mean over seeds and prompts with its 95% CI (hierarchical bootstrap)"
                    + (f"; {', '.join(raw)} (no intervention) on the right" if raw else "")
                    + ". Every stage × decoder: the generation section's tables and asr_vs_start.png.", ""]


def summary_lines(rd: RunDir, cfg: StudyConfig, arms: list[str], wall_s: float | None, checks) -> list[str]:
    lines = [f"# Study `{cfg.name}`", ""]
    missing = missing_evaluations(rd, cfg)
    if missing:
        lines += [f"**INCOMPLETE REPORT**: {len(missing)} evaluation(s) have not finished and are not in any table: "
                  + ", ".join(missing) + ". Rerun the study to complete them.", ""]
    if wall_s is not None:
        lines += [f"Wall time of the run that wrote this report: {wall_s / 60:.1f} min (cached steps are skipped)."]
    gen = cfg.eval.generation_seeds or cfg.seeds
    lines += [f"Arms: {', '.join(arms)}. Seeds: {cfg.seeds} (generation for {gen}). Pretraining budget: "
              f"{cfg.curriculum.token_budget:,} tokens per arm. Every table pools seeds and items; per-seed rows "
              "are in results.csv.", ""]
    summary = controls_summary(checks)
    return lines + ([summary, ""] if summary else [])


def build_report(run_dir: Path | RunDir, cfg: StudyConfig, wall_s: float | None = None) -> Path:
    rd = as_rundir(run_dir)
    arms = [a.name for a in cfg.curriculum.arms]
    n_boot = cfg.eval.bootstrap
    out = rd.report
    log.info(f"report: {len(arms)} arms × {len(cfg.seeds)} seeds → {out}")
    rows = collect_rows(rd, arms)
    records = collect_records(rd, arms)
    pooled = pooled_rows(records, arms, n_boot)
    primary: dict[str, str] = {}  # per-item records are the primary judge's: its rows come first in each file
    for r in rows:
        if r.get("judge"):
            primary.setdefault(r["task"], r["judge"])
    for r in pooled:
        r["judge"] = primary.get(r["task"], "")
    write_csv(rows + pooled, out / "results.csv", COLUMNS)
    higher = directions(rd)
    plot_asr_vs_start(pooled, {a.name: a.start for a in cfg.curriculum.arms}, out / "asr_vs_start.png", higher)
    plot_probe_layers(pooled, arms, out / "probe_auroc.png", higher)
    checks = control_checks(records, n_boot=n_boot)
    # (1), (2), (3), (6) are read under every attack; under one whose control failed they stay inconclusive
    findings = gate_by_controls(evaluate_claims(records, claims_under_attacks(attack_readings(records)), n_boot=n_boot),
                                attack_controls_passed(checks))

    lines = summary_lines(rd, cfg, arms, wall_s, checks)
    lines += headline_section(pooled, cfg, higher, primary, out)
    lines += [findings_markdown(findings, method=False), ""]
    # the judge-free stand-ins do not decode; claim (3) is about SafeBeam decoding and has no stand-in
    likelihood_claims = [replace(c, decoder=NO_DECODER) for c in CLAIMS if c.decoder in ("topk", NO_DECODER)]
    lines += ["### The same claims on the judge-free likelihood metrics", "",
              "ASR of models this small can sit at a floor; the forced choice (share of harmful prompts where the "
              "model prefers compliance to a held-out refusal) and `benign_refusal` (the same preference reversed "
              "on the benign twins) measure the same tendencies without a judge or a decoder.", ""]
    lines += style_prior_caveat(pooled)
    lines += [findings_markdown(evaluate_claims(records, likelihood_claims, metrics=LIKELIHOOD_ROLES, n_boot=n_boot),
                                heading=None, method=False), ""]
    lines += ["### How the verdicts are reached", ""] + method_markdown(findings)
    lines += [controls_markdown(checks), ""]

    lines += [f"## {GENERATION}", "",
              "`beam` is plain beam search of SafeBeam's width and pick rule: SafeBeam's effect is the gap between "
              "the two. Short-circuits (SafeBeam stopped at the tag) are their own outcome, not refusals. A metric "
              "measured under several decoders has a table per stage, named in its first header cell: "
              + ", ".join(f"`{s}` ({t})" for s, t in STAGE_TITLES.items()) + ".", ""]
    lines += group_tables(pooled, arms, GENERATION, higher)
    lines += heldout_hazard_section(records, arms, cfg, n_boot, higher)
    lines += frame_section(pooled, arms)
    lines += ["![ASR and refusals vs start, every stage and decoder](asr_vs_start.png)", ""]
    if cfg.eval.attacks:
        lines += [f"## {JAILBREAKS}", ""] + jailbreak_intro(cfg) + group_tables(pooled, arms, JAILBREAKS, higher)
        lines += gcg_effect(rd)
    lines += [f"## {LIKELIHOOD}", ""] + group_tables(pooled, arms, LIKELIHOOD, higher)
    lines += probe_section(rd, pooled, arms, higher)
    lines += [f"## {CAPABILITY}", ""] + group_tables(pooled, arms, CAPABILITY, higher)
    lines += other_section(pooled, arms, higher)
    lines += trajectory_section(rd, cfg, higher)
    for stage, title in FINETUNE_TITLES.items():
        curve_records = collect_records(rd, arms, curve=stage)
        if not curve_records:
            continue
        curve = pooled_rows(curve_records, arms, n_boot)
        if stage == HARMFUL_FT:  # its own heading, summary and plot, then the curve tables
            lines += tamper_section(records, curve_records, arms, cfg.harmful_ft.steps, cfg.harmful_ft.data, out,
                                    n_boot)
        else:
            lines += [f"## {title.capitalize()} as a curve", ""]
        for section in sections_of(CURVE_GROUP):
            lines += curve_table(curve, arms, section, higher.get(section.key), along=title)
    lines += in_context_section(records, arms, n_boot)
    lines += depth_section(records, arms, out, n_boot)
    lines += ["## Paired arm differences", ""] + paired_differences(records, arms, n_boot)
    lines += ["## Tokens by source (pretraining)", ""] + data_scale(rd, cfg)
    lines += tokens_table(rd, arms, cfg.seeds)
    lines += stage_tokens(rd, cfg, arms, cfg.seeds)
    lines += data_and_judge(rd)
    lines += judges_section(rd, rows)
    write_text_atomic(out / "report.md", "\n".join(lines))
    write_html_report(rd, cfg)
    return out / "report.md"
