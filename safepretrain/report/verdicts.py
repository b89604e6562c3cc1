"""How the findings read: which comparison decides each verdict (`decisive`), why in one sentence, the verdict table
(claim · verdict · decisive difference [CI] · why), each claim's comparisons folded under it, and the method text.
The verdicts themselves are computed in findings.py; this file only presents them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from safepretrain.report.findings import Comparison, Finding, fmt_comparison, fmt_mdd


def _p(c: Comparison) -> float:
    return c.p_adjusted if np.isfinite(c.p_adjusted) else math.inf


def _strongest(comps: Sequence[Comparison]) -> Comparison:
    return min(comps, key=lambda c: (_p(c), -abs(c.result.diff)))


def _weakest(comps: Sequence[Comparison]) -> Comparison:
    return max(comps, key=lambda c: (_p(c), -abs(c.result.diff)))


def decisive(f: Finding) -> Comparison | None:
    """The comparison that decides the verdict, for the verdict table (presentation only: the verdict itself comes
    from the decision rules). None when a comparison could not be run (the verdict then rests on what is missing).

    - "better": the strongest comparison (smallest adjusted p) significant for the claim when supported, against
      it when contradicted, of all of them otherwise;
    - "best": supported, the shown candidate's weakest win (its closest rival); contradicted, the strongest loss;
      inconclusive, the weakest comparison of the candidate that comes closest (most wins, no loss);
    - "no_worse" / "no_better": the largest significant rise when contradicted, else the comparison whose CI
      comes closest to a rise (the bound that decides against the margin).
    """
    run = [c for c in f.comparisons if c.result is not None]
    if f.missing or not run:
        return None
    against = [c for c in run if c.outcome == "against"]
    favour = [c for c in run if c.outcome == "for"]
    if f.kind in ("no_worse", "no_better"):
        if against:
            return max(against, key=lambda c: abs(c.result.diff))
        bad = 1.0 if (f.kind == "no_worse") == f.lower_is_better else -1.0  # sign of a rise in a − b
        return max(run, key=lambda c: max(bad * c.result.lo, bad * c.result.hi))
    if f.kind == "best":
        by_cand: dict[str, list[Comparison]] = {}
        for c in run:
            by_cand.setdefault(c.a, []).append(c)
        if f.verdict == "supported":
            shown = next(cs for cs in by_cand.values() if all(c.outcome == "for" for c in cs))
            return _weakest(shown)
        if f.verdict == "contradicted":
            return _strongest(against)
        open_ = [cs for cs in by_cand.values() if not any(c.outcome == "against" for c in cs)] or list(by_cand.values())
        return _weakest(max(open_, key=lambda cs: sum(c.outcome == "for" for c in cs)))
    if f.verdict == "supported":
        return _strongest(favour)
    if f.verdict == "contradicted":
        return _strongest(against)
    return _strongest(run)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def fmt_difference(c: Comparison | None) -> str:
    """`a − b = diff [lo, hi], adj. p` of one comparison (the CI level is the table's)."""
    if c is None or c.result is None:
        return "– (not run)"
    r = c.result
    floor = " (floor/ceiling)" if "floor" in c.note else ""
    return (f"{c.a} − {c.b} = {r.diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}], adj. p = {c.p_adjusted:.3g}, "
            f"{fmt_mdd(r)}{floor}")


def why(f: Finding) -> str:
    """The decision rule's sentence without the verdict it begins with (the table has a column for it)."""
    head, sep, rest = f.reason.partition(": ")
    text = rest if sep and head.lower() == f.verdict else f.reason
    first = text.split(" ", 1)[0]
    return text[:1].upper() + text[1:] if first.isalpha() and first.islower() else text


def verdict_table(findings: Sequence[Finding]) -> list[str]:
    """claim · verdict · the decisive difference with its CI · why: one row per claim."""
    alpha = findings[0].alpha if findings else 0.05
    out = [f"| claim | verdict | decisive difference [{100 * (1 - alpha):g}% CI] | why |", "|---|---|---|---|"]
    out += [f"| {_cell(f.claim)} | **{f.verdict}** | {_cell(fmt_difference(decisive(f)))} | {_cell(why(f))} |"
            for f in findings]
    return out + [""]


def comparisons_list(findings: Sequence[Finding]) -> list[str]:
    """Each claim's comparisons as a sub-list under it (report/html.py folds every sub-list into a <details>)."""
    out = []
    for f in findings:
        direction = "lower" if f.lower_is_better else "higher"
        where = f" — `{f.metric}` at {f.stage}/{f.decoder}, {direction} is better" if f.metric else ""
        n = len(f.comparisons)
        out.append(f"- **{f.verdict}** — {f.claim}{where}; {n} comparison{'s' if n != 1 else ''}")
        out += [f"  - {fmt_comparison(c, f.alpha)}" for c in f.comparisons]
        out.append(f"  - {f.reason}")
    return out + [""]


def method_markdown(findings: Sequence[Finding]) -> list[str]:
    """How the comparisons are made and the verdicts reached, in two paragraphs."""
    alpha = findings[0].alpha if findings else 0.05
    n_boot = findings[0].n_boot if findings else 0
    n_tests = findings[0].n_tests if findings else 0
    margins = sorted({f.margin for f in findings if f.margin is not None})
    return ["Each comparison is a paired difference of two arms, mean(a) − mean(b), on the seeds and prompts both "
            f"arms share, with a {100 * (1 - alpha):g}% percentile CI from a hierarchical bootstrap ({n_boot} draws) "
            "that resamples seeds, then prompts, and applies the same draws to both arms. Per-seed metrics (probe "
            "AUROC) use an exact sign-flip test over seeds instead of the bootstrap p-value. "
            f"The p-values of all {n_tests} comparisons of all claims are Holm-corrected together (the comparisons "
            f"of one claim form its family); a comparison is significant when its adjusted p < α = {alpha:g}.",
            "",
            "Verdicts: *supported* = at least one significant comparison in the predicted direction and none "
            "against (for \"best\" claims: one candidate significantly better than every rival); *contradicted* "
            "= significant against and none for (every candidate beaten); *inconclusive* otherwise, including "
            "when an arm, stage or metric is missing. \"No rise\" claims are equivalence-like: supported only when "
            "no comparison shows a significant rise and every CI excludes a rise larger than "
            + (" / ".join(f"{m:g}" for m in margins) if margins else "the margin")
            + "; a significant rise contradicts them. With one seed the intervals cover prompt sampling only.",
            "",
            "The verdict table's decisive difference is the comparison a verdict turns on: the strongest significant "
            "one for a supported or contradicted claim (for a \"best\" claim, the shown candidate's closest rival), "
            "for an inconclusive one the comparison nearest to significance (for a \"best\" claim, the closest "
            "candidate's weakest one), and for a \"no rise\" claim the largest rise or the CI bound nearest to the "
            "margin.",
            ""]


def findings_markdown(findings: Sequence[Finding], heading: str | None = "## Findings", method: bool = True) -> str:
    """A findings section: the verdict table (one row per claim), each claim's comparisons as a sub-list under
    it, then (with `method`) how the verdicts are reached."""
    lines = [heading, ""] if heading else []
    lines += verdict_table(findings)
    lines += ["Comparisons behind each verdict (paired differences, Holm-adjusted p):", ""]
    lines += comparisons_list(findings)
    if method:
        lines += method_markdown(findings)
    return "\n".join(lines)
