"""The install tests' copies of a template environment share its files by
hard link, so what a test does in its copy must never reach the template."""

import os
from pathlib import Path

from tests.install.conftest import copy_tree_linked, relocate


def make_template(root: Path) -> Path:
    template = root / "template"
    (template / "bin").mkdir(parents=True)
    (template / "lib").mkdir()
    (template / "bin" / "rasa").write_text(f"#!{template}/bin/python\nimport rasa\n")
    (template / "bin" / "rasa").chmod(0o755)
    (template / "pyvenv.cfg").write_text(f"home = /usr/bin\ncommand = /usr/bin/python3 -m venv {template}\n")
    (template / "lib" / "module.py").write_text("VALUE = 1\n")
    return template


def test_a_relocated_copy_names_its_own_folder_and_leaves_the_template_as_it_was(tmp_path):
    template = make_template(tmp_path)
    before = {path: path.read_bytes() for path in template.rglob("*") if path.is_file()}
    copy = tmp_path / "copy"

    copy_tree_linked(template, copy)
    relocate(copy, template)

    assert {path: path.read_bytes() for path in template.rglob("*") if path.is_file()} == before
    assert (copy / "bin" / "rasa").read_text() == f"#!{copy}/bin/python\nimport rasa\n"
    assert str(copy) in (copy / "pyvenv.cfg").read_text()
    assert os.access(copy / "bin" / "rasa", os.X_OK)
    # What relocate() does not rewrite is shared, not copied.
    assert (copy / "lib" / "module.py").stat().st_ino == (template / "lib" / "module.py").stat().st_ino
