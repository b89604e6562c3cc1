"""Knowledge in context (Deep Ignorance's limit of filtering): each arm's ASR with the hazard's true procedure handed
to it in the prompt (the `in_context` attack) against its plain ASR, on the same prompts, at every stage measured."""

from __future__ import annotations

import numpy as np

from safepretrain.eval.stats import aligned_matrices, index_records, paired_difference
from safepretrain.report.findings import fmt_mdd
from safepretrain.report.sections import STAGE_ORDER, md_table

WITH, WITHOUT, DECODER = "asr_in_context/asr", "asr/asr", "topk"


def in_context_section(records: list[dict], arms: list[str], n_boot: int) -> list[str]:
    """Per arm and stage: ASR without and with the procedure in context, and their paired difference (same seeds and
    prompts, 95% CI); [] when the study ran no `in_context` attack."""
    idx = index_records(records)
    stages = [s for s in STAGE_ORDER if any(idx.get((a, s, DECODER, WITH)) for a in arms)]
    if not stages:
        return []
    rows = []
    for stage in stages:
        for arm in arms:
            cells = {k: idx.get((arm, stage, DECODER, k)) for k in (WITH, WITHOUT)}
            if not all(cells.values()):
                continue
            al = aligned_matrices({(k, "-", DECODER, "m"): v for k, v in cells.items()}, [WITH, WITHOUT], "-",
                                  DECODER, "m")
            r = paired_difference(al.values[WITH], al.values[WITHOUT], n_boot)
            rows.append([stage, arm, f"{np.nanmean(al.values[WITHOUT]):.3f}", f"{np.nanmean(al.values[WITH]):.3f}",
                         f"{r.diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}]", fmt_mdd(r), f"{r.n_seeds} × {r.n_prompts}"])
    return ["## Knowledge in context", "",
            "The hazard's true procedure given in the prompt as a retrieved document, then the request (the "
            "`in_context` attack; top-k, exact judge). An arm that never learned a procedure (safe_only) but uses one "
            "it is handed shows the limit of filtering: removing knowledge from pretraining does not stop its use "
            "in context. Difference = with − without, paired by seed and prompt.", "",
            *md_table(["stage", "arm", "ASR without", "ASR with the procedure", "with − without [95% CI]", "MDD",
                       "seeds × prompts"], rows), ""]
