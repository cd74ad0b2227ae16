"""``starft zoo``: the model zoo (list, info, download, verify, path, rm, add, publish)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from starft_cli.cli.command import Command
from starft_cli.errors import StarftError, UsageError, ZooError
from starft_cli.formats import OutputFormat
from starft_cli.zoo.manifest import ZooKind

app = typer.Typer(
    name="zoo",
    help="The model zoo: named models with verified downloads, and publishing your own.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


ListFormat = OutputFormat.choices("table", "json")  # zoo list --format

NameArg = Annotated[str, typer.Argument(help="Zoo model name (see `starft zoo list`).", show_default=False)]


def _metrics_summary(entry: Any, limit: int = 3) -> str:
    parts = [f"{m.dataset} {m.metric} {m.value:g}" for m in entry.metrics[:limit]]
    if len(entry.metrics) > limit:
        parts.append(f"+{len(entry.metrics) - limit} more")
    return "; ".join(parts) or "-"


@app.command("list")
def list_command(
    kind: Annotated[ZooKind | None, typer.Option("--kind", help="Only models of this kind.")] = None,
    output_format: Annotated[ListFormat, typer.Option("--format", help="Output format.")] = ListFormat.table,
) -> None:
    """List the zoo's models: architecture, source, license and reported metrics."""
    from starft_cli.zoo import load_zoo

    valid, broken = load_zoo()
    for bad in broken.values():  # listed apart, on stderr: the table and the JSON stay the valid entries
        typer.echo(f"warning: {bad.error().one_line()}", err=True)
    found = [e for e in valid.values() if kind is None or e.kind == kind.value]
    found.sort(key=lambda e: e.name)
    if output_format == ListFormat.json:
        typer.echo(json.dumps([e.to_dict() for e in found], indent=2))
        return
    if not found:
        typer.echo("no zoo models" + (f" of kind {kind.value}" if kind else ""))
        return
    from tabulate import tabulate

    rows = [
        [e.name, e.arch, str(e.source), e.kind, e.license, e.training_data or "-", _metrics_summary(e)]
        + ([e.origin] if any(x.origin != "shipped" for x in found) else [])
        for e in found
    ]
    header = ["name", "arch", "source", "kind", "license", "training data", "reported metrics"]
    if any(x.origin != "shipped" for x in found):
        header.append("manifest")
    typer.echo(tabulate(rows, headers=header, tablefmt="simple"))


@app.command("info")
def info_command(name: NameArg) -> None:
    """Everything the manifest says about a model, and whether it is downloaded."""
    from starft_cli.zoo import broken_entries, cached_path, find_entry, get_entry

    bad = broken_entries().get(name)
    try:
        entry = find_entry(name)
    except ZooError:  # only a broken entry of that name
        entry = None
    if entry is None and bad is not None:
        typer.echo(f"name      {name}\nmanifest  {bad.origin} ({bad.manifest})\nproblem   {bad.error().one_line()}")
        return
    entry = get_entry(name)
    data = entry.to_dict()
    rows = [
        ("name", entry.name),
        ("architecture", entry.arch),
        ("source", str(entry.source)),
        ("sha256", entry.sha256 or _unpinned(entry)),
        ("kind", entry.kind),
        ("license", entry.license),
        ("training data", entry.training_data or "-"),
        ("description", entry.description or "-"),
        ("quick_gelu", str(entry.quick_gelu).lower()),
        ("preprocess", json.dumps(data["preprocess"]) if entry.preprocess else "architecture default"),
        ("manifest", f"{entry.origin} ({entry.manifest})"),
    ]
    absent = "not built yet (any use builds it)" if entry.source.kind == "recipe" else "not downloaded"
    try:
        path = cached_path(entry)
        rows.append(("local file", str(path) if path else absent))
    except StarftError as exc:  # a broken entry is shown with its problem, not refused
        rows.append(("problem", exc.one_line()))
    if bad is not None:  # another manifest's entry of that name that is broken (e.g. shadows this one)
        rows.append(("problem", bad.error().one_line()))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")
    if entry.metrics:
        from tabulate import tabulate

        typer.echo("\nreported metrics:")
        typer.echo(
            tabulate(
                [[m.suite, m.dataset, m.metric, m.value, m.source] for m in entry.metrics],
                headers=["suite", "dataset", "metric", "value", "source"],
            )
        )


@app.command("download")
def download_command(
    name: NameArg,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Hub revision instead of the pinned one (sha256 still checked).")
    ] = None,
) -> None:
    """Download a model into the cache (progress bar) and verify its sha256; prints the local path."""
    from starft_cli.zoo import fetch, get_entry

    entry = get_entry(name)
    if revision is not None and entry.source.kind != "hf-hub":
        raise UsageError(f"--revision applies to Hub sources only; '{name}' comes from {entry.source}")
    typer.echo(str(fetch(entry, revision=revision)))


@app.command("verify")
def verify_command(
    name: Annotated[str | None, typer.Argument(help="One model (default: every downloaded model).")] = None,
) -> None:
    """Re-hash downloaded models against the manifest; a mismatching file is deleted (exit 1)."""
    from starft_cli.zoo import get_entry, load_zoo, verify
    from starft_cli.zoo.hub import VerifyResult, verify_all

    if name:
        results = [verify(get_entry(name))]
    else:
        valid, broken = load_zoo()
        results = verify_all(sorted(valid.values(), key=lambda e: e.name))
        results += [VerifyResult(b.name, "broken", None, None, None, b.error().one_line()) for b in broken.values()]
        results.sort(key=lambda r: r.name)
        if not results:
            typer.echo("no zoo model is downloaded")
            return
    for r in results:
        detail = {
            "ok": f"sha256 {r.actual}",
            "unpinned": f"sha256 {r.actual} (no sha256 in the manifest to compare with)",
            "missing": "not downloaded",
            "mismatch": r.message,
            "broken": r.message,
        }[r.status]
        typer.echo(f"{r.name}: {r.status} {detail}")
    bad = [r for r in results if r.status == "mismatch"]
    if name is not None and results[0].status == "missing":
        raise ZooError(f"zoo model '{name}' is not downloaded", f"Run `starft zoo download {name}`")
    if bad:
        from starft_cli import zoo as zoo_core

        built = {r.name for r in bad if zoo_core.get_entry(r.name).source.kind == "recipe"}
        hints = []
        if len(built) < len(bad):
            hints.append(
                "Mismatching files were deleted; download them again with `starft zoo download NAME`, or fix the entry"
            )
        if built:
            hints.append(
                "A damaged locally built model is built again on its next use, or by `starft zoo download NAME`"
            )
        raise ZooError(
            f"{len(bad)} zoo model(s) failed verification: {', '.join(r.name for r in bad)}", "; ".join(hints)
        )


@app.command("path")
def path_command(name: NameArg) -> None:
    """Print the local path of a downloaded model (no network)."""
    from starft_cli.zoo import cached_path, get_entry

    entry = get_entry(name)
    path = cached_path(entry)
    if path is None:
        raise ZooError(f"zoo model '{name}' is not downloaded", f"Run `starft zoo download {name}`")
    typer.echo(str(path))


@app.command("rm")
def rm_command(
    name: NameArg,
    forget: Annotated[
        bool, typer.Option("--forget", help="Also remove the entry from your user manifest (added with `zoo add`).")
    ] = False,
) -> None:
    """Delete a model's downloaded weights from the cache (and, with --forget, its user manifest entry)."""
    from starft_cli.zoo import get_entry, remove
    from starft_cli.zoo.manifest import forget_user_entry, user_entry_names

    try:
        entry = get_entry(name)
    except ZooError as exc:  # a broken entry (e.g. without `kind`): nothing to locate; forgetting it is the fix
        if not forget or name not in user_entry_names():
            raise
        entry, removed = None, []
        typer.echo(f"{name}: no cached weights located ({exc.message})")
    if forget and entry is not None and name not in user_entry_names():
        raise UsageError(
            f"'{name}' is not in your user manifest (it comes from {entry.origin}: {entry.manifest})",
            "Only entries added with `starft zoo add` can be forgotten",
        )
    if forget and entry is not None and entry.origin != "user":  # the user's entry is broken: keep the other's files
        entry = None
    try:
        removed = remove(entry) if entry is not None else []
    except StarftError as exc:
        if not forget:
            raise
        removed = []  # a broken entry (unknown arch or tag) has no file to find: forgetting it is the fix
        typer.echo(f"{name}: no cached weights located ({exc.message})")
    for path in removed:
        typer.echo(f"deleted {path}")
    if not removed and entry is not None:
        typer.echo(f"{name}: nothing downloaded")
    if forget:
        typer.echo(f"removed '{name}' from {forget_user_entry(name)}")


@app.command("add")
def add_command(
    name: NameArg,
    source: Annotated[
        str,
        typer.Option("--source", help="open_clip:TAG, hf-hub:ORG/NAME[/FILE.safetensors]@COMMIT or an https:// URL."),
    ],
    arch: Annotated[str, typer.Option("--arch", help="open_clip architecture, e.g. ViT-B-16.")],
    sha256: Annotated[str | None, typer.Option("--sha256", help="sha256 of the weights file.")] = None,
    kind: Annotated[
        ZooKind | None,
        typer.Option("--kind", help="Kind of model (default: zero-shot for open_clip: sources, else starft)."),
    ] = None,
    license_: Annotated[str, typer.Option("--license", help="License of the weights.")] = "unknown",
    training_data: Annotated[str | None, typer.Option("--training-data", help="What it was trained on.")] = None,
    description: Annotated[str | None, typer.Option("--description", help="One line about the model.")] = None,
    quick_gelu: Annotated[bool, typer.Option("--quick-gelu", help="The model uses QuickGELU.")] = False,
    override: Annotated[
        bool, typer.Option("--override", help="Replace a shipped entry of the same name on purpose.")
    ] = False,
) -> None:
    """Add a model to your user manifest (merged over the shipped one)."""
    from starft_cli.zoo import check_entry, entries
    from starft_cli.zoo.manifest import read_user_entries, user_entry_names, validate_entry, write_user_entries

    if kind is None:
        kind = ZooKind.zero_shot if source.strip().startswith("open_clip:") else ZooKind.starft
    data: dict[str, Any] = {"arch": arch, "source": source, "kind": kind.value, "license": license_}
    for key, value in (("sha256", sha256), ("training_data", training_data), ("description", description)):
        if value is not None:
            data[key] = value
    if quick_gelu:
        data["quick_gelu"] = True
    if override:
        data["override"] = True
    entry = validate_entry(name, data, origin="user", where=f"zoo add {name}")
    check_entry(entry, fix="Nothing was written; check --arch and --source")  # nothing broken is ever written
    user = read_user_entries()
    if name in user_entry_names():
        raise UsageError(
            f"'{name}' is already in your user manifest", f"Remove it first: `starft zoo rm {name} --forget`"
        )
    existing = entries().get(name)
    if existing is not None and not override:
        raise UsageError(
            f"'{name}' is already a zoo model ({existing.origin}: {existing.manifest})",
            "Choose another name, or pass --override to replace it on purpose",
        )
    user[name] = entry
    path = write_user_entries(user)
    typer.echo(f"added '{name}' to {path}")


@app.command("publish")
def publish_command(
    path: Annotated[Path, typer.Argument(help="A run directory or a checkpoint folder.", show_default=False)],
    repo: Annotated[str, typer.Option("--repo", help="Hub repository ORG/NAME to upload to.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    revision_message: Annotated[
        str | None, typer.Option("--revision-message", help="Commit message of the upload.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write the folder it would upload; send nothing.")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder to write (default: PATH/hub-upload for --dry-run).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Zoo name of the model (default: the repo name).")] = None,
    license_: Annotated[str, typer.Option("--license", help="License of the published weights.")] = "mit",
) -> None:
    """Publish a fine-tuned model to the Hugging Face Hub and print its zoo manifest entry."""
    import tempfile

    from starft_cli.zoo import publish

    plan = publish.plan(path, repo, license=license_, name=name)
    if dry_run:
        folder = out or ((plan.run_dir or plan.checkpoint.parent) / "hub-upload")
        written = publish.write_folder(plan, folder)
        typer.echo(f"dry run: wrote {len(written)} files to {folder} (nothing uploaded)")
        for item in written:
            typer.echo(f"  {item.name}")
        return
    with tempfile.TemporaryDirectory(prefix="starft-publish-") as tmp:
        folder = out or Path(tmp)
        publish.write_folder(plan, folder)
        revision = publish.upload(plan, folder, private=private, message=revision_message)
    entry = publish.manifest_entry(plan, revision)
    typer.echo(f"uploaded {plan.checkpoint} to {repo} at commit {revision}")
    typer.echo("\nzoo manifest entry (add it to a manifest, or run the `starft zoo add` line below):\n")
    typer.echo(publish.entry_text(entry))
    add = (
        f"starft zoo add {entry.name} --arch {entry.arch} --source {entry.source} --sha256 {entry.sha256} "
        f"--kind {entry.kind} --license {entry.license}"
    )
    typer.echo(add)


def _unpinned(entry: Any) -> str:
    if entry.source.kind == "recipe":
        return "- (built on this machine; its build.json records the sha256 that every use checks)"
    return "- (none pinned; open_clip's pretrained registry serves the file)"


COMMANDS = [Command("zoo", app)]
