"""The builds one benchmark run measures side by side.

A build is what a scenario needs to run the channel as a user would: a
Python (and the ``rasa`` next to it), the checkout the channel comes from
(the working directory of its processes, so ``rasa run`` imports that
checkout's ``connectors`` and nothing else), and the demo model trained from
that checkout's own domain. Three kinds:

* **this**: the checkout the bench runs from, with its ``.venv``.
* **baseline** (``--baseline <commit>``): the commit checked out in a git
  worktree under ``build/baseline/<full sha>``, with its own environment made
  by its own Makefile (``make install model``). Both are reused while they
  exist: the worktree when it is at the commit, the environment and the model
  because make rebuilds only what is out of date.
* **another environment** (``--build NAME=PYTHON``), e.g. a Rasa Pro
  virtualenv: only a Python, so only the channel-level scenarios run there
  (``rasa run`` on Rasa Pro needs a licence and a Pro-trained model).

What a build's channel accepts is asked of the build itself (``probe_build.py``
run with its Python): a scenario whose channel options a build does not know
is skipped for that build, with the reason. The bench imports nothing of the
connector here; it talks to each build's channel over HTTP.
"""

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
BASELINES = ROOT / "build" / "baseline"
PROBE_SCRIPT = Path(__file__).with_name("probe_build.py")
MODEL_NAME = Path("models") / "demo.tar.gz"
#: What the demo model is trained from: a baseline whose copies are byte for
#: byte this checkout's can take this checkout's model instead of training.
TRAINING_INPUTS = ("config.yml", "domain.yml", "data")
#: Names this checkout's own builds use; ``--build`` picks others.
RESERVED_NAMES = frozenset({"this", "baseline"})
#: Make's own variables from an enclosing ``make bench`` must not steer the
#: baseline's make, nor this environment's variables its Python.
_INHERITED_NOT = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")


class BuildError(Exception):
    """A build cannot be set up; the message says why and what to do."""


class Unsupported(Exception):
    """A scenario cannot run on a build (an option its channel does not know,
    no ``rasa run``); the scenario is skipped for that build with this reason."""


@dataclass
class Build:
    name: str
    python: Path
    #: The checkout its channel comes from; None for a bare environment.
    source: Optional[Path] = None
    #: The demo model for ``rasa run``; None: channel-level scenarios only.
    model: Optional[Path] = None
    commit: Optional[str] = None
    dirty: Optional[bool] = None
    #: What ``probe_build.py`` found: versions, where the connector lives.
    info: Dict[str, Any] = field(default_factory=dict)
    #: Channel options asked about so far: name -> accepted.
    _options: Dict[str, bool] = field(default_factory=dict, repr=False)
    _option_errors: Dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def rasa(self) -> Path:
        return self.python.with_name("rasa")

    @property
    def cwd(self) -> Path:
        """Where its processes run: the checkout, so that ``rasa run`` (which
        puts its working directory on ``sys.path``) imports this build's
        connector and not another's."""
        return self.source if self.source is not None else Path("/")

    @property
    def runs_rasa(self) -> bool:
        return self.model is not None and self.rasa.exists()

    @property
    def label(self) -> str:
        """Short description for tables: name, commit, Rasa."""
        parts = []
        if self.commit:
            parts.append(self.commit[:7] + ("+dirty" if self.dirty else ""))
        if self.info.get("rasa_pro"):
            parts.append(f"rasa-pro {self.info['rasa_pro']}")
        elif self.info.get("rasa"):
            parts.append(f"rasa {self.info['rasa']}")
        if self.info.get("python"):
            parts.append(f"Python {self.info['python']}")
        return f"{self.name} ({', '.join(parts)})" if parts else self.name

    def env(self, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        environment = {key: value for key, value in os.environ.items() if key not in _INHERITED_NOT}
        environment.update(extra or {})
        return environment

    def as_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "python": str(self.python),
            "source": str(self.source) if self.source else None,
            "model": str(self.model) if self.model else None,
            "commit": self.commit,
            "dirty": self.dirty,
            **{key: value for key, value in self.info.items() if key != "accepted"},
            "channel_options_refused": sorted(name for name, ok in self._options.items() if not ok),
        }

    # -- channel options -------------------------------------------------

    def refused_options(self, channel: Mapping[str, Any]) -> Dict[str, str]:
        """The options of ``channel`` this build's channel refuses, with its
        reason. Asked of the build once per option name."""
        unknown = [name for name in channel if name not in self._options]
        if unknown:
            base = {key: channel[key] for key in BASE_OPTIONS if key in channel}
            answer = probe(self, base, {name: channel[name] for name in unknown})
            if "import_error" in answer:
                raise Unsupported(f"build {self.name} cannot import the channel: {answer['import_error']}")
            for name in unknown:
                self._options[name] = bool(answer["accepted"].get(name))
                if not self._options[name]:
                    self._option_errors[name] = answer.get("errors", {}).get(name, "refused")
        return {name: self._option_errors.get(name, "refused") for name in channel if not self._options[name]}

    def channel_options(self, channel: Mapping[str, Any], optional: Iterable[str] = ()) -> Dict[str, Any]:
        """``channel`` without the ``optional`` options this build refuses;
        ``Unsupported`` when it refuses one that is not optional."""
        refused = self.refused_options(channel)
        needed = sorted(set(refused) - set(optional))
        if needed:
            raise Unsupported(
                f"build {self.name} does not know channel option(s) {', '.join(needed)} "
                f"({refused[needed[0]][:160]})"
            )
        return {name: value for name, value in channel.items() if name not in refused}


#: What every probe passes with each option, so that only that option decides.
BASE_OPTIONS = ("instance_url", "api", "username", "password", "queue_id", "webhook_secret")


def probe(build: Build, base: Mapping[str, Any], options: Mapping[str, Any]) -> Dict[str, Any]:
    """Run ``probe_build.py`` with the build's Python (in its checkout)."""
    request = json.dumps({"base": dict(base), "options": dict(options)})
    try:
        completed = subprocess.run(
            [str(build.python), str(PROBE_SCRIPT)], input=request, capture_output=True, text=True,
            cwd=build.cwd, env=build.env({"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}), timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"could not run {build.python}: {error}") from error
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise BuildError(f"probing build {build.name} with {build.python} failed:\n{completed.stderr[-2000:]}")
    return json.loads(lines[-1])


def describe(build: Build) -> None:
    """Fill ``build.info`` from the build itself (versions, connector path)
    and check the connector comes from the build's checkout."""
    answer = probe(build, {}, {})
    build.info = {key: value for key, value in answer.items() if key not in ("accepted", "errors")}
    connector = answer.get("connector")
    if build.source is not None and connector and not Path(connector).resolve().is_relative_to(build.source.resolve()):
        raise BuildError(
            f"build {build.name}: {build.python} imports the connector from {connector}, not from {build.source}"
        )
    if build.source is None and connector:
        # An editable install of a checkout: its domain and project files are there.
        checkout = Path(connector).resolve().parents[2]
        if (checkout / "domain.yml").exists():
            build.source = checkout


# -- git ---------------------------------------------------------------------


def git(*args: str, cwd: Path = ROOT) -> str:
    completed = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if completed.returncode != 0:
        raise BuildError(f"git {' '.join(args)} failed: {completed.stderr.strip()}")
    return completed.stdout.strip()


def resolve_commit(revision: str, repo: Path = ROOT) -> str:
    """The full sha of ``revision`` (a sha, a branch, ``HEAD~3``)."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", cwd=repo)
    except BuildError:
        raise BuildError(f"'{revision}' is not a commit of {repo}") from None


def is_dirty(tree: Path) -> bool:
    """Uncommitted changes to the code (the bench's own results do not count:
    each run rewrites them)."""
    return bool(git("status", "--porcelain", "--untracked-files=normal", "--", ".", ":(exclude)bench/results", cwd=tree))


def worktree(commit: str, repo: Path = ROOT, under: Path = BASELINES) -> Tuple[Path, bool]:
    """A checkout of ``commit`` (full sha) at ``under/<commit>``: the one there
    when it is at that commit, else a new git worktree. Returns it and whether
    it was reused."""
    path = under / commit
    if (path / ".git").exists():
        try:
            if git("rev-parse", "HEAD", cwd=path) == commit:
                return path, True
        except BuildError:
            pass
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # --force: `make clean` removes build/ without telling git, which still
    # lists the worktree; the path is ours to reuse.
    git("worktree", "add", "--force", "--detach", str(path), commit, cwd=repo)
    return path, False


def same_training_inputs(one: Path, other: Path) -> bool:
    """Whether two checkouts train the same demo model (same config, domain, data)."""

    def files(root: Path) -> Dict[str, bytes]:
        found: Dict[str, bytes] = {}
        for name in TRAINING_INPUTS:
            path = root / name
            for item in ([path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []):
                if item.is_file():
                    found[str(item.relative_to(root))] = item.read_bytes()
        return found

    return files(one) == files(other)


def prepare(source: Path, log: Path, model_from: Optional[Path] = None) -> Tuple[Path, Path]:
    """Make the checkout's environment and demo model with its own Makefile
    (``make install``, then ``make model``); make skips what is up to date.
    ``model_from``: a model trained from the same inputs, copied instead of
    training when the checkout has none. Returns (python, model)."""
    env = {key: value for key, value in os.environ.items() if key not in _INHERITED_NOT}
    makefile = (source / "Makefile").read_text() if (source / "Makefile").exists() else ""
    if "\ninstall:" not in makefile and not makefile.startswith("install:"):
        raise BuildError(f"{source} has no Makefile with an 'install' target; give its Python with --build instead")
    _make(source, "install", env, log)
    python = source / ".venv" / "bin" / "python"
    if not python.exists():
        raise BuildError(f"`make install` in {source} made no .venv/bin/python (see {log})")
    model = source / MODEL_NAME
    if not model.exists() and model_from is not None and model_from.exists():
        model.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(model_from, model)
        os.utime(model)  # newer than its inputs, so make keeps it
    if "\nmodel:" in makefile:
        _make(source, "model", env, log)
    elif not model.exists():
        with open(log, "a") as output:
            completed = subprocess.run(
                [str(python.with_name("rasa")), "train", "--fixed-model-name", "demo", "--out", "models"],
                cwd=source, env=env, stdout=output, stderr=subprocess.STDOUT,
            )
        if completed.returncode != 0:
            raise BuildError(f"training the demo model in {source} failed (see {log})")
    if not model.exists():
        raise BuildError(f"no {MODEL_NAME} in {source} after `make model` (see {log})")
    return python, model


def _make(source: Path, target: str, env: Mapping[str, str], log: Path) -> None:
    started = time.monotonic()
    with open(log, "a") as output:
        output.write(f"\n$ make {target}\n")
        output.flush()
        completed = subprocess.run(["make", target], cwd=source, env=dict(env), stdout=output, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        raise BuildError(f"`make {target}` in {source} failed (see {log})")
    if time.monotonic() - started > 5:
        print(f"   make {target} in {source.name[:12]}: {time.monotonic() - started:.0f} s", flush=True)


# -- the builds of a run -----------------------------------------------------


def this_build(python: Path, model: Optional[Path]) -> Build:
    build = Build("this", python, ROOT, model, git("rev-parse", "HEAD"), is_dirty(ROOT))
    describe(build)
    return build


def baseline_build(revision: str, this: Build, repo: Path = ROOT, under: Path = BASELINES) -> Build:
    commit = resolve_commit(revision, repo)
    path, reused = worktree(commit, repo, under)
    print(
        f"   baseline {revision} = {commit[:12]}: {'reusing' if reused else 'checked out'} {path}"
        + ("" if (path / ".venv").exists() else " (first use: `make install model` there, several minutes)"),
        flush=True,
    )
    same_model = this.model if this.model is not None and this.source and same_training_inputs(this.source, path) else None
    python, model = prepare(path, under / f"{commit}.log", model_from=same_model)
    build = Build("baseline", python, path, model, commit, is_dirty(path))
    describe(build)
    return build


def parse_build(spec: str) -> Tuple[str, Path]:
    """``NAME=PYTHON`` of ``--build``."""
    name, sep, python = spec.partition("=")
    name = name.strip()
    if not sep or not name or not python:
        raise BuildError(f"--build wants NAME=PYTHON (e.g. pro=/path/to/.venv-pro/bin/python), not {spec!r}")
    if name in RESERVED_NAMES:
        raise BuildError(f"--build: the name {name!r} is taken (this checkout, --baseline); choose another")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise BuildError(f"--build: use letters, digits, '-' and '_' in the name, not {name!r}")
    path = Path(python).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.exists():
        raise BuildError(f"--build {name}: {path} does not exist")
    return name, path


def other_build(spec: str) -> Build:
    name, python = parse_build(spec)
    build = Build(name, python)
    describe(build)
    return build


#: What `nproc` says, taken before the bench pins itself to one CPU.
USABLE_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine_load() -> Dict[str, Any]:
    """Load averages (1, 5, 15 min) and CPUs, to recognise a noisy run: the
    load average counts every runnable task on the machine, ours included
    (a scenario keeps about two busy)."""
    one, five, fifteen = os.getloadavg()
    return {
        "load_average": [round(one, 2), round(five, 2), round(fifteen, 2)],
        "cpus": os.cpu_count(),
        "cpus_usable": USABLE_CPUS,
    }


def unique_names(builds: List[Build]) -> None:
    seen: Set[str] = set()
    for build in builds:
        if build.name in seen:
            raise BuildError(f"two builds are named {build.name!r}")
        seen.add(build.name)
