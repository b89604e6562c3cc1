"""Command line: thin wrappers that parse arguments and call the library.

    safepretrain study [CONFIG] [--out DIR] [--dry-run | --status] [--launcher L] [--only PART] [--force]
                       [key=value ...]
    safepretrain report RUN_DIR
    safepretrain eval RUN_DIR|CHECKPOINT... --task T [--prompts FILE] [--decoder D] [--judge J] [--arm A --seed K
                      --stage S] [--all-steps]
    safepretrain export CHECKPOINT --to DIR
    safepretrain serve CHECKPOINT [--host H] [--port P] [--max-concurrency N] [--max-tokens-cap N]
    safepretrain data eval-scorer [CONFIG] [--labels FILE] [--out DIR] [key=value ...]
    safepretrain world build [--out DIR] [--cache DIR]
    safepretrain world info [--pack DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from safepretrain.config import ConfigError, dump_config


def _error(err: object) -> int:
    """Print a failed command's reason (the fix is in the message) and return its exit status, 2."""
    print(f"error: {err}", file=sys.stderr)
    return 2


def _study(args: argparse.Namespace) -> int:
    from safepretrain.run.checks import check_same_study, load_study, validate_against_world
    from safepretrain.run.launchers import LAUNCHERS, local
    from safepretrain.run.parts import LaunchError, parse_part
    from safepretrain.run.status import status_table, study_status
    from safepretrain.run.study import plan
    from safepretrain.rundir import TRAINED_STAGES, RunDir, RunDirError, check_run_dir
    from safepretrain.train.distributed import RankFailure
    from safepretrain.utils import StepFolderError

    config, overrides = None, list(args.items)
    if overrides and "=" not in overrides[0]:
        config = overrides.pop(0)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.launcher:
        overrides.append(f"launch.launcher={args.launcher}")
    try:
        cfg = load_study(config, overrides)
    except ConfigError as err:
        return _error(err)
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    single = [f"{s}.distributed" for s in TRAINED_STAGES if getattr(cfg, s).distributed == "none"]
    if ranks > 1 and single and not args.dry_run:  # each rank would train its own copy of the same model
        return _error(f"under torchrun (WORLD_SIZE={ranks}) every training stage must be data-parallel: "
                      f"{', '.join(single)} is none; set {single[0]}=ddp (or fsdp2)")
    rundir = RunDir(cfg.run_dir)
    if args.status:  # of the run as it was started: its own study.yaml when there is one
        run_cfg = rundir.load_config() if rundir.study_yaml.is_file() else cfg
        try:
            print(status_table(study_status(run_cfg), rundir.root))
        except RunDirError as err:  # not a run directory: say so, not "112 pending"
            return _error(err)
        return 0
    launcher = LAUNCHERS[cfg.launch.launcher]
    if args.dry_run:  # the plan (and memory estimate) even when inputs are not there yet; their problems after it
        print(dump_config(cfg))
        print("# planned steps")
        for line in plan(cfg):
            print(f"- {line}")
    try:
        part = parse_part(args.only, cfg) if args.only else None
        check_run_dir(rundir.root)
        check_same_study(cfg, args.force)  # before anything rewrites study.yaml or wipes a step
        if part is None and not launcher.options.get("needs_inputs", True):  # e.g. Slurm scripts, written now
            return launcher.build(cfg, args.dry_run)
        validate_against_world(cfg)
        if part is not None:  # one part of a launched study: always here, in this process
            return local.launch(cfg, args.dry_run, part)
        return launcher.build(cfg, args.dry_run)
    except (ConfigError, RunDirError, ValueError, StepFolderError, RankFailure, LaunchError) as err:
        return _error(err)


def _report(args: argparse.Namespace) -> int:
    from safepretrain.report.build import build_report
    from safepretrain.rundir import RunDir, RunDirError, RunLock

    rundir = RunDir(args.run_dir)
    if not rundir.study_yaml.is_file():
        print(f"error: {rundir.root} is not a study run directory (no study.yaml)", file=sys.stderr)
        return 2
    try:
        with RunLock(rundir.root):  # never read a run while a study is writing it
            print(build_report(rundir.root, rundir.load_config()))
    except RunDirError as err:
        return _error(err)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from safepretrain.run.adhoc import EvalInputError, expand_targets, run_eval

    try:
        targets = expand_targets([Path(t) for t in args.target], args.arm, args.seed, args.stage, args.all_steps)
        for target in targets:  # a trajectory: every checkpoint with the same tasks, judges and prompts
            out = None if not args.out else Path(args.out) / target.name if len(targets) > 1 else Path(args.out)
            out = run_eval(target, tasks=args.task, decoders=args.decoder, judges=args.judge,
                           prompts_file=Path(args.prompts) if args.prompts else None, column=args.column,
                           arm=args.arm, seed=args.seed, stage=args.stage, out=out, max_prompts=args.max_prompts)
            print(f"results: {out}")
    except EvalInputError as err:
        return _error(err)
    return 0


def _export(args: argparse.Namespace) -> int:
    from safepretrain.export import ExportError, export_checkpoint

    try:
        out = export_checkpoint(Path(args.checkpoint), Path(args.to))
    except ExportError as err:
        return _error(err)
    print(f"exported: {out} (LlamaForCausalLM, tokenizer, chat template)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from safepretrain.serve import ServeError, serve

    if min(args.max_concurrency, args.max_tokens_cap, args.max_request_bytes, args.max_request_memory_mib) < 1:
        print("error: --max-concurrency, --max-tokens-cap, --max-request-bytes and --max-request-memory-mib must be "
              "at least 1", file=sys.stderr)
        return 2
    try:
        serve(Path(args.checkpoint), host=args.host, port=args.port, max_concurrency=args.max_concurrency,
              max_tokens_cap=args.max_tokens_cap, max_request_bytes=args.max_request_bytes,
              max_request_memory_mib=args.max_request_memory_mib, device=args.device)
    except ServeError as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    return 0


def _world(args: argparse.Namespace) -> int:
    if args.action == "build":
        from safepretrain.world.build import main as build_main

        argv = ["--out", args.out or str(Path(__file__).parent / "world" / "pack")]
        if args.cache:
            argv += ["--cache", args.cache]
        return build_main(argv) or 0
    from safepretrain.world import load_world

    world = load_world(args.pack)
    print(f"world pack: {world.path}")
    for src in world.sources():
        n = sum(1 for d in world.documents if d["source"] == src)
        print(f"  documents/{src}: {n}")
    for name in ("scorer_labels", "harmful_train_prompts", "harmful_eval_prompts", "benign_edgy_prompts",
                 "refusal_labels"):
        print(f"  {name}: {len(getattr(world, name))}")
    return 0


def _eval_scorer(args: argparse.Namespace) -> int:
    from safepretrain.data.eval_scorer import evaluate_scorers, markdown, write_scorer_eval
    from safepretrain.run.checks import load_study
    from safepretrain.rundir import RunDir
    from safepretrain.world import world_for

    config, overrides = None, list(args.items)
    if overrides and "=" not in overrides[0]:
        config = overrides.pop(0)
    try:
        cfg = load_study(config, overrides)
        result = evaluate_scorers(cfg, world_for(cfg), Path(args.labels) if args.labels else None)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        return _error(err)
    out = Path(args.out) if args.out else RunDir(cfg.run_dir).scorer_eval
    print(markdown(result))
    print("written: " + ", ".join(str(p) for p in write_scorer_eval(result, out)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    # the registries' names are the choices (their packages load here, not at `import safepretrain.cli`)
    from safepretrain.eval.decoders import DECODERS
    from safepretrain.eval.judges import JUDGES
    from safepretrain.eval.tasks import task_names
    from safepretrain.run.adhoc import MAX_PROMPTS
    from safepretrain.run.launchers import LAUNCHERS
    from safepretrain.rundir import STAGE_NAMES

    p = argparse.ArgumentParser(prog="safepretrain", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("study", help="run the whole study (data → pretrain → IFT → benign FT → eval → report)")
    s.add_argument("items", nargs="*", metavar="[CONFIG] key=value",
                   help="optional YAML config, then dotlist overrides such as curriculum.token_budget=2e6")
    s.add_argument("--out", help="run directory (default: runs/<name>)")
    s.add_argument("--dry-run", action="store_true", help="print the resolved config and the planned steps")
    s.add_argument("--launcher", choices=list(LAUNCHERS),
                   help="how to run the study's parts (default: launch.launcher): in order here, as parallel "
                        "subprocesses, or as Slurm jobs (with --dry-run: write the scripts, submit nothing)")
    s.add_argument("--only", metavar="PART",
                   help="run one part: prepare, trunk:SEED, arm:NAME:SEED or report (what the launchers run)")
    s.add_argument("--status", action="store_true",
                   help="list every step of the run directory: done / running / failed / interrupted / missing / "
                        "corrupt / pending, with wall times and the log of a failure")
    s.add_argument("--force", action="store_true",
                   help="start even when --out holds another study (another name or world): its steps are wiped "
                        "and recomputed as needed")
    s.set_defaults(func=_study)

    r = sub.add_parser("report", help="rebuild report.md / results.csv / plots from a run directory")
    r.add_argument("run_dir")
    r.set_defaults(func=_report)

    e = sub.add_parser("eval", help="evaluate one checkpoint on the bundled sets or on a prompt file")
    e.add_argument("target", nargs="+",
                   help="a run directory (with --arm/--seed/--stage) or one or more checkpoint folders")
    e.add_argument("--all-steps", action="store_true",
                   help="every saved step of the stage (a trajectory), not only its final checkpoint")
    e.add_argument("--task", action="append", required=True,
                   help=f"task to run (repeatable): {', '.join(task_names())} (an attack runs as asr_<attack>)")
    e.add_argument("--judge", action="append",
                   help=f"judge (repeatable; first = primary): {', '.join(JUDGES)}; default: the run's eval.judges")
    e.add_argument("--decoder", action="append", choices=list(DECODERS),
                   help="decoder (repeatable); default: the run's eval.decoders")
    e.add_argument("--prompts", help="prompt file (.txt, .jsonl or .csv) replacing the bundled prompts")
    e.add_argument("--column", help="field/column of the prompt in a .jsonl/.csv file (default: prompt); a `hazard` "
                                    "field/column names each prompt's organism item for the exact judge")
    e.add_argument("--max-prompts", type=int, default=MAX_PROMPTS,
                   help=f"refuse a prompt file with more prompts than this (default: {MAX_PROMPTS})")
    e.add_argument("--arm")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--stage", help=f"{', '.join(STAGE_NAMES)} (default: from the checkpoint's folder)")
    e.add_argument("--out", help="output folder (default: RUN_DIR/eval_adhoc/...)")
    e.set_defaults(func=_eval)

    x = sub.add_parser("export", help="write a checkpoint as a Hugging Face LlamaForCausalLM folder")
    x.add_argument("checkpoint", help="a checkpoint folder of a run, e.g. RUN/arms/raw/seed0/ift/ckpt/step_000064")
    x.add_argument("--to", required=True, help="new or empty output folder")
    x.set_defaults(func=_export)

    v = sub.add_parser("serve", help="serve a checkpoint over the OpenAI API (completions, chat, our decoders)")
    v.add_argument("checkpoint", help="a checkpoint folder of a run, e.g. RUN/arms/raw/seed0/ift/ckpt/step_000064")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--max-concurrency", type=int, default=4,
                   help="generations at once; more requests queue, and 429 once the queue is full")
    v.add_argument("--max-tokens-cap", type=int, default=256, help="largest max_tokens a request may ask for")
    v.add_argument("--max-request-bytes", type=int, default=65536, help="largest request body (else 413)")
    v.add_argument("--max-request-memory-mib", type=int, default=1024,
                   help="largest estimated KV-cache + activation memory of one request, MiB (else 400); up to "
                        "--max-concurrency requests hold it at once")
    v.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    v.set_defaults(func=_serve)

    d = sub.add_parser("data", help="data-stage tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    es = dsub.add_parser("eval-scorer", help="scorer quality table (macro F1, Recall@1, Recall@3) on held-out "
                                             "labels and the world's ground truth")
    es.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="optional YAML config, then overrides")
    es.add_argument("--labels", help="extra labelled JSONL ({\"text\", \"score\": 0-5} per line) for the held-out set")
    es.add_argument("--out", help="output folder (default: <run dir>/scorer_eval)")
    es.set_defaults(func=_eval_scorer)

    w = sub.add_parser("world", help="build or inspect the embedded default world")
    w.add_argument("action", choices=["build", "info"])
    w.add_argument("--out", help="build: output folder (default: the package's world/pack)")
    w.add_argument("--cache", help="build: download cache folder")
    w.add_argument("--pack", help="info: a pack folder (default: the embedded pack)")
    w.set_defaults(func=_world)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `study CONFIG --out DIR key=value`: argparse stops collecting positionals at the first option, so
    # overrides after the options arrive as "unknown" arguments; anything else unknown is an error.
    args, extra = parser.parse_known_args(argv)
    stray = [x for x in extra if x.startswith("-") or args.command != "study"]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if args.command == "study":
        args.items += extra
    from safepretrain.utils import CorruptFileError

    try:
        return args.func(args)
    except CorruptFileError as err:  # a truncated or edited file of a run: name it, no traceback
        return _error(err)
    except Exception as err:
        # a checkpoint that cannot be written (full disk) or no longer fits the run's config, from any command: its
        # message names the fix. Looked up, not imported: a CheckpointError exists only once its module is loaded,
        # and `--help` or `report` need no torch
        checkpoint = sys.modules.get("safepretrain.train.checkpoint")
        if checkpoint is not None and isinstance(err, checkpoint.CheckpointError):
            return _error(err)
        raise


if __name__ == "__main__":
    sys.exit(main())
