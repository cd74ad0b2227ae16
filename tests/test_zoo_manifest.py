"""The zoo manifest: schema validation, the shipped manifest, overlay merging, and list/info/path/add."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from starft_cli import zoo
from starft_cli.cli.app import app
from starft_cli.errors import ModelNotFoundError, ZooError
from starft_cli.zoo.manifest import (
    entries_to_toml,
    parse_manifest,
    parse_source,
    shipped_manifest_path,
    user_manifest_path,
    validate_entry,
)
from tests.zoo_helpers import manifest_text, write_zoo

SHA = "a" * 64
COMMIT = "0123456789abcdef0123456789abcdef01234567"
runner = CliRunner()


def _base(**fields: object) -> dict[str, object]:
    data: dict[str, object] = {
        "arch": "ViT-B-16",
        "source": f"hf-hub:org/model@{COMMIT}",
        "sha256": SHA,
        "kind": "starft",
        "license": "MIT",
    }
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


# -- validation -------------------------------------------------------------------------------------

BAD_ENTRIES = [
    (
        "path traversal in the Hub file name",
        {"source": f"hf-hub:org/model/../../etc/passwd.safetensors@{COMMIT}"},
        "unsafe file name",
    ),
    ("absolute file name", {"source": f"hf-hub:org/model//abs.safetensors@{COMMIT}"}, "unsafe file name"),
    ("dot segment", {"source": f"hf-hub:org/model/./w.safetensors@{COMMIT}"}, "unsafe file name"),
    ("backslash", {"source": f"hf-hub:org/model/a\\\\b.safetensors@{COMMIT}"}, "unsafe file name"),
    ("traversal in a URL file name", {"source": "https://example.org/w/..%2f.."}, "not a .safetensors file"),
    ("http URL", {"source": "http://example.org/w.safetensors"}, "scheme 'http' is not allowed"),
    ("ftp URL", {"source": "ftp://example.org/w.safetensors"}, "scheme 'ftp' is not allowed"),
    ("pickle weights", {"source": f"hf-hub:org/model/model.bin@{COMMIT}"}, "not a .safetensors file"),
    ("missing sha256 (hub)", {"sha256": None}, "missing 'sha256'"),
    ("missing sha256 (url)", {"sha256": None, "source": "https://example.org/w.safetensors"}, "missing 'sha256'"),
    ("short sha256", {"sha256": "abc"}, "64 hexadecimal"),
    ("branch instead of commit", {"source": "hf-hub:org/model@main"}, "not a full commit hash"),
    ("unpinned hub source", {"source": "hf-hub:org/model"}, "no pinned revision"),
    ("bad repo", {"source": f"hf-hub:org@{COMMIT}"}, "malformed Hub repo"),
    ("unknown source", {"source": "s3://bucket/w.safetensors"}, "scheme 's3' is not allowed"),
    ("bare word source", {"source": "somewhere"}, "unknown source"),
    ("unknown kind", {"kind": "finetuned"}, "kind 'finetuned'"),
    ("missing license", {"license": None}, "missing 'license'"),
    ("missing arch", {"arch": None}, "missing 'arch'"),
    ("typo key", {"lisence": "MIT"}, "unknown key 'lisence'"),
    ("quick_gelu not bool", {"quick_gelu": "yes"}, "'quick_gelu' must be true or false"),
    ("preprocess unknown key", {"preprocess": {"colour": 1}}, "unknown preprocess key 'colour'"),
    ("preprocess bad mean", {"preprocess": {"mean": [0.5, 0.5]}}, "preprocess 'mean'"),
    ("metric without source", {"metrics": [{"suite": "s", "dataset": "d", "metric": "m", "value": 1.0}]}, "'source'"),
    (
        "metric value not a number",
        {"metrics": [{"suite": "s", "dataset": "d", "metric": "m", "value": "x", "source": "p"}]},
        "'value' must be a finite number",
    ),
]


@pytest.mark.parametrize(("case", "fields", "message"), BAD_ENTRIES, ids=[c[0] for c in BAD_ENTRIES])
def test_invalid_entries_are_rejected(case: str, fields: dict[str, object], message: str) -> None:
    with pytest.raises(ZooError) as info:
        validate_entry("m", _base(**fields))
    assert message in info.value.one_line(), case


@pytest.mark.parametrize("name", ["../evil", "a/b", "", "-x", "a..b", "name with space", "zoo:x"])
def test_invalid_names_are_rejected(name: str) -> None:
    with pytest.raises(ZooError, match="invalid model name"):
        validate_entry(name, _base())


def test_valid_entries_parse_every_source_form() -> None:
    hub = validate_entry("a", _base(source=f"hf-hub:org/model/sub/w.safetensors@{COMMIT}"))
    assert (hub.source.kind, hub.source.repo, hub.source.filename, hub.source.revision) == (
        "hf-hub",
        "org/model",
        "sub/w.safetensors",
        COMMIT,
    )
    default = validate_entry("b", _base())
    assert default.source.filename == "open_clip_model.safetensors"
    assert str(default.source) == f"hf-hub:org/model@{COMMIT}"
    url = validate_entry("c", _base(source="https://example.org/x/w.safetensors?download=1"))
    assert (url.source.kind, url.source.filename) == ("url", "w.safetensors")
    tag = validate_entry("d", _base(source="open_clip:laion400m_e32", sha256=None, kind="zero-shot"))
    assert (tag.source.kind, tag.source.tag, tag.sha256) == ("open_clip", "laion400m_e32", None)
    full = validate_entry(
        "e",
        _base(
            quick_gelu=True,
            preprocess={"mean": [0.5, 0.5, 0.5], "size": 224, "interpolation": "bilinear"},
            metrics=[{"suite": "zs", "dataset": "cifar10", "metric": "top1", "value": 91, "source": "paper tab. 3"}],
        ),
    )
    assert full.quick_gelu is True
    assert full.preprocess == {"mean": [0.5, 0.5, 0.5], "size": 224, "interpolation": "bilinear"}
    assert full.metrics[0].value == 91.0 and full.metrics[0].source == "paper tab. 3"


def test_sha256_is_normalised_to_lowercase() -> None:
    assert validate_entry("a", _base(sha256="AB" * 32)).sha256 == "ab" * 32


def test_manifest_schema_and_toml_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match="schema 2 is not supported"):
        parse_manifest("schema = 2\n", origin="user", path=tmp_path / "z.toml")
    with pytest.raises(ZooError, match="schema None"):
        parse_manifest("[models.a]\n", origin="user")
    with pytest.raises(ZooError, match=r"z\.toml is not valid TOML"):
        parse_manifest("schema = = 1", origin="user", path=tmp_path / "z.toml")
    with pytest.raises(ZooError, match="unknown top-level key 'model'"):
        parse_manifest("schema = 1\n[model.a]\narch='x'\n", origin="user")
    with pytest.raises(ZooError, match=r"entry 'bad'.*missing 'sha256'"):
        parse_manifest(manifest_text({"bad": _base(sha256=None)}), origin="user", path=tmp_path / "z.toml")


def test_entries_round_trip_through_toml() -> None:
    original = validate_entry(
        "round-trip",
        _base(
            description='quotes " and \\ backslashes',
            preprocess={"std": [0.2, 0.3, 0.4]},
            metrics=[{"suite": "s", "dataset": "d", "metric": "m", "value": 0.25, "source": "x"}],
        ),
    )
    text = entries_to_toml([original], header="hello")
    back = parse_manifest(text, origin="shipped")["round-trip"]
    assert back.to_dict() | {"manifest": None} == original.to_dict() | {"manifest": None}


# -- the shipped manifest ---------------------------------------------------------------------------


def test_shipped_manifest_lists_the_paper_bases_through_open_clip() -> None:
    entries = zoo.entries()
    expected = {
        "vit-b-16-laion400m-e31": ("ViT-B-16", "laion400m_e31"),
        "vit-b-16-laion400m-e32": ("ViT-B-16", "laion400m_e32"),
        "vit-l-14-laion400m-e31": ("ViT-L-14", "laion400m_e31"),
        "vit-l-14-laion400m-e32": ("ViT-L-14", "laion400m_e32"),
    }
    assert set(entries) == {*expected, "starft-demo-zero-shot"}
    demo = entries["starft-demo-zero-shot"]
    assert (demo.arch, str(demo.source), demo.kind, demo.sha256) == (
        "starft-demo",
        "recipe:starft-demo",
        "zero-shot",
        None,
    )
    for name, (arch, tag) in expected.items():
        entry = entries[name]
        assert (entry.arch, entry.source.kind, entry.source.tag) == (arch, "open_clip", tag)
        assert (entry.kind, entry.license, entry.training_data, entry.origin) == (
            "zero-shot",
            "MIT",
            "LAION-400M",
            "shipped",
        )
    # No StarFT checkpoint is published anywhere: the shipped zoo must not claim one.
    assert not [e for e in entries.values() if e.kind == "starft"]
    assert shipped_manifest_path() == Path(__file__).resolve().parents[1] / "zoo" / "manifest.toml"


def test_shipped_tags_exist_in_open_clip_registry() -> None:
    import open_clip

    for entry in zoo.entries().values():
        if entry.source.kind == "recipe":  # built locally (the demo's model)
            continue
        cfg = open_clip.get_pretrained_cfg(entry.arch, entry.source.tag)
        assert cfg and cfg.get("hf_hub"), entry.name


def test_resolve_open_clip_entry_returns_the_tag_without_downloading() -> None:
    resolved = zoo.resolve(zoo.find_entry("vit-b-16-laion400m-e32"))
    assert (resolved.arch, resolved.pretrained_tag, resolved.weights, resolved.quick_gelu, resolved.preprocess) == (
        "ViT-B-16",
        "laion400m_e32",
        None,
        False,
        {},
    )


def test_zoo_package_imports_without_torch() -> None:
    code = "import sys, starft_cli.zoo as z; z.entry_names(); z.find_entry('x'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- merging ----------------------------------------------------------------------------------------


def test_user_overlay_and_starft_zoo_are_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_zoo(user_manifest_path(), {"mine": _base()})
    extra = write_zoo(tmp_path / "team.toml", {"team-model": _base(kind="baseline")})
    monkeypatch.setenv("STARFT_ZOO", str(extra))
    entries = zoo.entries()
    assert entries["mine"].origin == "user" and entries["mine"].manifest == user_manifest_path()
    assert entries["team-model"].origin == "STARFT_ZOO" and entries["team-model"].kind == "baseline"
    assert "vit-b-16-laion400m-e31" in entries
    assert zoo.entry_names() == sorted(entries)


def test_user_entry_may_not_silently_shadow_a_shipped_one() -> None:
    write_zoo(user_manifest_path(), {"vit-b-16-laion400m-e31": _base()})
    problem = zoo.broken_entries()["vit-b-16-laion400m-e31"].error().one_line()
    assert "would shadow the shipped entry" in problem and "override = true" in problem
    assert str(user_manifest_path()) in problem
    assert zoo.entries()["vit-b-16-laion400m-e31"].origin == "shipped"  # the shipped entry keeps working
    info = runner.invoke(app, ["zoo", "info", "vit-b-16-laion400m-e31"])
    assert info.exit_code == 0 and "would shadow the shipped entry" in info.stdout


def test_explicit_override_replaces_a_shipped_entry() -> None:
    write_zoo(user_manifest_path(), {"vit-b-16-laion400m-e31": _base(override=True)})
    entry = zoo.find_entry("vit-b-16-laion400m-e31")
    assert entry is not None and entry.origin == "user" and entry.source.kind == "hf-hub"


def test_starft_zoo_may_not_shadow_a_user_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_zoo(user_manifest_path(), {"mine": _base()})
    monkeypatch.setenv("STARFT_ZOO", str(write_zoo(tmp_path / "z.toml", {"mine": _base()})))
    assert "would shadow the user entry" in zoo.broken_entries()["mine"].problem
    assert zoo.entries()["mine"].origin == "user"


def test_missing_starft_zoo_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARFT_ZOO", str(tmp_path / "nope.toml"))
    with pytest.raises(ZooError, match="STARFT_ZOO points to"):
        zoo.entries()


def test_unknown_name_suggests_close_matches() -> None:
    assert zoo.find_entry("vit-b-16") is None
    with pytest.raises(ModelNotFoundError) as info:
        zoo.get_entry("vit-b-16-laion400m-e3")
    assert "Did you mean vit-b-16-laion400m-e3" in info.value.one_line()


# -- CLI: list, info, path, add ---------------------------------------------------------------------


def test_cli_list_table_and_json() -> None:
    result = runner.invoke(app, ["zoo", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["name", "arch", "source", "kind", "license"]
    assert any(line.split()[:3] == ["vit-l-14-laion400m-e32", "ViT-L-14", "open_clip:laion400m_e32"] for line in lines)
    data = json.loads(runner.invoke(app, ["zoo", "list", "--format", "json"]).stdout)
    assert [d["name"] for d in data] == sorted(d["name"] for d in data)
    assert {d["training_data"] for d in data if d["name"] != "starft-demo-zero-shot"} == {"LAION-400M"}
    assert runner.invoke(app, ["zoo", "list", "--kind", "starft"]).stdout.strip() == "no zoo models of kind starft"


def test_cli_list_shows_metrics_and_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = manifest_text({"m1": _base()}) + (
        '\n[[models.m1.metrics]]\nsuite = "zero-shot"\ndataset = "cifar10"\nmetric = "top1"\nvalue = 0.875\n'
        'source = "test table"\n'
    )
    path = tmp_path / "z.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("STARFT_ZOO", str(path))
    result = runner.invoke(app, ["zoo", "list", "--kind", "starft"])
    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[2]
    assert row.split()[:2] == ["m1", "ViT-B-16"] and "cifar10 top1 0.875" in row and row.endswith("STARFT_ZOO")
    info = runner.invoke(app, ["zoo", "info", "m1"])
    assert info.exit_code == 0
    assert "test table" in info.stdout and f"sha256         {SHA}" in info.stdout
    assert "local file     not downloaded" in info.stdout


def test_cli_info_unknown_and_path_not_downloaded() -> None:
    result = runner.invoke(app, ["zoo", "info", "vit-b-16-laion400m"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unknown zoo model 'vit-b-16-laion400m'. Did you mean")
    result = runner.invoke(app, ["zoo", "path", "vit-b-16-laion400m-e31"])
    assert result.exit_code == 1
    assert "is not downloaded. Run `starft zoo download vit-b-16-laion400m-e31`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_add_writes_the_user_manifest_and_refuses_duplicates() -> None:
    args = ["zoo", "add", "my-model", "--arch", "ViT-B-16", "--source", f"hf-hub:me/m@{COMMIT}", "--sha256", SHA]
    result = runner.invoke(app, [*args, "--license", "apache-2.0", "--training-data", "ImageNet"])
    assert result.exit_code == 0, result.output
    data = tomllib.loads(user_manifest_path().read_text(encoding="utf-8"))
    assert data["models"]["my-model"] == {
        "arch": "ViT-B-16",
        "source": f"hf-hub:me/m@{COMMIT}",
        "sha256": SHA,
        "kind": "starft",
        "license": "apache-2.0",
        "training_data": "ImageNet",
    }
    assert zoo.find_entry("my-model").origin == "user"
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already in your user manifest" in again.stderr
    shadow = runner.invoke(app, ["zoo", "add", "vit-b-16-laion400m-e31", *args[3:]])
    assert shadow.exit_code == 2 and "--override" in shadow.stderr
    unhashed = runner.invoke(app, ["zoo", "add", "x", "--arch", "ViT-B-16", "--source", f"hf-hub:me/m@{COMMIT}"])
    assert unhashed.exit_code == 1 and "missing 'sha256'" in unhashed.stderr
    insecure = runner.invoke(
        app, ["zoo", "add", "y", "--arch", "ViT-B-16", "--source", "http://x.org/w.safetensors", "--sha256", SHA]
    )
    assert insecure.exit_code == 1 and "https only" in insecure.stderr
    forgotten = runner.invoke(app, ["zoo", "rm", "my-model", "--forget"])
    assert forgotten.exit_code == 0, forgotten.output
    assert zoo.find_entry("my-model") is None


def test_parse_source_rejects_non_https() -> None:
    for text in ("http://a/b.safetensors", "file:///etc/b.safetensors", "HTTP://a/b.safetensors"):
        with pytest.raises(ZooError) as info:
            parse_source(text)
        assert "is not allowed" in info.value.one_line() and "https only" in info.value.one_line()


def test_a_name_twice_in_one_manifest_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "z.toml"
    path.write_text(manifest_text({"twice": _base()}) + manifest_text({"twice": _base()}).replace("schema = 1\n", ""))
    monkeypatch.setenv("STARFT_ZOO", str(path))
    with pytest.raises(ZooError) as info:
        zoo.entries()
    assert f"zoo manifest {path} is not valid TOML" in info.value.one_line()


# ---------------------------------------------------------------------------------------------------------------
# zoo add validates before writing; a broken entry can be inspected and forgotten (issue 9, item 9)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--arch", "NoSuchArch", "--source", "open_clip:laion400m_e31"], ["unknown architecture 'NoSuchArch'"]),
        (["--arch", "ViT-B-61", "--source", f"hf-hub:me/m@{COMMIT}", "--sha256", SHA], ["Did you mean ViT-B-16"]),
        (
            ["--arch", "ViT-B-16", "--source", "open_clip:nosuchtag"],
            ["no pretrained tag 'nosuchtag' for ViT-B-16", "laion400m_e31"],
        ),
        (["--arch", "ViT-B-16", "--source", "open_clip:laion400m_e3"], ["Did you mean laion400m_e3"]),
    ],
)
def test_cli_add_refuses_an_entry_that_cannot_resolve(args: list[str], needles: list[str]) -> None:
    result = runner.invoke(app, ["zoo", "add", "broken", *args])
    assert result.exit_code == 1, result.output
    for needle in needles:
        assert needle in result.stderr
    assert "Nothing was written" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not user_manifest_path().exists() and zoo.find_entry("broken") is None


def test_cli_add_kind_defaults_to_the_source() -> None:
    zs = runner.invoke(app, ["zoo", "add", "zs", "--arch", "ViT-B-16", "--source", "open_clip:laion400m_e32"])
    assert zs.exit_code == 0, zs.output
    hub_args = ["--arch", "starft-tiny", "--source", f"hf-hub:me/m@{COMMIT}", "--sha256", SHA]
    hub = runner.invoke(app, ["zoo", "add", "ft", *hub_args])
    assert hub.exit_code == 0, hub.output
    assert (zoo.find_entry("zs").kind, zoo.find_entry("ft").kind) == ("zero-shot", "starft")
    explicit = runner.invoke(
        app, ["zoo", "add", "b", "--arch", "ViT-B-16", "--source", "open_clip:laion400m_e31", "--kind", "baseline"]
    )
    assert explicit.exit_code == 0 and zoo.find_entry("b").kind == "baseline"


def test_a_hand_edited_broken_entry_can_be_inspected_verified_and_forgotten() -> None:
    """An entry written by hand (or by an older starft) with an unknown tag: info shows the problem, verify reports it
    and goes on with the others, rm --forget removes it."""
    user_manifest_path().parent.mkdir(parents=True, exist_ok=True)
    user_manifest_path().write_text(
        manifest_text(
            {
                "bad-tag": {"arch": "ViT-B-16", "source": "open_clip:nosuchtag", "kind": "zero-shot", "license": "x"},
                "bad-arch": {"arch": "NoSuchArch", "source": "open_clip:x", "kind": "zero-shot", "license": "x"},
            }
        ),
        encoding="utf-8",
    )
    info = runner.invoke(app, ["zoo", "info", "bad-tag"])
    assert info.exit_code == 0, info.output
    assert "problem" in info.stdout and "no pretrained tag 'nosuchtag'" in info.stdout
    assert "starft zoo rm bad-tag --forget" in info.stdout
    verify = runner.invoke(app, ["zoo", "verify"])
    assert verify.exit_code == 0, verify.output
    assert "bad-tag: broken" in verify.stdout
    one = runner.invoke(app, ["zoo", "verify", "bad-tag"])
    assert one.exit_code == 1 and "starft zoo rm bad-tag --forget" in one.stderr
    for name in ("bad-tag", "bad-arch"):
        forgotten = runner.invoke(app, ["zoo", "rm", name, "--forget"])
        assert forgotten.exit_code == 0, forgotten.output
        assert f"removed '{name}'" in forgotten.stdout
        assert zoo.find_entry(name) is None
    assert runner.invoke(app, ["zoo", "rm", "vit-b-16-laion400m-e31", "--forget"]).exit_code == 2  # shipped stays


@pytest.mark.parametrize("missing", ["kind", "license"])
def test_a_hand_edited_entry_without_a_required_field_takes_nothing_else_down(missing: str, images: list[Path]) -> None:
    """One bad entry (issue 20, item 4): every other zoo model and command works; info and verify show the
    problem; using it says what is wrong; rm --forget removes it and keeps the other user entries as written."""
    good = _base()
    bad = {k: v for k, v in _base().items() if k != missing}
    write_zoo(user_manifest_path(), {"mine": good, "hand-edited": bad})
    assert "mine" in zoo.entries() and "hand-edited" not in zoo.entries()
    listed = runner.invoke(app, ["zoo", "list"])
    assert listed.exit_code == 0 and "mine" in listed.stdout and "vit-b-16-laion400m-e31" in listed.stdout
    assert f"zoo entry 'hand-edited' is broken: {user_manifest_path()}: entry 'hand-edited': missing '{missing}'" in (
        listed.stderr
    )
    info = runner.invoke(app, ["zoo", "info", "hand-edited"])
    assert info.exit_code == 0 and f"missing '{missing}'" in info.stdout
    assert "starft zoo rm hand-edited --forget" in info.stdout
    assert runner.invoke(app, ["zoo", "info", "mine"]).exit_code == 0
    verify = runner.invoke(app, ["zoo", "verify"])
    assert verify.exit_code == 0 and "hand-edited: broken zoo entry 'hand-edited' is broken" in verify.stdout
    use = runner.invoke(app, ["classify", str(images[0]), "--labels", "a,b", "-m", "hand-edited"])
    assert use.exit_code == 1 and f"missing '{missing}'" in use.stderr and "Traceback" not in use.output
    from starft_cli.models import parse_model_ref

    assert parse_model_ref("mine").kind == "zoo"  # the other zoo models resolve
    forgotten = runner.invoke(app, ["zoo", "rm", "hand-edited", "--forget"])
    assert forgotten.exit_code == 0, forgotten.output
    assert f"removed 'hand-edited' from {user_manifest_path()}" in forgotten.stdout
    assert zoo.broken_entries() == {} and zoo.find_entry("hand-edited") is None
    assert zoo.entries()["mine"] == zoo.validate_entry("mine", good, origin="user", manifest=user_manifest_path())


def test_adding_keeps_a_broken_user_entry_as_written() -> None:
    write_zoo(user_manifest_path(), {"hand-edited": {k: v for k, v in _base().items() if k != "kind"}})
    added = runner.invoke(app, ["zoo", "add", "zs", "--arch", "ViT-B-16", "--source", "open_clip:laion400m_e32"])
    assert added.exit_code == 0, added.output
    assert set(zoo.broken_entries()) == {"hand-edited"} and zoo.find_entry("zs") is not None
