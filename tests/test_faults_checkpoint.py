"""Checkpoints carry their own config (issue 21, items 11 and 10): a checkpoint records the model config and the
tokenizer it was trained with, and loading it with a config edited since is refused naming the field; a checkpoint
write that hits a full disk is one clear message with nothing half-written left; `export` refuses a --to under a
file, follows the umask and cleans up after a killed export.

    python -m pytest tests/test_faults_checkpoint.py -q
"""

import errno
import fcntl
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError
from transformers import LlamaForCausalLM

import safepretrain.cli as cli
import safepretrain.export as export
import safepretrain.train.checkpoint as checkpoint
from safepretrain.config import PretrainConfig, dump_config, load_config
from safepretrain.data.tokenizer import TextTokenizer, train_tokenizer
from safepretrain.export import ExportError, export_checkpoint, export_hf
from safepretrain.rundir import RUN_MARKER, RunDir
from safepretrain.train.checkpoint import latest_checkpoint, load_model
from safepretrain.train.loop import train
from safepretrain.train.model import Transformer

TINY = ["model.preset=null", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=2",
        "model.ffn_hidden=64", "model.max_seq_len=128", "model.rope_theta=10000.0"]
WORDS = ["plain words about rivers, towns and the weather"] * 30


class Batches:
    """Deterministic random-token batches over the tokenizer's vocabulary."""

    def __init__(self, steps: int, vocab: int):
        self.total_steps, self.vocab = steps, vocab

    def batch(self, step):
        data = torch.randint(0, self.vocab, (2, 9), generator=torch.Generator().manual_seed(step))
        return data[:, :-1], data[:, 1:], {}


def train_cfg(**kw) -> PretrainConfig:
    return PretrainConfig(**{"batch_size": 2, "seq_len": 8, "lr": 1e-2, "warmup_steps": 1, "ckpt_every": 2, **kw})


def make_run(root: Path, record_tokenizer: bool = False) -> tuple[Path, Path]:
    """A run directory laid out as a study writes it (marker, study.yaml, tokenizer) with an IFT stage trained for
    4 steps by the real loop: checkpoints at steps 2 and 4 (recording the tokenizer as the study's stages do, when
    `record_tokenizer`). Returns (run, the step-4 checkpoint)."""
    run = root / "run"
    run.mkdir()
    (run / RUN_MARKER).touch()
    cfg = load_config(None, TINY)
    (run / "study.yaml").write_text(dump_config(cfg))
    tag = cfg.data.interventions.tag
    tok = TextTokenizer(train_tokenizer(WORDS, 300, 1, tag), tag)
    (run / "data").mkdir()
    tok.save(run / "data" / "tokenizer.json")
    model_cfg = cfg.model.model_copy(update={"vocab_size": tok.vocab_size})
    stage = run / "arms" / "raw" / "seed0" / "ift"
    train_kw = {"tokenizer_sha256": tok.sha256} if record_tokenizer else {}
    result = train(train_cfg(), model_cfg, Batches(4, tok.vocab_size), stage, seed=0, label="ift", **train_kw)
    return run, result.checkpoint


def edit_study_yaml(run: Path, **model) -> None:
    """Edit the run's study.yaml by hand, as a user would after training (the model section)."""
    cfg = yaml.safe_load((run / "study.yaml").read_text())
    cfg["model"].update(model)
    (run / "study.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture
def trained(tmp_path):
    return make_run(tmp_path)


# --------------------------------------------------------------------------- item 11: the checkpoint's own config
def test_a_checkpoint_loads_with_the_config_it_was_trained_with(trained):
    run, ckpt = trained
    rundir = RunDir(run)
    cfg = rundir.load_config()
    model = rundir.model(cfg, ckpt)
    assert model.cfg.rope_theta == 10000.0 and model.cfg.d_model == 32
    state = json.loads((ckpt / "state.json").read_text())
    assert state["model"]["rope_theta"] == 10000.0  # the record sits beside the weights


def test_an_edited_rope_theta_is_refused_by_load_and_export_naming_the_field(trained, tmp_path, capsys):
    run, ckpt = trained
    edit_study_yaml(run, rope_theta=5000.0)  # same shapes: the weights would load without a word
    rundir = RunDir(run)
    cfg = rundir.load_config()
    with pytest.raises(RuntimeError, match=r"model\.rope_theta=10000\.0 \(config now: 5000\.0\)"):
        rundir.model(cfg, ckpt)  # serve and `eval --prompts` load through this
    with pytest.raises(RuntimeError, match="rope_theta"):  # the study's evaluator loads through this
        load_model(cfg.model.model_copy(update={"vocab_size": 300}), ckpt)
    with pytest.raises(ExportError, match="rope_theta"):
        export_checkpoint(ckpt, tmp_path / "hf")
    assert cli.main(["export", str(ckpt), "--to", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "rope_theta" in err and "study.yaml" in err and "Traceback" not in err
    assert not (tmp_path / "hf").exists()


def test_a_checkpoint_of_another_tokenizer_is_refused(tmp_path):
    run, ckpt = make_run(tmp_path, record_tokenizer=True)
    rundir = RunDir(run)
    cfg = rundir.load_config()
    assert json.loads((ckpt / "state.json").read_text())["tokenizer_sha256"] == rundir.tokenizer(cfg).sha256
    rundir.model(cfg, ckpt)  # the tokenizer it was trained with: loads
    # a retrained data stage: a tokenizer of the same vocabulary size whose ids mean other words (two swapped)
    spec = json.loads((run / "data" / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[-2:]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (run / "data" / "tokenizer.json").write_text(json.dumps(spec))
    assert rundir.tokenizer(cfg).vocab_size == json.loads((ckpt / "state.json").read_text())["model"]["vocab_size"]
    with pytest.raises(RuntimeError, match="another tokenizer"):
        rundir.model(cfg, ckpt)


def test_an_old_checkpoint_without_a_record_loads_with_the_run_config_and_a_warning(trained, caplog):
    run, ckpt = trained
    state = json.loads((ckpt / "state.json").read_text())
    del state["model"], state["tokenizer_sha256"]  # as written by an older safepretrain
    (ckpt / "state.json").write_text(json.dumps(state))
    rundir = RunDir(run)
    with caplog.at_level("WARNING", logger="safepretrain"):
        model = rundir.model(rundir.load_config(), ckpt)
    assert model.cfg.rope_theta == 10000.0
    warned = [r.getMessage() for r in caplog.records if "records no model config" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0]


# --------------------------------------------------------------------------- item 10: a full disk
# a full disk as Python's own writes report it, and as safetensors' (Rust) writer does
FULL_DISK = {"oserror": lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
             "safetensors": lambda: SafetensorError("Error while serializing: I/O error: No space left on device "
                                                    "(os error 28) at path \"ckpt/.tmp_step/.tmpX1\"")}


def _full_disk_at(monkeypatch, call: int, kind: str = "oserror") -> None:
    """The `call`-th optimizer-state write (one per checkpoint) fails as a full disk does."""
    real, calls = checkpoint.save_file, []

    def save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise FULL_DISK[kind]()
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", save_file)


@pytest.mark.parametrize("kind", sorted(FULL_DISK))
def test_a_full_disk_in_a_checkpoint_write_is_one_line_and_leaves_the_last_checkpoint(tmp_path, monkeypatch, kind):
    cfg = load_config(None, TINY).model.model_copy(update={"vocab_size": 64})
    out = tmp_path / "stage"
    _full_disk_at(monkeypatch, call=2, kind=kind)  # step 2 is written, step 4's write hits the full disk
    with pytest.raises(RuntimeError) as failed:
        train(train_cfg(), cfg, Batches(6, 64), out, seed=0, label="t")
    message = str(failed.value)
    assert "\n" not in message and "No space left on device" in message and "step_000004" in message
    assert "free disk space" in message and "resume" in message
    assert [p.name for p in (out / "ckpt").iterdir()] == ["step_000002"]  # no .tmp_step_000004 left behind
    assert load_model(cfg, latest_checkpoint(out / "ckpt")).cfg == cfg  # the previous checkpoint still loads
    monkeypatch.undo()
    resumed = train(train_cfg(), cfg, Batches(6, 64), out, seed=0, label="t")  # rerun: resumes at step 2
    assert resumed.checkpoint.name == "step_000006"
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_the_cli_reports_a_full_disk_without_a_traceback(tmp_path, monkeypatch, capsys):
    cfg = load_config(None, TINY).model.model_copy(update={"vocab_size": 64})
    _full_disk_at(monkeypatch, call=1)

    def study(args):  # the study's training step, as `safepretrain study` reaches it
        train(train_cfg(), cfg, Batches(4, 64), tmp_path / "stage", seed=0, label="t")
        return 0

    monkeypatch.setattr(cli, "_study", study)
    assert cli.main(["study", "configs/smoke.yaml", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint step_000002 could not be written") and "\n" not in err


# --------------------------------------------------------------------------- export: --to, umask, killed exports
@pytest.fixture(scope="module")
def tiny():
    tag = "<potentially unsafe content>"
    tok = TextTokenizer(train_tokenizer(WORDS, 300, 1, tag), tag)
    cfg = load_config(None, TINY).model.model_copy(update={"vocab_size": tok.vocab_size})
    torch.manual_seed(0)
    return Transformer(cfg).eval(), tok


def test_export_under_a_file_is_a_clear_error(trained, tmp_path, capsys):
    _, ckpt = trained
    afile = tmp_path / "notes.txt"
    afile.write_text("not a folder")
    assert cli.main(["export", str(ckpt), "--to", str(afile / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --to ") and "is a file" in err and "Traceback" not in err
    assert afile.read_text() == "not a folder"


def test_exported_files_follow_the_umask(tiny, tmp_path):
    model, tok = tiny
    old = os.umask(0o027)
    try:
        out = export_hf(model, tok, tmp_path / "hf")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [out, *out.iterdir()]}
    assert modes.pop("hf") == 0o750
    assert "model.safetensors" in modes and set(modes.values()) == {0o640}, modes


KILLED_EXPORT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    from transformers import LlamaForCausalLM
    from safepretrain.config import load_config
    from safepretrain.data.tokenizer import TextTokenizer, train_tokenizer
    from safepretrain.export import export_hf
    from safepretrain.train.model import Transformer

    save = LlamaForCausalLM.save_pretrained
    def save_then_die(self, *args, **kwargs):  # killed after the weights are on disk, before the tokenizer
        save(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    LlamaForCausalLM.save_pretrained = save_then_die
    tag = "<potentially unsafe content>"
    tok = TextTokenizer(train_tokenizer({words!r}, 300, 1, tag), tag)
    cfg = load_config(None, {tiny!r}).model.model_copy(update={{"vocab_size": tok.vocab_size}})
    export_hf(Transformer(cfg), tok, Path(sys.argv[1]))
""").format(words=WORDS, tiny=TINY)


def test_a_killed_export_leaves_nothing_loadable_and_the_next_export_cleans_it(tiny, tmp_path):
    out = tmp_path / "exports" / "hf"
    killed = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(out)], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = [p for p in out.parent.iterdir() if p.name.startswith(".")]
    assert len(left) == 1 and not out.exists()  # the hidden folder of the killed export
    with pytest.raises(OSError):  # not loadable as a model: no config.json at its top level
        LlamaForCausalLM.from_pretrained(left[0])
    model, tok = tiny
    export_hf(model, tok, out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["hf"]  # the stale hidden folder is gone
    assert LlamaForCausalLM.from_pretrained(out) is not None


def test_a_live_export_folder_is_not_removed(tmp_path):
    live = tmp_path / ".hf.abcd1234.export-partial"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the export that builds in it holds it
        assert export.remove_stale_partials(tmp_path) == [] and live.is_dir()
    finally:
        os.close(fd)
    assert export.remove_stale_partials(tmp_path) == [live] and not live.exists()
