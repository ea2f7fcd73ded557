"""Setting up the builds of a side-by-side run, in a throwaway git repository
with a small Makefile: the baseline's worktree and environment are made once
and reused, a checkout that trains the same model borrows it, and what a
build's channel accepts is asked of the build."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import builds
from bench.builds import Build, BuildError, Unsupported

#: Counts its recipes' runs, so reuse shows; "python" is this interpreter.
MAKEFILE = f"""\
install: .venv/.installed

.venv/.installed:
\tmkdir -p .venv/bin && ln -sf {sys.executable} .venv/bin/python && echo once >> install-runs && touch $@

model: models/demo.tar.gz

models/demo.tar.gz: .venv/.installed domain.yml
\tmkdir -p models && echo trained > $@ && echo once >> model-runs
"""


def run(*args: str, cwd: Path) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    run("git", "init", "-q", cwd=path)
    run("git", "config", "user.email", "bench@example.com", cwd=path)
    run("git", "config", "user.name", "bench", cwd=path)
    (path / "Makefile").write_text(MAKEFILE)
    (path / "domain.yml").write_text("version: '3.1'\n")
    (path / ".gitignore").write_text(".venv/\nmodels/\ninstall-runs\nmodel-runs\n")
    run("git", "add", "-A", cwd=path)
    run("git", "commit", "-qm", "first", cwd=path)
    return path


def test_a_short_sha_or_a_branch_resolves_to_the_full_commit(repo):
    full = run("git", "rev-parse", "HEAD", cwd=repo)
    assert builds.resolve_commit(full[:7], repo) == full
    assert builds.resolve_commit("HEAD", repo) == full
    with pytest.raises(BuildError, match="not a commit"):
        builds.resolve_commit("no-such-branch", repo)


def test_the_baseline_worktree_is_keyed_by_the_full_sha_and_reused(repo, tmp_path):
    commit = builds.resolve_commit("HEAD", repo)
    under = tmp_path / "build" / "baseline"
    path, reused = builds.worktree(commit, repo, under)
    assert path == under / commit and not reused
    assert run("git", "rev-parse", "HEAD", cwd=path) == commit
    (path / "kept").write_text("a file the second call must not wipe")
    again, reused = builds.worktree(commit, repo, under)
    assert again == path and reused and (path / "kept").exists()


def test_a_worktree_removed_behind_gits_back_is_made_again(repo, tmp_path):
    commit = builds.resolve_commit("HEAD", repo)
    under = tmp_path / "build" / "baseline"
    path, _ = builds.worktree(commit, repo, under)
    subprocess.run(["rm", "-rf", str(under.parent)], check=True)  # what `make clean` does to build/
    path, reused = builds.worktree(commit, repo, under)
    assert not reused and (path / "Makefile").exists()


def test_the_environment_and_model_are_made_by_the_checkouts_makefile_once(repo, tmp_path):
    commit = builds.resolve_commit("HEAD", repo)
    path, _ = builds.worktree(commit, repo, tmp_path / "baseline")
    log = tmp_path / "setup.log"
    python, model = builds.prepare(path, log)
    assert python == path / ".venv" / "bin" / "python" and model.read_text() == "trained\n"
    builds.prepare(path, log)
    assert (path / "install-runs").read_text() == "once\n"
    assert (path / "model-runs").read_text() == "once\n"


def test_a_checkout_with_the_same_training_inputs_borrows_the_model(repo, tmp_path):
    commit = builds.resolve_commit("HEAD", repo)
    path, _ = builds.worktree(commit, repo, tmp_path / "baseline")
    assert builds.same_training_inputs(repo, path)
    trained = tmp_path / "trained.tar.gz"
    trained.write_text("this checkout's model\n")
    _, model = builds.prepare(path, tmp_path / "setup.log", model_from=trained)
    assert model.read_text() == "this checkout's model\n"
    assert not (path / "model-runs").exists()
    (repo / "domain.yml").write_text("version: '3.1'\nintents: [greet]\n")
    assert not builds.same_training_inputs(repo, path)


def test_a_checkout_without_an_install_target_is_refused_with_the_way_out(tmp_path):
    (tmp_path / "Makefile").write_text("test:\n\ttrue\n")
    with pytest.raises(BuildError, match="--build"):
        builds.prepare(tmp_path, tmp_path / "setup.log")


def test_the_dirty_flag_counts_code_not_the_benchs_own_results(repo):
    assert not builds.is_dirty(repo)
    (repo / "bench" / "results").mkdir(parents=True)
    (repo / "bench" / "results" / "latest.json").write_text("{}")
    assert not builds.is_dirty(repo)
    (repo / "domain.yml").write_text("changed\n")
    assert builds.is_dirty(repo)


def test_build_specs_name_a_python_and_refuse_the_reserved_names(tmp_path):
    name, python = builds.parse_build(f"pro={sys.executable}")
    assert name == "pro" and python == Path(sys.executable)
    for spec, problem in (
        ("pro", "NAME=PYTHON"),
        (f"baseline={sys.executable}", "taken"),
        (f"a b={sys.executable}", "letters"),
        (f"pro={tmp_path / 'missing'}", "does not exist"),
    ):
        with pytest.raises(BuildError, match=problem):
            builds.parse_build(spec)


def test_options_a_build_refuses_are_dropped_when_optional_and_skip_the_scenario_otherwise():
    # Asked of the real channel in this checkout's environment.
    build = Build("this", Path(sys.executable), builds.ROOT)
    channel = {
        "instance_url": "http://127.0.0.1:9", "api": "virtual_agent", "username": "u", "password": "p",
        "webhook_secret": "s", "retry_attempts": 2, "no_such_option": 1,
    }
    kept = build.channel_options(channel, optional={"no_such_option"})
    assert "no_such_option" not in kept and kept["retry_attempts"] == 2
    with pytest.raises(Unsupported, match="no_such_option"):
        build.channel_options(channel)


def test_load_is_recorded_with_the_cpus():
    load = builds.machine_load()
    assert len(load["load_average"]) == 3 and load["cpus"] == os.cpu_count()
