"""The shipped spurious pools and user pool files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli.cli.app import app
from starft_cli.errors import TemplateError
from starft_cli.prompts import fill, load_pool, pool_names

runner = CliRunner()
SIZES = {"background": 58, "texture": 54, "resolution": 20}


@pytest.mark.parametrize(("name", "size"), SIZES.items())
def test_shipped_pools_have_the_reference_sizes_and_one_slot_each(name: str, size: int):
    pool = load_pool(name)
    assert len(pool) == size
    assert len(set(pool)) == size
    assert all(t.count("{}") == 1 for t in pool)
    assert all(t.endswith(".") for t in pool)
    assert all(len(t.replace("{}", "").split()) >= 1 for t in pool)


def test_pool_names_and_spurious_text_shape():
    from starft_cli.train.bank import spurious_text

    assert set(SIZES) <= set(pool_names())
    assert (
        spurious_text("{} in snowy landscapes.", "a photo of a goldfish.")
        == "a photo of a goldfish in snowy landscapes."
    )
    assert spurious_text("striped {}.", "a photo of a goldfish.") == "striped a photo of a goldfish."
    assert fill(load_pool("background")[0], "x") != load_pool("background")[0]


def test_user_pool_file_drops_duplicates_with_a_warning_and_skips_blank_lines(tmp_path: Path, caplog):
    path = tmp_path / "pool.txt"
    path.write_text("{} at dawn.\n\n# a comment\n{} at dusk.\n{} at dawn.\n")
    with caplog.at_level(logging.WARNING):
        pool = load_pool(str(path))
    assert pool == ["{} at dawn.", "{} at dusk."]
    assert "duplicate" in caplog.text


@pytest.mark.parametrize("bad", ["no slot here.", "{} and {} twice.", "{} with a stray }."])
def test_user_pool_file_with_a_bad_template_is_refused(tmp_path: Path, bad: str):
    path = tmp_path / "pool.txt"
    path.write_text(f"{{}} fine.\n{bad}\n")
    with pytest.raises(TemplateError, match="line 2"):
        load_pool(str(path))


def test_finetune_refuses_a_bad_pool_file(tmp_path: Path, class_folders: Path):
    path = tmp_path / "pool.txt"
    path.write_text("no slot\n")
    result = CliRunner().invoke(
        app, ["finetune", "--backbone", "starft-tiny:none", "--data", f"folder:{class_folders}", "--pool", str(path),
              "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "exactly one slot" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# imported pools (`starft pool import | list | show`, `--pool NAME`)


def _authors_file(path: Path) -> Path:
    import torch

    torch.save(["{} in snowy landscapes.", "  {c} on a   sandy\nbeach. ", "{} in snowy landscapes."], path)
    return path


def test_import_the_authors_torch_pool_and_use_it_by_name(tmp_path: Path, class_folders: Path, starft_home: Path):
    from starft_cli.train.config import build_config
    from starft_cli.train.loop import prepare

    source = _authors_file(tmp_path / "spurious_bg.pt")
    done = runner.invoke(app, ["pool", "import", str(source), "--name", "authors-background"])
    assert done.exit_code == 0, done.output
    assert "imported 2 templates" in done.stdout and "(torch)" in done.stdout
    stored = starft_home / "config" / "pools" / "authors-background.txt"
    assert stored.is_file() and "sha256" in stored.read_text()
    expected = ["{} in snowy landscapes.", "{} on a sandy beach."]  # slot and spaces normalised, duplicate dropped
    assert load_pool("authors-background") == expected
    shown = runner.invoke(app, ["pool", "show", "authors-background"])
    assert shown.exit_code == 0 and shown.stdout.splitlines()[1:] == expected
    listed = runner.invoke(app, ["pool", "list", "--json"])
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["authors-background"]["kind"] == "imported" and rows["authors-background"]["templates"] == 2
    assert rows["background"]["kind"] == "shipped" and rows["background"]["templates"] == 58
    # finetune --pool NAME resolves it (checked before any model is loaded)
    config = build_config({"backbone": "starft-tiny:none", "data": f"folder:{class_folders}", "method": "starft",
                           "pool": "authors-background", "out": str(tmp_path / "run")})  # fmt: skip
    assert prepare(config).pool == expected
    # the default name is the file's
    again = runner.invoke(app, ["pool", "import", str(source)])
    assert again.exit_code == 0 and load_pool("spurious_bg") == expected


def test_import_json_and_text_pools(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(["{} at dawn.", "{c} at dusk."]))
    (tmp_path / "p.txt").write_text("# mine\n{} at noon.\n\n{c} at night.\n")
    assert runner.invoke(app, ["pool", "import", str(tmp_path / "p.json"), "--name", "times"]).exit_code == 0
    assert load_pool("times") == ["{} at dawn.", "{} at dusk."]
    done = runner.invoke(app, ["pool", "import", str(tmp_path / "p.txt"), "--name", "times2"])
    assert done.exit_code == 0 and "(text)" in done.stdout
    assert load_pool("times2") == ["{} at noon.", "{} at night."]


def test_a_torch_file_with_other_objects_is_refused_without_unpickling(tmp_path: Path) -> None:
    import os

    import torch

    marker = tmp_path / "was-unpickled"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save([Payload()], tmp_path / "evil.pt")
    done = runner.invoke(app, ["pool", "import", str(tmp_path / "evil.pt"), "--name", "evil"])
    assert done.exit_code == 1
    assert "refused without unpickling" in done.stderr and done.stderr.count("\n") == 1
    assert not marker.exists()
    torch.save({"templates": ["{} x."]}, tmp_path / "dict.pt")
    done = runner.invoke(app, ["pool", "import", str(tmp_path / "dict.pt")])
    assert done.exit_code == 1 and "holds dict, not a list of strings" in done.stderr
    torch.save(["{} x.", 3], tmp_path / "mixed.pt")
    done = runner.invoke(app, ["pool", "import", str(tmp_path / "mixed.pt")])
    assert done.exit_code == 1 and "non-string items" in done.stderr
    assert "evil" not in runner.invoke(app, ["pool", "list"]).stdout


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "a.json",
            json.dumps(["{} fine.", "no slot"]),
            "item 2: 'no slot' must have exactly one slot (it has no slot)",
        ),
        ("b.json", json.dumps(["{} and {c}."]), "item 1: '{} and {}.' must have exactly one slot (it has 2 slots)"),
        ("c.txt", "{} fine.\nno slot here\n", "line 2: 'no slot here' must have exactly one slot"),
        ("d.json", json.dumps({"a": "{}"}), "holds dict, not a list of strings"),
        ("e.json", "[not json", "is not valid JSON"),
        ("f.txt", "# nothing\n", "holds no templates"),
    ],
)
def test_bad_pool_files_are_one_line_errors(tmp_path: Path, name: str, content: str, message: str) -> None:
    (tmp_path / name).write_text(content)
    done = runner.invoke(app, ["pool", "import", str(tmp_path / name), "--name", "bad"])
    assert done.exit_code == 1, done.output
    assert message in done.stderr and done.stderr.count("\n") == 1


def test_pool_names_are_checked(tmp_path: Path) -> None:
    source = tmp_path / "p.txt"
    source.write_text("{} at dawn.\n")
    shipped = runner.invoke(app, ["pool", "import", str(source), "--name", "background"])
    assert shipped.exit_code == 2 and "'background' is a shipped pool" in shipped.stderr
    odd = runner.invoke(app, ["pool", "import", str(source), "--name", "../x"])
    assert odd.exit_code == 2 and "cannot name a pool" in odd.stderr
    assert runner.invoke(app, ["pool", "import", str(source), "--name", "mine"]).exit_code == 0
    twice = runner.invoke(app, ["pool", "import", str(source), "--name", "mine"])
    assert twice.exit_code == 2 and "already imported" in twice.stderr and "--force" in twice.stderr
    source.write_text("{} at dusk.\n")
    assert runner.invoke(app, ["pool", "import", str(source), "--name", "mine", "--force"]).exit_code == 0
    assert load_pool("mine") == ["{} at dusk."]


def test_unknown_pool_names_the_close_matches() -> None:
    done = runner.invoke(app, ["pool", "show", "backgrund"])
    assert done.exit_code == 1 and "Did you mean background" in done.stderr
    assert "starft pool import" in done.stderr


def test_a_damaged_imported_pool_is_listed_not_fatal(starft_home: Path) -> None:
    folder = starft_home / "config" / "pools"
    folder.mkdir(parents=True)
    (folder / "broken.txt").write_text("no slot\n")
    listed = runner.invoke(app, ["pool", "list"])
    assert listed.exit_code == 0 and "broken" in listed.stdout and "unreadable" in listed.stdout
    shown = runner.invoke(app, ["pool", "show", "broken"])
    assert shown.exit_code == 1 and "line 1: 'no slot' must have exactly one slot" in shown.stderr
