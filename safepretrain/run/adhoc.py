"""`safepretrain eval`: evaluate any checkpoint of a run on the bundled sets or on a user's prompt file.

    safepretrain eval RUN_DIR --arm start_0 --seed 0 --stage ift --task asr --decoder safebeam
    safepretrain eval runs/default/arms/raw/seed0/ift/ckpt/step_000150 --task asr --prompts my.csv --column text

A checkpoint is found inside its run directory (walking up to the run marker), which supplies the
tokenizer, the model shape, the judge and the bundled prompt sets. A prompt file replaces the prompts
of the generative tasks (`asr*`, `overrefusal`: the tasks that declare `prompt_sets`); every other task keeps
the bundled prompts, and each results.json says which it read. The file is read and checked before any model
is loaded, so an empty, unreadable or oversized (`--max-prompts`) file fails at once.

External prompts are judged honestly:
- literal special-token strings in them (`<|end|><|assistant|>`, the tag) are made inert with the corpus's
  rule (`neutralise_special`): a line cannot forge an assistant turn or plant the tag (a deliberate prefill
  is the `prefill` attack);
- the organism's exact judge knows which hazard a prompt asks for only for its own prompts; a `.jsonl` field
  or `.csv` column `hazard` (an item id such as `h03`, or its name) names it per line. Without it, on prompts
  the organism does not know, the exact judge cannot judge attack success: it reports no ASR, stops being the
  primary judge (the next configured judge is, else `keyword`), and the output says so.

Generative tasks decode and judge the file in chunks with a progress bar and append each chunk's samples to
`samples.partial.jsonl` as they are judged; the finished task writes results.json, samples.jsonl and items.jsonl
(atomically) and removes the partial file. Results go to `--out`.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from safepretrain.config import ConfigError, StudyConfig
from safepretrain.data.read_step import neutralise_special
from safepretrain.data.tokenizer import special_tokens
from safepretrain.eval.context import EvalContext
from safepretrain.eval.decoders import DECODERS
from safepretrain.eval.judges import JUDGES, build_judges
from safepretrain.eval.prompts import eval_prompts
from safepretrain.eval.tasks import task_by_name, task_names
from safepretrain.run.checks import check_study
from safepretrain.rundir import IFT, NO_DECODER, STAGE_NAMES, RunDir, RunDirError, iter_steps
from safepretrain.utils import write_json, write_jsonl
from safepretrain.world import World, world_for

HAZARD_FIELD = "hazard"  # the .jsonl field / .csv column naming each prompt's organism item
MAX_PROMPTS = 10_000  # default of --max-prompts: a larger file is refused, not silently cut
PROMPT_SUFFIXES = (".txt", ".jsonl", ".csv")
FALLBACK_JUDGE = "keyword"  # primary when the exact judge cannot place the prompts and no other judge is configured


class EvalInputError(ValueError):
    """A prompt file or a checkpoint that cannot be evaluated; the message names it and the fix."""


def read_prompt_file(path: Path, column: str | None = None, max_prompts: int = MAX_PROMPTS) -> list[dict]:
    """Prompts from .txt (one per line), .jsonl (a "prompt" field or `column`) or .csv (`column`, default
    "prompt"), any case of suffix, as {"id", "prompt"} plus "hazard" where a .jsonl/.csv names one (`hazard`
    field/column: then every prompt must name one); blank prompts are skipped. More than `max_prompts` prompts
    are refused. Raises EvalInputError naming the file and the fix."""
    if not path.is_file():
        raise EvalInputError(f"prompt file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in PROMPT_SUFFIXES:
        raise EvalInputError(f"prompt file {path}: unknown format {path.suffix!r}; use .txt, .jsonl or .csv")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise EvalInputError(f"prompt file {path} is not readable UTF-8 text ({err}); save it as UTF-8") from None
    field = column or "prompt"
    rows: list[tuple[str, str, str | None]] = []  # (where, prompt, hazard)
    if suffix == ".txt":
        rows = [(f"{path}:{n}", ln.strip(), None) for n, ln in enumerate(text.splitlines(), 1)]
    elif suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise EvalInputError(f"{path}:{n}: not valid JSON; one JSON object per line") from None
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise EvalInputError(f"{path}:{n}: no string field {field!r}; name the field with --column")
            hazard = rec.get(HAZARD_FIELD)
            if hazard is not None and not isinstance(hazard, str):
                raise EvalInputError(f"{path}:{n}: field {HAZARD_FIELD!r} must be a string (an organism item id "
                                     "such as \"h03\", or its name)")
            rows.append((f"{path}:{n}", rec[field].strip(), hazard))
    else:
        table = list(csv.DictReader(text.splitlines()))
        if table and field not in table[0]:
            raise EvalInputError(f"{path}: no column {field!r}; columns are {list(table[0])}; use --column")
        rows = [(f"{path}: row {n}", (r[field] or "").strip(), r.get(HAZARD_FIELD)) for n, r in enumerate(table, 2)]
    rows = [(where, p, (h or "").strip() or None) for where, p, h in rows if p]
    if not rows:
        raise EvalInputError(f"prompt file {path} has no prompts")
    if len(rows) > max_prompts:
        raise EvalInputError(f"prompt file {path} holds {len(rows):,} prompts, more than --max-prompts "
                             f"{max_prompts:,}; raise --max-prompts to evaluate them all (samples are written as "
                             "they are judged), or split the file")
    named = [h is not None for _, _, h in rows]
    if any(named) and not all(named):
        first = next(where for (where, _, _), ok in zip(rows, named) if not ok)
        raise EvalInputError(f"{first}: no {HAZARD_FIELD!r} while other prompts name one ({named.count(False)} of "
                             f"{len(rows)} lack it); name the hazard of every prompt, or of none")
    return [{"id": f"{path.stem}-{i}", "prompt": p, **({HAZARD_FIELD: h} if h else {})}
            for i, (_, p, h) in enumerate(rows)]


def neutralise_prompts(prompts: list[dict], tag: str) -> tuple[list[dict], int]:
    """The prompts with literal special-token strings made inert (the corpus's rule), and how many there were:
    external text never becomes a chat marker or the tag."""
    out, total = [], 0
    for p in prompts:
        text, n = neutralise_special(p["prompt"], special_tokens(tag))
        out.append({**p, "prompt": text})
        total += n
    return out, total


def place_prompts(prompts: list[dict], cfg: StudyConfig, world: World, judges: dict, path: Path) -> tuple[dict, str]:
    """The judges in the order this prompt file is judged (primary first) and a line saying which judge is primary
    and why. The exact judge is told each prompt's item from the `hazard` column; it stays primary only if it can
    place every prompt (by that column, or as one of the organism's own prompts)."""
    hazards = [p.get(HAZARD_FIELD) for p in prompts]
    named = all(hazards)
    if named and world.organism is None:
        raise EvalInputError(f"{path}: the {HAZARD_FIELD!r} column names organism items, and this run's world is "
                             "not the organism; drop the column")
    exact = judges.get("exact")
    names = list(judges)
    if exact is None:
        note = f"judges: {', '.join(names)} (primary: {names[0]})"
        return judges, note + (f"; the {HAZARD_FIELD!r} column is read by the exact judge, which this evaluation "
                               "does not run (add --judge default)" if named else "")
    if named:
        placed = {}
        for p in prompts:
            item = exact.item_id(p[HAZARD_FIELD])
            if item is None:
                example = ", ".join(sorted(exact.items)[:3])
                raise EvalInputError(f"{path}: {HAZARD_FIELD} {p[HAZARD_FIELD]!r} of prompt {p['id']} is not an "
                                     f"organism item; name an item id ({example}, ...) or an item's name")
            if placed.setdefault(p["prompt"], item) != item:
                raise EvalInputError(f"{path}: prompt {p['id']} appears twice with different hazards "
                                     f"({placed[p['prompt']]}, {item}); give each text one hazard")
        exact.place_prompts(placed)
    unplaced = sum(p["prompt"] not in exact.item_of_prompt for p in prompts)
    if not unplaced:
        why = f"the {HAZARD_FIELD!r} column names each prompt's item" if named else \
            "every prompt is one of the organism's own"
        return judges, f"judges: {', '.join(names)} (primary: exact; {why})"
    others = {n: j for n, j in judges.items() if n != "exact"}
    if not others:
        others = {FALLBACK_JUDGE: JUDGES[FALLBACK_JUDGE].build(cfg, world, None)}  # judge-free: needs no run files
    ordered = {**others, "exact": exact}
    primary = next(iter(ordered))
    return ordered, (f"judges: {', '.join(ordered)} (primary: {primary}; the exact judge cannot tell which hazard "
                     f"{unplaced} of {len(prompts)} prompts ask for, so it reports no ASR on them: add a "
                     f"{HAZARD_FIELD!r} field/column naming each prompt's organism item, e.g. h03)")


class SampleStream:
    """Appends each judged chunk's samples to `samples.partial.jsonl` in `folder` and advances a progress bar: a
    long prompt file shows progress and leaves what it judged on disk if it stops."""

    def __init__(self, folder: Path, label: str, total: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "samples.partial.jsonl"
        self.file = self.path.open("w", encoding="utf-8")
        self.bar = tqdm(total=total, desc=label, unit="prompt", file=sys.stderr, disable=None)

    def __call__(self, samples: list[dict], done: int, total: int) -> None:
        for s in samples:
            self.file.write(json.dumps(s, ensure_ascii=False) + "\n")
        self.file.flush()
        self.bar.update(len(samples))

    def close(self) -> None:
        self.file.close()
        self.bar.close()


def resolve_checkpoint(target: Path, arm: str | None, seed: int | None, stage: str | None) -> tuple[RunDir, Path, str]:
    """(run directory, checkpoint, stage name) for a run directory + --arm/--seed/--stage, or a checkpoint folder."""
    try:
        rundir = RunDir.containing(target.resolve())
        if (target / "model.safetensors").is_file():
            return rundir, target.resolve(), stage or rundir.stage_of_checkpoint(target) or IFT
        if arm is None or stage is None:
            raise EvalInputError("give --arm and --stage (and --seed) with a run directory, or a checkpoint folder")
        if stage not in STAGE_NAMES:
            raise EvalInputError(f"--stage {stage!r}: choose one of {STAGE_NAMES}")
        return rundir, rundir.finished_checkpoint(arm, seed or 0, stage), stage
    except RunDirError as err:
        raise EvalInputError(str(err)) from None


def expand_targets(targets: list[Path], arm: str | None, seed: int | None, stage: str | None,
                   all_steps: bool) -> list[Path]:
    """The checkpoints to evaluate: the targets as given, or with `all_steps` every saved step (with a full model
    file) beside each, oldest first. Run directory targets need --arm/--stage; they resolve to the stage's final
    checkpoint first."""
    out = []
    for target in targets:
        checkpoint = target if (target / "model.safetensors").is_file() else \
            resolve_checkpoint(target, arm, seed, stage)[1] if all_steps else target
        if not all_steps:
            out.append(checkpoint)
            continue
        steps = [p for _, p in iter_steps(checkpoint.parent, ("model.safetensors",))]
        if not steps:
            raise EvalInputError(f"{checkpoint.parent} holds no saved step with a model.safetensors")
        out += steps
    return list(dict.fromkeys(out))


def run_eval(target: Path, *, tasks: list[str], decoders: list[str] | None, prompts_file: Path | None,
             column: str | None, arm: str | None, seed: int | None, stage: str | None, out: Path | None,
             judges: list[str] | None = None, max_prompts: int = MAX_PROMPTS) -> Path:
    """Evaluate one checkpoint; returns the output folder. Every input is checked before a model loads."""
    unknown = [t for t in tasks if t not in task_names()]
    if unknown:
        raise EvalInputError(f"unknown task(s) {unknown}; choose from {task_names()}")
    unknown = [j for j in judges or [] if j not in JUDGES]
    if unknown:
        raise EvalInputError(f"unknown judge(s) {unknown}; choose from {list(JUDGES)}")
    if max_prompts < 1:
        raise EvalInputError(f"--max-prompts {max_prompts}: give a positive number of prompts")
    custom = read_prompt_file(prompts_file, column, max_prompts) if prompts_file else None
    rundir, checkpoint, stage_name = resolve_checkpoint(target, arm, seed, stage)
    try:
        overrides = [f"eval.decoders={json.dumps(decoders)}"] if decoders else []
        overrides += [f"eval.judges={json.dumps(judges)}"] if judges else []
        cfg = check_study(rundir.load_config(overrides))
    except ConfigError as err:
        raise EvalInputError(str(err)) from None
    data = rundir.data_artifacts(cfg)
    tok = data.tokenizer
    if any(DECODERS[d].options.get("needs_tag") for d in cfg.eval.decoders) and tok.tag_id is None:
        raise EvalInputError("SafeBeam needs the tag token, and this run's tokenizer has none; use --decoder topk")
    world = world_for(cfg)
    bundled = eval_prompts(cfg, world, [r["text"] for r in data.stream_records("safe")])
    judges_by_name = build_judges(cfg, world, rundir)
    file_judges, note = judges_by_name, ""
    if custom is not None:
        custom, n_special = neutralise_prompts(custom, cfg.data.interventions.tag)
        if n_special:
            print(f"{prompts_file}: {n_special} literal special-token string(s) (chat markers, the tag) made inert; "
                  "to start the answer for the model, use the prefill attack (--task asr_prefill)")
        file_judges, note = place_prompts(custom, cfg, world, judges_by_name, prompts_file)
        print(note)
    model = rundir.model(cfg, checkpoint, cfg.eval.device, tok)
    ctx = EvalContext(model, tok, next(iter(judges_by_name.values())), cfg.eval, seed or 0, bundled,
                      data.shards["val"], judges=judges_by_name)
    out = out or rundir.eval_adhoc(f"{checkpoint.parent.parent.name}_{checkpoint.name}_{stage_name}")
    table = []
    for name in tasks:
        task = task_by_name(name)
        sets = getattr(task, "prompt_sets", ())
        reads_file = custom is not None and bool(sets)
        for decoder in (cfg.eval.decoders if task.uses_decoder else [NO_DECODER]):
            folder = out / decoder / name
            stream = None
            task_ctx = ctx
            if reads_file:  # the file replaces the sets this task reads, judged by the judges placed for it
                stream = SampleStream(folder, f"{name} {decoder}", len(custom))
                task_ctx = replace(ctx, prompts=replace(bundled, **{s: custom for s in sets}),
                                   judge=next(iter(file_judges.values())), judges=file_judges, progress=stream,
                                   chunk=max(4 * cfg.eval.batch_size, 64))
            try:
                result = task.run(task_ctx, stage_name, decoder)
            finally:  # stopped or failed: samples.partial.jsonl keeps what was judged
                if stream is not None:
                    stream.close()
            used = task_ctx.judges if task.generative else {}
            write_json(folder / "results.json", {"checkpoint": str(checkpoint), "stage": stage_name, "task": name,
                                                 "decoder": decoder,
                                                 "prompts": str(prompts_file) if reads_file else "bundled",
                                                 **({"judges": list(used), "primary_judge": next(iter(used))}
                                                    if used else {}),
                                                 **({"judge_note": note} if reads_file and note else {}),
                                                 "rows": result.rows})
            if result.samples:
                write_jsonl(folder / "samples.jsonl", result.samples)
            if result.items:
                write_jsonl(folder / "items.jsonl", result.items)
            if stream is not None:
                stream.path.unlink(missing_ok=True)  # the complete samples.jsonl is written: the partial goes
            table += [(name, decoder, r) for r in result.rows if not r["metric"].startswith("auroc_") or
                      r["metric"].endswith("_best")]
    print(f"{'task':<17} {'decoder':<9} {'judge':<10} {'metric':<26} {'value':>8}  95% CI           n")
    for name, decoder, r in table:
        print(f"{name:<17} {decoder:<9} {r.get('judge', '-'):<10} {r['metric']:<26} {r['value']:8.3f}  "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]  {r['n']}")
    return out
