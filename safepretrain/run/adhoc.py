"""`safepretrain eval`: evaluate any checkpoint of a run on the bundled sets or on a user's prompt file.

    safepretrain eval RUN_DIR --arm start_0 --seed 0 --stage ift --task asr --decoder safebeam
    safepretrain eval runs/default/arms/raw/seed0/ift/ckpt/step_000150 --task asr --prompts my.csv --column text

A checkpoint is found inside its run directory (walking up to the run marker), which supplies the
tokenizer, the model shape, the judge and the bundled prompt sets. A prompt file replaces the prompts
of the generative tasks (`asr`, `overrefusal`); it is read and checked before any model is loaded, so an
empty or unreadable file fails at once. Results go to `--out` (results.json, samples.jsonl, items.jsonl).
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

from safepretrain.config import ConfigError
from safepretrain.eval.context import EvalContext
from safepretrain.eval.decoders import DECODERS
from safepretrain.eval.judges import JUDGES, build_judges
from safepretrain.eval.prompts import eval_prompts
from safepretrain.eval.tasks import task_by_name, task_names
from safepretrain.run.checks import check_study
from safepretrain.rundir import IFT, NO_DECODER, STAGE_NAMES, RunDir, RunDirError, iter_steps
from safepretrain.utils import write_json, write_jsonl
from safepretrain.world import world_for


class EvalInputError(ValueError):
    """A prompt file or a checkpoint that cannot be evaluated; the message names it and the fix."""


def read_prompt_file(path: Path, column: str | None = None) -> list[dict]:
    """Prompts from .txt (one per line), .jsonl (a "prompt" field or `column`) or .csv (`column`, default
    "prompt"), as {"id", "prompt"}; blank prompts are skipped. Raises EvalInputError naming the file."""
    if not path.is_file():
        raise EvalInputError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise EvalInputError(f"prompt file {path} is not readable UTF-8 text ({err}); save it as UTF-8") from None
    field = column or "prompt"
    if path.suffix == ".txt":
        prompts = [ln.strip() for ln in text.splitlines()]
    elif path.suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise EvalInputError(f"{path}:{n}: not valid JSON; one JSON object per line") from None
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise EvalInputError(f"{path}:{n}: no string field {field!r}; name the field with --column")
            prompts.append(rec[field].strip())
    elif path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and field not in rows[0]:
            raise EvalInputError(f"{path}: no column {field!r}; columns are {list(rows[0])}; use --column")
        prompts = [(r[field] or "").strip() for r in rows]
    else:
        raise EvalInputError(f"prompt file {path}: unknown format {path.suffix!r}; use .txt, .jsonl or .csv")
    prompts = [p for p in prompts if p]
    if not prompts:
        raise EvalInputError(f"prompt file {path} has no prompts")
    return [{"id": f"{path.stem}-{i}", "prompt": p} for i, p in enumerate(prompts)]


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
             judges: list[str] | None = None) -> Path:
    """Evaluate one checkpoint; returns the output folder. Every input is checked before a model loads."""
    unknown = [t for t in tasks if t not in task_names()]
    if unknown:
        raise EvalInputError(f"unknown task(s) {unknown}; choose from {task_names()}")
    unknown = [j for j in judges or [] if j not in JUDGES]
    if unknown:
        raise EvalInputError(f"unknown judge(s) {unknown}; choose from {list(JUDGES)}")
    custom = read_prompt_file(prompts_file, column) if prompts_file else None
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
    prompts = eval_prompts(cfg, world, [r["text"] for r in data.stream_records("safe")])
    if custom is not None:
        prompts = replace(prompts, harmful=custom, benign_edgy=custom)
    judges_by_name = build_judges(cfg, world, rundir)
    model = rundir.model(cfg, checkpoint, cfg.eval.device, tok)
    ctx = EvalContext(model, tok, next(iter(judges_by_name.values())), cfg.eval, seed or 0, prompts,
                      data.shards["val"], judges=judges_by_name)
    out = out or rundir.eval_adhoc(f"{checkpoint.parent.parent.name}_{checkpoint.name}_{stage_name}")
    table = []
    for name in tasks:
        task = task_by_name(name)
        for decoder in (cfg.eval.decoders if task.uses_decoder else [NO_DECODER]):
            result = task.run(ctx, stage_name, decoder)
            folder = out / decoder / name
            write_json(folder / "results.json", {"checkpoint": str(checkpoint), "stage": stage_name, "task": name,
                                                 "decoder": decoder, "prompts": str(prompts_file or "bundled"),
                                                 "rows": result.rows})
            if result.samples:
                write_jsonl(folder / "samples.jsonl", result.samples)
            if result.items:
                write_jsonl(folder / "items.jsonl", result.items)
            table += [(name, decoder, r) for r in result.rows if not r["metric"].startswith("auroc_") or
                      r["metric"].endswith("_best")]
    print(f"{'task':<17} {'decoder':<9} {'judge':<10} {'metric':<26} {'value':>8}  95% CI           n")
    for name, decoder, r in table:
        print(f"{name:<17} {decoder:<9} {r.get('judge', '-'):<10} {r['metric']:<26} {r['value']:8.3f}  "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]  {r['n']}")
    return out
