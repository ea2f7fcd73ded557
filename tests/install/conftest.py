"""The wheel as a release would ship it, and a wheelhouse of everything it
needs, so an install into a fresh virtual environment is ``--no-index``: a
dependency the wheel does not declare is then missing as it would be for a
user, and nothing comes from the internet at test time after the first run."""

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
WHEELHOUSES = ROOT / "build" / "install-test"
#: What pip needs to build the wheel in an isolated environment (pyproject's build-system).
BUILD_REQUIREMENTS = ["setuptools>=61", "wheel"]


def clean_env(**extra: str) -> Dict[str, str]:
    """The environment of a user's shell: nothing pointing into this checkout or its .venv."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(RASA_TELEMETRY_ENABLED="false", TF_CPP_MIN_LOG_LEVEL="2", SQLALCHEMY_SILENCE_UBER_WARNING="1", **extra)
    return env


def run(command: List[str], cwd: Path, timeout: float, env: Optional[Dict[str, str]] = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Held by one test worker (or run) at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prune(kind: str, keep: Path) -> None:
    """Remove the other folders of this kind (``wheelhouse``, ``rasa-venv``...):
    made for constraints that changed since, a GB or more each. One that
    another run holds the lock of is left alone."""
    for other in WHEELHOUSES.glob(f"{kind}-*"):
        if other == keep or not other.is_dir() or not re.fullmatch(rf"{re.escape(kind)}-[0-9a-f]{{12}}", other.name):
            continue
        with open(other.with_name(other.name + ".lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(other, ignore_errors=True)


def in_tree_build() -> "contextlib.AbstractContextManager[None]":
    """One build of this checkout at a time: pip builds a local directory in
    place (its build/ and *.egg-info), and another worker may be building it."""
    return file_lock(WHEELHOUSES / ".build.lock")


def declared_dependencies() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M).group(1)


def wheelhouse_for(wheel: Path) -> Path:
    """Wheels of every dependency the wheel declares (and of the build
    requirements), kept between runs while constraints and dependencies stay
    the same. No Rasa: the wheel requires none, and the project has its own
    (rasa_venv), so a dependency the wheel forgets to declare is missing."""
    key = hashlib.sha256(
        CONSTRAINTS.read_bytes() + declared_dependencies().encode() + " ".join(BUILD_REQUIREMENTS).encode()
    ).hexdigest()[:12]
    wheelhouse = WHEELHOUSES / f"wheelhouse-{key}"
    with file_lock(wheelhouse.with_name(wheelhouse.name + ".lock")):
        if not (wheelhouse / ".complete").exists():
            wheelhouse.mkdir(parents=True, exist_ok=True)
            # pip wheel, not pip download: sdists are built once, here, where the index is at hand.
            run([sys.executable, "-m", "pip", "wheel", "-q", "-c", str(CONSTRAINTS), "-w", str(wheelhouse), str(wheel),
                 *BUILD_REQUIREMENTS], cwd=ROOT, timeout=1800)
            (wheelhouse / ".complete").touch()
            prune("wheelhouse", keep=wheelhouse)
    return wheelhouse


@contextlib.contextmanager
def rasa_training_cache() -> Iterator[Path]:
    """A folder for Rasa's own training cache (RASA_CACHE_DIRECTORY, by
    default the project's .rasa/cache), kept between runs and used by one run
    at a time. Rasa keys each cached result by the component, its settings and
    its inputs, so a guide whose domain, data or config changed is trained
    again; an unchanged one is trained from the cache, as a reader's second
    ``rasa train`` is."""
    cache = WHEELHOUSES / "rasa-training-cache"
    with file_lock(WHEELHOUSES / "rasa-training-cache.lock"):
        yield cache


#: The Rasa a reader's project has before the guide begins.
PROJECT_RASA = "rasa>=3.6,<3.7"


def rasa_venv(where: Path) -> Path:
    """A new virtual environment at ``where`` with Rasa 3.6 installed: the
    reader's starting point, before step 1 of the guide."""
    return venv_with(where, PROJECT_RASA, CONSTRAINTS)


def venv_with(where: Path, requirement: str, constraints: Path, python: str = sys.executable) -> Path:
    """A new virtual environment at ``where``, made by ``python``, with
    ``requirement`` installed under ``constraints``: a project's Rasa, there
    before the steps a test follows.

    Installing a Rasa is no step of what the install tests prove, and it was
    most of their time (over 2 GB to unpack: about 7 minutes of the guide
    test's 13 on a loaded 2-core machine). So it is installed once, from the
    package index as `make install` installs .venv, into a template under
    build/install-test/ kept while the requirement, the constraints and the
    Python stay the same; each test gets a copy pointed at its new place. The
    steps the tests follow (pip wheel, pip install, pip check, rasa train, the
    doctor) still run in the copy, with nothing of this checkout on the path."""
    version = run([python, "-c", "import sys; print(sys.version)"], cwd=ROOT, timeout=60).strip()
    key = hashlib.sha256(
        constraints.read_bytes() + requirement.encode() + version.encode()
    ).hexdigest()[:12]
    template = WHEELHOUSES / f"{re.split(r'[<>=!~ ]', requirement)[0]}-venv-{key}"
    with file_lock(template.with_name(template.name + ".lock")):
        if not (template / ".complete").exists():
            shutil.rmtree(template, ignore_errors=True)
            run([python, "-m", "venv", str(template)], cwd=ROOT, timeout=300)
            run([str(template / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile",
                 "--disable-pip-version-check", "-c", str(constraints), requirement], cwd=ROOT, timeout=1800)
            named = subprocess.run(["grep", "-rlF", "--exclude-dir=__pycache__", str(template), str(template)],
                                   capture_output=True, text=True).stdout.split()
            outside = [path for path in named if Path(path).parent != template / "bin"
                       and Path(path) != template / "pyvenv.cfg"]
            assert not outside, f"{outside} name the environment's folder: relocate() would leave them pointing there"
            (template / ".complete").touch()
            prune(template.name.rsplit("-", 1)[0], keep=template)
        copy_tree_linked(template, where)
    (where / ".complete").unlink()
    relocate(where, template)
    return where


def copy_tree_linked(template: Path, where: Path) -> None:
    """A copy of ``template`` whose files are hard links to the template's.

    A full copy of a Rasa environment is 1.5 to 3 GB, and a run makes several:
    a CI machine ran out of disk on them. Links cost nothing, and nothing
    writes into a linked file: pip unlinks a file before it writes one of the
    same name and moves files aside to uninstall, Python writes bytecode to a
    new file and renames it, and relocate() replaces what it rewrites. Where
    the two folders are on different file systems, a plain copy."""
    linked = subprocess.run(["cp", "-al", str(template), str(where)], capture_output=True, text=True)
    if linked.returncode != 0:
        shutil.rmtree(where, ignore_errors=True)
        # cp -a: links, modes and times as they are.
        run(["cp", "-a", str(template), str(where)], cwd=ROOT, timeout=600)


def relocate(venv: Path, was: Path) -> None:
    """Point a copied virtual environment at its new place: its scripts'
    ``#!`` lines, the activate scripts and (from Python 3.11) pyvenv.cfg's
    ``command`` name its folder, and nothing else does (venv_with checks that
    when it makes the template)."""
    old, new = str(was).encode(), str(venv).encode()
    for path in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file():
            continue
        text = path.read_bytes()
        if old in text:
            # A new file, not a write into this one: it may be a hard link to the template's.
            rewritten = path.with_name(path.name + ".relocating")
            rewritten.write_bytes(text.replace(old, new))
            shutil.copymode(path, rewritten)
            os.replace(rewritten, path)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """Built once per run: under pytest-xdist the workers share the run's
    temporary folder (the parent of each worker's own), so the first install
    test to need the wheel builds it and the others on other workers take it."""
    base = tmp_path_factory.getbasetemp()
    out = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "wheel"
    with in_tree_build():
        if not list(out.glob("rasa_servicenow_handoff-*.whl")):
            run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                 str(ROOT)], cwd=ROOT, timeout=300)
    (built,) = out.glob("rasa_servicenow_handoff-*.whl")
    return built
