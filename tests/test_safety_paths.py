"""Where barctl writes: `output.dir` and `lockfile` stay inside the project and off the user's
files, refused with their YAML location before anything is built."""

from __future__ import annotations

import pytest

from tests.projects import apply, barctl, make_project, tiny_manifest, write_manifest


def _manifest_with(**fields) -> dict:
    manifest = tiny_manifest(**{k: v for k, v in fields.items() if k != "output_dir"})
    if "output_dir" in fields:
        manifest["output"]["dir"] = fields["output_dir"]
    return manifest


def _user_data(root):
    data = root / "data"
    data.mkdir(parents=True)
    files = {data / f"part{i}.jsonl": f'{{"text": "row {i}"}}\n' for i in range(3)}
    files[data / "prepare.py"] = "print('my script')\n"
    for path, text in files.items():
        path.write_text(text)
    return files


def _refused(path, expected: str, field_line: str) -> None:
    """plan and validate refuse with exit 1, at the field's line, and nothing is built."""
    text = path.read_text()
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.strip().startswith(field_line))
    for command in ("validate", "plan"):
        result = barctl(command, path)
        assert result.exit_code == 1, result.output
        assert f"{path}:{line}:" in result.output and expected in result.output, result.output
        assert "Traceback" not in result.output
    assert not (path.parent / "barctl.lock").exists()


def test_output_dir_over_the_users_data_is_refused_and_the_data_survives(tmp_path, tokenizer_dir):
    files = _user_data(tmp_path)
    path = make_project(tmp_path, tokenizer_dir, _manifest_with(output_dir="data"))
    _refused(path, "output.dir: ", "dir: data")
    _refused(path, "was not made by barctl (it has no .barctl-output file)", "dir: data")
    result = barctl("apply", path, "--auto-approve")
    assert result.exit_code == 1
    assert all(p.read_text() == text for p, text in files.items())


def test_output_dir_over_a_dataset_is_refused_naming_it(tmp_path, tokenizer_dir):
    _user_data(tmp_path)
    manifest = _manifest_with(output_dir="data", datasets={"corpus": {"path": "data/*.jsonl", "format": "text"}})
    path = make_project(tmp_path, tokenizer_dir, manifest)
    _refused(path, "the export replaces this directory, which would delete dataset 'corpus'", "dir: data")


@pytest.mark.parametrize("output_dir,expected", [
    ("bar.yaml", "which would delete the manifest"),
    ("tok", "which would delete the anchor model"),
    ("tok/inner", "lies inside the anchor model"),
    ("../elsewhere", "must be inside the project directory"),
    (".barctl/out", "cannot live inside .barctl/"),
    ("barctl.lock", "which would delete the lockfile"),
])
def test_output_dir_on_protected_paths_is_refused(tmp_path, tokenizer_dir, output_dir, expected):
    path = make_project(tmp_path / "project", tokenizer_dir, _manifest_with(output_dir=output_dir))
    _refused(path, expected, f"dir: {output_dir}")


@pytest.mark.parametrize("lockfile,expected", [
    ("../../etc/x", "must be inside the project directory"),
    ("bar.yaml", "is the manifest; barctl would overwrite it"),
    ("tok/barctl.lock", "lies inside the anchor model"),
    (".barctl/barctl.lock", "cannot live inside .barctl/"),
    ("out/moe/barctl.lock", "which would delete the lockfile"),
])
def test_lockfile_on_protected_paths_is_refused(tmp_path, tokenizer_dir, lockfile, expected):
    path = make_project(tmp_path / "project", tokenizer_dir, _manifest_with(lockfile=lockfile))
    field = "lockfile:" if not lockfile.startswith("out/") else "dir: out/moe"
    _refused(path, expected, field)
    assert not (tmp_path / "etc").exists()


def test_an_empty_or_barctl_made_output_dir_is_replaced_and_marked(tmp_path, tokenizer_dir):
    (tmp_path / "out" / "moe").mkdir(parents=True)  # empty: accepted
    path = make_project(tmp_path, tokenizer_dir)
    apply(path)
    assert (tmp_path / "out" / "moe" / ".barctl-output").is_file()
    write_manifest(path, tiny_manifest(seed=1))  # rebuilds the export over barctl's own directory
    apply(path)
    assert (tmp_path / "out" / "moe" / "config.json").is_file()


def test_export_refuses_a_directory_that_appeared_after_the_plan(tmp_path, tokenizer_dir):
    path = make_project(tmp_path, tokenizer_dir)
    saved = tmp_path / "plan.json"
    assert barctl("plan", path, "--out", saved).exit_code == 0
    user = tmp_path / "out" / "moe"
    user.mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    result = barctl("apply", saved)
    assert result.exit_code == 1 and "was not made by barctl" in result.output
    assert (user / "notes.txt").read_text() == "mine"
