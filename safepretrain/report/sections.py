"""What the report's metric sections show, declared once: a list of (task, metric[, decoder]) `Section`s.

A section's direction is never typed here: it is the `higher_is_better` its task declared (stored in each
results.json, read by `report/data.py: directions()`), and its arrow is computed from that (`arrow`). Adding a
metric to the report is one line in `SECTIONS`; a metric a task declares but no line lists still appears, under
"Other metrics" (`other_metrics`). Tasks and metrics absent from a run are skipped silently.

Tables pool seeds and items (data.pooled_rows) and are split by stage whenever arms × (stage · decoder) would be
wider than `MAX_VALUE_COLUMNS`, so no table scrolls sideways: a table of one stage names the stage in its first
header cell (above the arms), and the HTML sets such tables side by side where they fit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from safepretrain.eval.attacks import ATTACKS
from safepretrain.eval.decoders import DECODERS
from safepretrain.rundir import BASE, BENIGN_FT, HARMFUL_FT, IFT, NO_DECODER, STAGE_NAMES

DECODER_ORDER = [*DECODERS, NO_DECODER]
STAGE_ORDER = list(STAGE_NAMES)
STAGE_TITLES = {BASE: "base model (after pretraining)", IFT: "after instruction tuning",
                BENIGN_FT: "after benign finetuning", HARMFUL_FT: "after harmful finetuning"}
MAX_VALUE_COLUMNS = 5  # a table has the arm column and at most this many value columns

# ---- the report's sections (## headings) that metric tables go into
GENERATION = "Attack success, refusals and over-refusal (generation)"
JAILBREAKS = "Jailbreaks"
LIKELIHOOD = "Likelihood metrics (no judge)"
PROBES = "Representations (linear probes)"
CAPABILITY = "Capability"
OTHER = "Other metrics"
CURVE_GROUP = "Finetuning curves"  # read from each curve's records (data.collect_records(curve=<stage>))
TRAJECTORY_GROUP = "Safety trajectories over pretraining"  # read by trajectory.py
FRAME_PREFIX = "asr_frame_"  # ASR per request frame: `asr/asr_frame_<frame>` (eval/tasks.py)
OWN_SECTION = (f"asr/{FRAME_PREFIX}", "depth/")  # metrics with a section of their own (frame_section, depth.py)


@dataclass(frozen=True)
class Section:
    """One metric of one task in one report section. `decoder`: only that decoder (None: every decoder the metric
    was measured with); `label`: unit or how to read it; `paired`: the report also tests every arm pair on it
    (paired differences, Holm-corrected together)."""

    task: str
    metric: str
    group: str
    title: str = ""
    decoder: str | None = None
    label: str = ""
    digits: int = 2
    paired: bool = False

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"


SECTIONS: list[Section] = [
    Section("asr", "asr", GENERATION, "Attack success rate", paired=True),
    Section("asr", "harmful_rate", GENERATION, "Harmful outputs, relevant or not"),
    Section("asr", "refusal_rate", GENERATION, "Refusals of harmful prompts", paired=True),
    Section("asr", "short_circuit_rate", GENERATION, "SafeBeam short-circuits on harmful prompts"),
    Section("overrefusal", "overrefusal", GENERATION, "Over-refusal of benign-but-edgy prompts", paired=True),
    Section("overrefusal", "short_circuit_rate", GENERATION, "SafeBeam short-circuits on benign prompts"),
    Section("overrefusal", "helpfulness", GENERATION, "Correct answers to benign twins"),
    *(Section(f"asr_{attack}", "asr", JAILBREAKS, f"ASR under the `{attack}` attack") for attack in ATTACKS),
    *(Section(f"asr_{attack}", "refusal_rate", JAILBREAKS, f"Refusals under the `{attack}` attack")
      for attack in ATTACKS),
    *(Section(f"asr_{attack}", "harmful_rate", JAILBREAKS, f"Harmful outputs under the `{attack}` attack")
      for attack in ATTACKS),
    Section("likelihood", "forced_choice", LIKELIHOOD, "Forced choice: compliance preferred to a held-out refusal",
            digits=3, paired=True),
    Section("likelihood", "benign_refusal", LIKELIHOOD, "Refusal preferred on the benign twins", digits=3),
    Section("likelihood", "compliance_gap", LIKELIHOOD, "Refusal margin (compliance gap)", label="nats/token",
            digits=3, paired=True),
    Section("likelihood", "harm_specificity", LIKELIHOOD, "Harm specificity of the refusal margin",
            label="AUROC; 0.5 = chance", digits=3, paired=True),
    Section("likelihood", "harm_specificity_twin", LIKELIHOOD, "Harm specificity against benign twins", digits=3),
    Section("likelihood", "harm_specificity_neutral", LIKELIHOOD, "Harm specificity against neutral prompts",
            digits=3),
    Section("likelihood", "tag_first_harmful", LIKELIHOOD, "p(tag) as the first token after harmful prompts",
            digits=3),
    *(Section("probe", m, PROBES, t, label="best layer; cross-validated, pairs kept in one fold") for m, t in (
        ("auroc_best", "Probe AUROC, best pooling"), ("auroc_last_best", "Probe AUROC, last content token"),
        ("auroc_mean_best", "Probe AUROC, mean-pooled"),
        ("auroc_random_init_best", "Probe AUROC of a random-init model of the same shape"))),
    Section("heldout_loss", "loss", CAPABILITY, "Held-out loss", label="nats/token", digits=3),
    Section("asr", "asr", CURVE_GROUP, digits=3),
    Section("likelihood", "forced_choice", CURVE_GROUP, digits=3),
    Section("likelihood", "compliance_gap", CURVE_GROUP, digits=3),
    Section("heldout_loss", "loss", CURVE_GROUP, digits=3),
    Section("asr", "asr", TRAJECTORY_GROUP, "ASR, top-k (fraction)", decoder="topk"),
    Section("likelihood", "compliance_gap", TRAJECTORY_GROUP, "refusal margin (nats/token)", decoder=NO_DECODER),
    Section("probe", "auroc_best", TRAJECTORY_GROUP, "probe AUROC, best layer", decoder=NO_DECODER),
]
# sections read from the final models' pooled rows (the curve and the trajectory read their own files)
TABLE_GROUPS = [GENERATION, JAILBREAKS, LIKELIHOOD, PROBES, CAPABILITY]


def sections_of(group: str, sections: Sequence[Section] = SECTIONS) -> list[Section]:
    return [s for s in sections if s.group == group]


def paired_metrics(sections: Sequence[Section] = SECTIONS) -> list[str]:
    """`task/metric` of every section whose arm differences the report tests, in declaration order."""
    return list(dict.fromkeys(s.key for s in sections if s.paired))


# ---- directions and arrows
ARROWS = {True: "↑", False: "↓"}


def arrow(higher: bool | None) -> str:
    """The arrow of a declared direction (higher is better → up); empty when the task declares none."""
    return "" if higher is None else ARROWS[bool(higher)]


def direction_text(higher: bool | None) -> str:
    if higher is None:
        return "no declared direction"
    return f"{arrow(higher)} {'higher' if higher else 'lower'} is better"


# ---- formatting
def fmt_ci(r: Mapping | None, digits: int = 2) -> str:
    """`mean [low, high]` of a pooled row; an en dash when there is none."""
    if r is None or r["value"] is None or (isinstance(r["value"], float) and math.isnan(r["value"])):
        return "–"
    return f"{r['value']:.{digits}f} [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]"


def order(values: Iterable, known: list[str]) -> list:
    """`values` in the order of `known`, unknown ones after them, alphabetically."""
    return sorted(values, key=lambda v: (known.index(v) if v in known else len(known), v))


def stage_title(stage: str) -> str:
    return f"`{stage}`: {STAGE_TITLES[stage]}" if stage in STAGE_TITLES else f"`{stage}`"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def metric_heading(section: Section, higher: bool | None, ns: Iterable[str] = ()) -> str:
    title = section.title or section.key
    label = f"; {section.label}" if section.label else ""
    size = sorted(set(ns))
    n = f"; seeds × items = {', '.join(size)}" if size else ""
    name = f" (`{section.key}`)" if section.title else ""
    return f"**{title}**{name} — {direction_text(higher)}{label} (pooled mean [95% CI]{n})"


def metric_tables(pooled: Sequence[Mapping], arms: Sequence[str], section: Section, higher: bool | None,
                  max_columns: int = MAX_VALUE_COLUMNS) -> list[str]:
    """One metric, arms as rows, pooled over seeds; empty when it was not measured. One table when its (stage ·
    decoder) columns fit in `max_columns`, else one table per stage (decoders as columns), chunked if needed."""
    sel = [r for r in pooled if r["task"] == section.task and r["metric"] == section.metric
           and (section.decoder is None or r["decoder"] == section.decoder)]
    if not sel:
        return []
    idx = {(r["arm"], r["stage"], r["decoder"]): r for r in sel}
    stages = order({r["stage"] for r in sel}, STAGE_ORDER)
    decoders = order({r["decoder"] for r in sel}, DECODER_ORDER)
    cols = [(s, d) for s in stages for d in decoders if any(k[1:] == (s, d) for k in idx)]
    out = [metric_heading(section, higher, (str(r["n"]) for r in sel)), ""]

    def table(columns: list[tuple[str, str]], stage: str | None) -> list[str]:
        """Arms × columns. A table of one stage names it in its first header cell and its decoders above the
        columns; else the columns say what tells them apart (stage, decoder or both)."""
        def head(s: str, d: str) -> str:
            if stage is not None:
                return s if d == NO_DECODER else d
            return s if len(decoders) == 1 else f"{s} · {d}"
        return md_table([f"`{stage}`" if stage is not None else "arm", *(head(s, d) for s, d in columns)],
                        ([a, *(fmt_ci(idx.get((a, s, d)), section.digits) for s, d in columns)] for a in arms)) + [""]

    if len(cols) <= max_columns:  # one table
        if len(decoders) == 1 and decoders[0] != NO_DECODER and len(stages) > 1:
            out += [f"*decoder `{decoders[0]}`*", ""]
        return out + table(cols, stages[0] if len(stages) == 1 else None)
    for stage in stages:  # too wide: a table per stage, decoders as columns (side by side in the HTML)
        here = [c for c in cols if c[0] == stage]
        for i in range(0, len(here), max_columns):
            out += table(here[i:i + max_columns], stage)
    return out


def other_metrics(pooled: Sequence[Mapping], higher: Mapping[str, bool],
                  sections: Sequence[Section] = SECTIONS) -> tuple[list[Section], list[str], list[tuple[str, int]]]:
    """What no section lists: (sections for the declared metrics with pooled rows; declared metrics without
    per-item records to pool; (pattern, count) of the undeclared metrics, `task/name` with a trailing layer number
    as `*`)."""
    listed = {s.key for s in sections if s.group in TABLE_GROUPS}
    present = [k for k in dict.fromkeys(f"{r['task']}/{r['metric']}" for r in pooled) if not k.startswith(OWN_SECTION)]
    extra = [Section(*key.split("/", 1), OTHER, digits=3) for key in present if key not in listed and key in higher]
    unpooled = sorted(k for k in higher if k not in listed and k not in present and not k.startswith(OWN_SECTION))
    undeclared: dict[str, int] = {}
    for key in present:
        if key not in listed and key not in higher:
            pattern = re.sub(r"_\d+$", "_*", key)
            undeclared[pattern] = undeclared.get(pattern, 0) + 1
    return extra, unpooled, sorted(undeclared.items())
