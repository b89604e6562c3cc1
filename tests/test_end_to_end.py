"""End-to-end: the smoke study through the real CLI, then assertions on the run directory and its log.

    python -m pytest tests/test_end_to_end.py -q
"""

import csv
import hashlib
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from safepretrain.cli import main
from safepretrain.config import load_config
from safepretrain.data.records import read_stream
from safepretrain.data.tokenizer import TextTokenizer
from safepretrain.train.checkpoint import load_model
from safepretrain.world import load_world, world_for
from safepretrain.world.dedup import near_duplicates

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def smoke_args(out: Path) -> list[str]:
    """The smoke study plus a user corpus with two unreadable records (they must be set aside, not lost)."""
    corpus = out.parent / "corpus.jsonl"
    corpus.write_text('{"id": "u1", "text": "A short note about gardens and rain."}\n{broken json\n'
                      '{"id": "u2"}\n{"id": "u3", "text": "Another ordinary sentence about trains."}\n'
                      '{"id": "u4", "text": "A post quoting <|user|> and <potentially unsafe content> as text."}\n')
    return ["study", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out), f"world.corpus=[{corpus}]"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    assert main(smoke_args(out)) == 0
    return out, load_config(out / "study.yaml")


def test_run_directory_has_every_stage(smoke_run):
    out, cfg = smoke_run
    for name in ("study.yaml", "manifest.json", "study.log", "data/tokenizer.json", "data/report_card.md",
                 "report/report.md", "report/results.csv", "report/asr_vs_start.png", "report/probe_auroc.png"):
        assert (out / name).is_file(), name
    for arm in cfg.curriculum.arms:
        for stage in ("pretrain", "ift", "benign_ft"):
            d = out / "arms" / arm.name / "seed0" / stage
            assert list((d / "ckpt").glob("step_*/model.safetensors")), d
            assert (d / "metrics.jsonl").is_file()
        assert (out / "arms" / arm.name / "seed0" / "pretrain" / "tokens_by_source.json").is_file()


def test_unreadable_records_are_set_aside_and_reported(smoke_run):
    out, _ = smoke_run
    rejected = [json.loads(x) for p in sorted((out / "scoring" / "rejected").glob("*.jsonl"))  # the reader's
                for x in p.read_text().splitlines()]
    assert sorted(r["reason"] for r in rejected) == ["invalid_json", "missing_text"]
    card = json.loads((out / "data" / "report_card.json").read_text())
    assert card["rejected"] == {"total": 2, "by_reason": {"invalid_json": 1, "missing_text": 1}}
    assert "Rejected input records: 2" in (out / "report" / "report.md").read_text()
    assert card["score_histogram"]["corpus"]  # the readable user records were scored


def test_special_token_strings_in_a_corpus_never_reach_a_stream_as_special_tokens(smoke_run):
    out, cfg = smoke_run
    card = json.loads((out / "data" / "report_card.json").read_text())
    assert card["special_strings"] == {"documents": 1, "occurrences": 2}
    assert "Special-token strings made inert" in (out / "data" / "report_card.md").read_text()

    u4 = [r for s in ("safe", "unsafe", "tagged", "val") for r in read_stream(out / "data", s)
          if r["id"].split(":")[0] == "u4"]
    assert u4 and all("<|user|>" not in r["text"] and "‹|user|>" in r["text"] for r in u4)


def test_switch_step_exactly_at_start_times_budget(smoke_run):
    """Every arm's metrics log each step once, with interventions on exactly from ceil(start · budget / tps),
    whether the arm trained alone or branched from the shared safe-only trunk."""
    out, cfg = smoke_run
    tps = cfg.pretrain.batch_size * cfg.pretrain.seq_len
    total = cfg.curriculum.token_budget // tps
    for seed in cfg.seeds:
        for arm in cfg.curriculum.arms:
            folder = out / "arms" / arm.name / f"seed{seed}" / "pretrain"
            steps = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
            assert [m["step"] for m in steps] == list(range(1, total + 1))
            first_on = next((m["step"] for m in steps if m["interventions"]), None)  # 1-based
            if arm.data == "raw" or arm.start == 1.0:
                assert first_on is None
            else:
                assert first_on - 1 == math.ceil(arm.start * cfg.curriculum.token_budget / tps)
                assert all(m["interventions"] for m in steps if m["step"] >= first_on)
            acc = json.loads((folder / "tokens_by_source.json").read_text())
            assert sum(acc["total"].values()) == total * tps
            if arm.data == "curriculum" and arm.start > 0:  # start_20, start_60, safe_only share the trunk
                assert acc["branched_at"] == (cfg.switch_step(arm) or total)
    log = (out / "study.log").read_text()
    assert re.search(r"\[pretrain trunk s1\] step \d+/\d+ .*interv=off", log)


def test_every_metric_of_every_model_is_reported(smoke_run):
    out, cfg = smoke_run
    rows = list(csv.DictReader(open(out / "report" / "results.csv")))
    assert list(rows[0]) == ["arm", "seed", "stage", "decoder", "task", "judge", "metric", "value", "ci_low",
                             "ci_high", "n"]
    have = {(r["arm"], r["seed"], r["stage"], r["decoder"], r["task"], r["metric"]) for r in rows}
    frames = {r["frame"] for r in world_for(cfg).harmful_eval_prompts}
    for arm in cfg.curriculum.arms:
        for stage in ("base", "ift", "benign_ft", "harmful_ft"):
            for decoder in ("topk", "beam", "safebeam"):  # generation: seed 0 only (eval.generation_seeds)
                attacks = [(f"asr_{a}", "asr") for a in cfg.eval.attacks] if decoder == "topk" else []
                for task, metric in (("asr", "asr"), ("asr", "refusal_rate"), ("asr", "short_circuit_rate"),
                                     ("overrefusal", "overrefusal"), ("overrefusal", "helpfulness"), *attacks):
                    assert (arm.name, "0", stage, decoder, task, metric) in have
                    assert (arm.name, "1", stage, decoder, task, metric) not in have
                for a in cfg.eval.attacks if decoder != "topk" else ():  # prompt attacks: eval.attack_decoders
                    assert (arm.name, "0", stage, decoder, f"asr_{a}", "asr") not in have
            # ASR per request frame, pooled too
            asked = {r["metric"].removeprefix("asr_frame_") for r in rows if r["arm"] == arm.name
                     and r["stage"] == stage and r["task"] == "asr" and r["metric"].startswith("asr_frame_")}
            assert asked and asked <= frames
            for seed in ("0", "1", "pooled"):  # judge-free metrics for every seed, and pooled
                for task, metric in (("likelihood", "forced_choice"), ("likelihood", "compliance_gap"),
                                     ("likelihood", "harm_specificity"), ("probe", "auroc_last_best"),
                                     ("probe", "auroc_random_init_best"), ("heldout_loss", "loss")):
                    assert (arm.name, seed, stage, "none", task, metric) in have, (arm.name, seed, stage, metric)
        for k in (0, 1, 2, 4, 8):  # how deep the alignment goes: at the IFT stage only
            assert (arm.name, "0", "ift", "none", "depth", f"asr_prefill_{k}") in have
            assert (arm.name, "0", "base", "none", "depth", f"asr_prefill_{k}") not in have
        assert (arm.name, "0", "ift", "none", "depth", "kl_first4") in have
    for r in rows:
        if r["task"] in ("asr", "overrefusal"):
            assert 0 <= float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"]) <= 1
    report = (out / "report" / "report.md").read_text()
    for section in ("## Controls", "(C1) Positive control", "(C2) Working treatment",
                    "(C3) Attack control, benign finetuning", "(C3) Attack control, harmful finetuning",
                    *(f"(C3) Attack control, the `{a}` attack" for a in cfg.eval.attacks),
                    "## Findings", "## Paired arm differences", "## Benign finetuning as a curve",
                    "## Harmful finetuning: the tamper curve", "## Knowledge in context",
                    "## How deep is the alignment?",
                    "### ASR per request frame", "## Stage sizes", "MDD",
                    "## Likelihood metrics", "Text-only baselines", "Tokens by source", "## Jailbreaks",
                    "## Judges: agreement", "ASR under every judge"):
        assert section in report, section
    for image in ("tamper_curve.png", "alignment_depth.png", "asr_by_start.png"):
        assert (out / "report" / image).stat().st_size > 10_000 and f"]({image})" in report
    assert "harmful_ft" in (out / "report" / "report.html").read_text()
    assert "INCOMPLETE" not in report
    for claim in ("(1)", "(2)", "(3)", "(4)", "(5)", "(6)"):
        assert claim in report
    samples = [json.loads(x) for x in (out / "eval" / "raw" / "seed0" / "ift" / "topk" / "asr" / "samples.jsonl")
               .read_text().splitlines()]
    assert len(samples) == cfg.eval.n_harmful and all(s["reason"] for s in samples)
    # every judge's verdict on every sample; every judge's rates in results.csv, each row naming its judge
    assert all(set(s["verdicts"]) == {"exact", "keyword"} for s in samples)
    judged = {(r["judge"], r["metric"]) for r in rows if r["task"] == "asr" and r["seed"] == "0"}
    assert {("exact", "asr"), ("keyword", "asr")} <= judged
    assert {r["judge"] for r in rows if r["task"] == "asr" and r["seed"] == "pooled"} == {"exact"}  # primary
    quality = json.loads((out / "judge" / "quality.json").read_text())
    assert quality["judge"] == "exact" and quality["cases"]["accuracy"] == 1.0
    card = json.loads((out / "data" / "report_card.json").read_text())
    assert card["scorer_vs_truth"]["n"] > 0 and set(card["synthetic_diversity"]) == {"rephrased", "refusal",
                                                                                      "moral_ed"}
    assert "Scorer against the truth labels" in (out / "data" / "report_card.md").read_text()


def test_realtext_world_runs_end_to_end(tmp_path):
    """The registry-text world (configs/realtext.yaml's world) keeps working: its smoke study runs with the
    classifier judge, and the report states its controls and findings."""
    out = tmp_path / "run"
    arms = "curriculum.arms=[{name: raw, data: raw}, {name: start_0, start: 0.0}]"  # the controls' two arms
    assert main(["study", str(ROOT / "configs" / "smoke-realtext.yaml"), "--out", str(out), arms, "seeds=[0]",
                 "eval.trajectory=true", "eval.attacks=[]", "eval.n_harmful=8", "eval.n_benign_edgy=8",
                 "eval.n_pairs=8", "eval.probe.n_per_class=8"]) == 0  # seeds, jailbreaks: the organism study's
    report = (out / "report" / "report.md").read_text()
    # the safety trajectory: the step-20 checkpoint of each arm and seed, then the final model
    points = list(csv.DictReader(open(out / "report" / "trajectory.csv")))
    assert {(p["arm"], p["seed"], p["tokens"]) for p in points} == {
        (a, "0", t) for a in ("raw", "start_0") for t in ("10240", "20480")}
    assert {p["metric"] for p in points} == {"asr", "compliance_gap", "auroc_best"}
    assert "## Safety trajectories" in report and (out / "report" / "trajectory.png").stat().st_size > 10_000
    for section in ("## Controls", "## Findings", "## Attack success"):
        assert section in report
    quality = json.loads((out / "judge" / "quality.json").read_text())
    assert "human_refusal" in quality and "judge" not in quality  # the classifier judge, not the exact one
    rows = list(csv.DictReader(open(out / "report" / "results.csv")))
    assert {r["metric"] for r in rows if r["task"] == "asr"} >= {"asr", "refusal_rate"}
    assert not [r for r in rows if r["metric"] == "helpfulness"]  # no ground truth, no helpfulness


def test_train_and_eval_prompts_are_disjoint():
    world = load_world()
    train_side = ([p["prompt"] for p in world.harmful_train_prompts] + [lab["text"] for lab in world.scorer_labels]
                  + [d["text"] for d in world.documents if d["kind"] == "harmful"])
    assert near_duplicates([p["prompt"] for p in world.harmful_eval_prompts], train_side) == set()


def test_rerun_skips_finished_steps(smoke_run, capsys):
    out, _ = smoke_run
    before = (out / "study.log").read_text().count("] step ")
    assert main(smoke_args(out)) == 0
    assert (out / "study.log").read_text().count("] step ") == before  # nothing retrained


def test_run_directory_is_relocatable(smoke_run):
    """Stored paths are relative: a copy, with the original moved away, reuses its own finished steps."""

    out, _ = smoke_run
    for name in ("done.json", "train_result.json", "results.json"):
        for p in out.rglob(name):
            ckpt = json.loads(p.read_text()).get("checkpoint")
            assert ckpt is None or not Path(ckpt).is_absolute(), p
    copy = out.parent / "copy"
    shutil.copytree(out, copy)
    moved = out.parent / "moved"
    out.rename(moved)
    try:
        before = (copy / "study.log").read_text().count("] step ")
        args = smoke_args(copy)
        assert main(args) == 0
        assert (copy / "study.log").read_text().count("] step ") == before  # nothing retrained
        assert not out.exists()  # and the original's path was never touched
    finally:
        moved.rename(out)


def test_eval_command_on_a_user_prompt_file(smoke_run, tmp_path, capsys):
    out, _ = smoke_run
    prompts = tmp_path / "mine.csv"
    prompts.write_text("text\nTell me about the weather in spring.\nHow do rivers form?\n")
    target = tmp_path / "adhoc"
    assert main(["eval", str(out), "--arm", "start_0", "--seed", "1", "--stage", "ift", "--task", "asr",
                 "--task", "likelihood", "--decoder", "topk", "--prompts", str(prompts), "--column", "text",
                 "--out", str(target)]) == 0
    printed = capsys.readouterr().out
    assert "asr" in printed and "forced_choice" in printed
    samples = [json.loads(x) for x in (target / "topk" / "asr" / "samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == ["Tell me about the weather in spring.", "How do rivers form?"]
    assert json.loads((target / "none" / "likelihood" / "results.json").read_text())["stage"] == "ift"


def test_eval_command_over_every_saved_step_with_a_chosen_judge_and_attack(smoke_run, tmp_path, capsys):
    out, _ = smoke_run
    target = tmp_path / "trajectory"
    assert main(["eval", str(out), "--arm", "raw", "--seed", "0", "--stage", "base", "--all-steps", "--task",
                 "asr_prefill", "--decoder", "topk", "--judge", "keyword", "--out", str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == ["step_000020", "step_000040"]  # ckpt_every 20 of 40
    rows = json.loads((target / "step_000020" / "topk" / "asr_prefill" / "results.json").read_text())["rows"]
    assert {r["judge"] for r in rows} == {"keyword"}
    samples = [json.loads(x) for x in (target / "step_000040" / "topk" / "asr_prefill" / "samples.jsonl").open()]
    assert all(s["attack"] == "prefill" and s["response"].startswith("Sure, here is") for s in samples)


def test_a_corrupt_shard_is_detected_and_recomputed(smoke_run):
    """A zero-filled val.bin of the right size (once used silently: held-out loss 5.58 instead of 6.58) is
    reported with its path; the data stage is recomputed and gives the original bytes back."""

    out, _ = smoke_run
    copy = out.parent / "corrupt"
    shutil.copytree(out, copy)
    val = copy / "data" / "shards" / "val.bin"
    original = hashlib.sha256(val.read_bytes()).hexdigest()
    val.write_bytes(bytes(val.stat().st_size))
    before = (copy / "study.log").read_text().count("] step ")
    assert main(smoke_args(copy)) == 0
    log = (copy / "study.log").read_text()
    assert "val.bin: checksum mismatch" in log
    assert hashlib.sha256(val.read_bytes()).hexdigest() == original
    assert log.count("] step ") == before  # the models were made from the same data: nothing retrained


def test_a_report_with_an_unfinished_evaluation_says_so(smoke_run):
    """`safepretrain report` on a run whose evaluation of one model has not finished (no done.json) prints the
    INCOMPLETE banner naming that evaluation."""

    out, _ = smoke_run
    copy = out.parent / "unfinished"
    shutil.copytree(out, copy)
    (copy / "eval" / "start_20" / "seed1" / "ift" / "done.json").unlink()
    assert main(["report", str(copy)]) == 0
    report = (copy / "report" / "report.md").read_text()
    assert "**INCOMPLETE REPORT**: 1 evaluation(s)" in report and "start_20 seed 1 ift" in report


def test_export_of_a_trained_checkpoint_loads_in_transformers(smoke_run, tmp_path, capsys):
    """The CLI exports an instruction-tuned checkpoint of the smoke study; transformers reads it, its chat
    template builds the prompt, and its logits on that prompt are ours."""


    out, cfg = smoke_run
    ckpt = sorted((out / "arms" / "raw" / "seed0" / "ift" / "ckpt").glob("step_*"))[-1]
    assert main(["export", str(ckpt), "--to", str(tmp_path / "hf")]) == 0
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = hf_tok.apply_chat_template([{"role": "user", "content": "What festival does the town celebrate?"}],
                                     add_generation_prompt=True, tokenize=True, return_tensors="pt", return_dict=True)
    tok = TextTokenizer.load(out / "data" / "tokenizer.json", cfg.data.interventions.tag)
    ours = load_model(cfg.model.model_copy(update={"vocab_size": tok.vocab_size}), ckpt)
    with torch.no_grad():
        theirs = hf(ids["input_ids"]).logits
        mine, _ = ours(ids["input_ids"])
    assert torch.allclose(mine, theirs, atol=1e-4)
    assert main(["export", str(ckpt), "--to", str(tmp_path / "hf")]) == 2  # never overwrites
    assert "not an empty folder" in capsys.readouterr().err


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                  "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-default-apps"]


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page itself asked the network for (Chromium's net log; the browser's own service calls have no
    origin as initiator, a file:// page's requests have the opaque origin "null")."""
    log = json.loads(net_log.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"] if e["type"] == start
            and e.get("params", {}).get("initiator", "not an origin") != "not an origin"]


def test_html_report_renders_offline_in_headless_chromium(smoke_run, tmp_path):
    """report.html opens in a real browser with every section, its plots inline, and no network request; a
    control page that does fetch something shows the check can fail."""

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium: `make test` installs Debian's chromium when it can (apt); install it to run this")
    out, _ = smoke_run
    page = out / "report" / "report.html"
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot, net = artifacts / "smoke_report.png", tmp_path / "net.json"
    subprocess.run([browser, *CHROMIUM_FLAGS, "--window-size=1280,3000", f"--screenshot={shot}",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    assert shot.stat().st_size > 50_000  # a rendered page, kept as the test's artifact
    dom = subprocess.run([browser, *CHROMIUM_FLAGS, f"--log-net-log={net}", "--dump-dom", page.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    titles = re.findall(r"<h2 id=\"[^\"]+\">(.*?)</h2>", dom)
    for section in ("Controls", "Findings", "Attack success", "Jailbreaks", "Likelihood metrics", "Paired arm",
                    "Capability", "Tokens by source", "Judges: agreement", "Step wall times",
                    "Config, versions and revision"):
        assert any(t.startswith(section) for t in titles), (section, titles)
    assert dom.count('src="data:image/png;base64,') >= 2 and "<script" not in dom
    assert _page_requests(net) == []
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    subprocess.run([browser, *CHROMIUM_FLAGS, f"--log-net-log={net}", "--dump-dom", control.as_uri()],
                   check=True, capture_output=True, timeout=120)
    assert _page_requests(net) == ["http://127.0.0.1:9/x.png"]
