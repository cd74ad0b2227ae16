"""Publishing a fine-tuned model: the upload folder, its model card, the Hub upload and the manifest entry.

A run directory (written by ``starft finetune``, laid out as :mod:`starft_cli.runs` says) holds ``config.json``,
``metrics.jsonl``, ``checkpoints/best/`` or ``checkpoints/last/`` (each an open_clip model folder:
``open_clip_model.safetensors`` + ``open_clip_config.json``) and optionally ``eval/results.json``. A checkpoint folder
can be published directly.
The folder uploaded holds the weights, ``open_clip_config.json``, a classifier method's trained head
(``classification_head.safetensors``) when the checkpoint has one, and a ``README.md`` model card; it loads with
plain open_clip (``create_model_and_transforms(arch, pretrained=FILE)`` or ``hf-hub:ORG/NAME``).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starft_cli.errors import CheckpointError, UsageError, ZooError
from starft_cli.paths import atomic_path, atomic_write_text
from starft_cli.runs import CONFIG_NAME, HEAD_NAME, WEIGHTS_NAME, RunLayout, find_model_folder
from starft_cli.zoo.hub import endpoint, sha256_file
from starft_cli.zoo.manifest import Metric, Source, ZooEntry, entry_to_toml, validate_entry

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


@dataclass
class PublishPlan:
    """Everything a publish needs, read and checked before anything is written or sent."""

    checkpoint: Path
    run_dir: Path | None
    arch: str
    open_clip_config: dict[str, Any]
    run_config: dict[str, Any] | None
    results: list[dict[str, Any]]
    last_metrics: dict[str, Any] | None
    sha256: str
    repo: str
    license: str
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    head: bool = False  # the checkpoint holds a classifier method's trained head (published with the weights)
    left_out: int = 0  # evaluation records of other weights (e.g. the run's other checkpoint), not quoted


def check_repo(repo: str) -> str:
    if not _REPO_RE.match(repo) or ".." in repo:
        raise UsageError(f"invalid Hub repository '{repo}'", "Write `repo` as ORG/NAME", param="repo")
    return repo


def find_checkpoint(path: Path) -> tuple[Path, Path | None]:
    """The checkpoint folder to publish (``best`` preferred over ``last``) and its run directory, if any."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"no such run or checkpoint directory: {path}", "Pass RUN_DIR or a checkpoint folder")
    found = find_model_folder(path)
    if found is not None:
        return found
    raise CheckpointError(
        f"{path} holds no publishable checkpoint",
        f"Expected {WEIGHTS_NAME} in it, or in checkpoints/best/ or checkpoints/last/ of a run directory",
    )


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable {what} {path} ({exc})", "Fix or remove the file") from exc


def _read_metrics_jsonl(path: Path, step: int | None = None) -> dict[str, Any] | None:
    """The training log record of ``step`` (the checkpoint's; the last such record), or the last record when
    ``step`` is None; None when there is none."""
    if not path.is_file():
        return None
    last = None
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} line {i} is not JSON ({exc.msg})") from exc
        if isinstance(record, dict) and (step is None or record.get("step") == step):
            last = record
    return last


def plan(path: Path, repo: str, *, license: str = "mit", name: str | None = None) -> PublishPlan:
    """Read and check what would be published from a run directory or a checkpoint folder."""
    check_repo(repo)
    checkpoint, run_dir = find_checkpoint(path)
    config = _read_json(checkpoint / CONFIG_NAME, "model config") if (checkpoint / CONFIG_NAME).is_file() else None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise CheckpointError(
            f"{checkpoint / CONFIG_NAME} is missing or has no 'model_cfg'",
            "Publish a folder written by starft (save_checkpoint) or open_clip",
        )
    arch = config.get("arch")
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(
            f"{checkpoint / CONFIG_NAME} does not name its architecture ('arch')",
            'Add "arch": "ViT-B-16" (the open_clip architecture) to the file',
        )
    run_config = None
    results: list[dict[str, Any]] = []
    last_metrics = None
    if run_dir is not None:
        layout = RunLayout(run_dir)
        if layout.config.is_file():
            run_config = _read_json(layout.config, "run config")
        results_path = layout.eval_results
        if results_path.is_file():
            data = _read_json(results_path, "evaluation results")
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise CheckpointError(f"{results_path} is not a JSON list of records", "Rerun `starft evaluate`")
            results = [r for r in data if {"dataset", "metric", "value"} <= set(r)]
    metadata = config.get("starft") if isinstance(config.get("starft"), dict) else {}
    if run_dir is not None:
        step = metadata.get("step")  # the published checkpoint's record, not the run's last one
        last_metrics = _read_metrics_jsonl(RunLayout(run_dir).metrics, step if isinstance(step, int) else None)
    from starft_cli.models import read_state_dict, weights_fingerprint

    state = read_state_dict(checkpoint / WEIGHTS_NAME)  # weights that are not finite (a diverged run) are refused
    quoted = _published_results(results, weights_fingerprint(state))
    return PublishPlan(
        checkpoint=checkpoint,
        run_dir=run_dir,
        arch=arch,
        open_clip_config=config,
        run_config=run_config if isinstance(run_config, dict) else None,
        results=quoted,
        last_metrics=last_metrics,
        sha256=sha256_file(checkpoint / WEIGHTS_NAME),
        repo=repo,
        license=license,
        name=name or repo.split("/")[1],
        metadata=metadata,
        head=(checkpoint / HEAD_NAME).is_file(),
        left_out=len(results) - len(quoted),
    )


def _published_results(results: list[dict[str, Any]], fingerprint: str) -> list[dict[str, Any]]:
    """The evaluation records of the weights published: a record that names its weights (``weights_fingerprint``,
    written by every ``starft evaluate``) is kept only when they are the published checkpoint's; records that name
    none are kept (as written by hand)."""
    return [r for r in results if r.get("weights_fingerprint") in (None, fingerprint)]


# ----------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
    else:
        out[prefix.rstrip(".")] = data
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, list | tuple):
        text = ", ".join(str(v) for v in value) if len(value) <= 8 else f"[{len(value)} values]"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _method(p: PublishPlan) -> tuple[str, str | None]:
    sources = [p.metadata, p.run_config or {}]
    method = next((str(s["method"]) for s in sources if s.get("method")), "fine-tuning")
    base = next((str(s[k]) for s in sources for k in ("base_model", "model", "base") if s.get(k)), None)
    return method, base


def model_card(p: PublishPlan, revision_hint: str = "<COMMIT>") -> str:
    """README.md for the Hub: base model, method, hyperparameters, the run's leaderboard, how to load it."""
    method, base = _method(p)
    tags = ["clip", "open_clip", "starft", "zero-shot-image-classification"]
    front = ["---", "library_name: open_clip", f"license: {p.license}", "pipeline_tag: zero-shot-image-classification"]
    front += ["tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    lines = [*front, f"# {p.name}", ""]
    lines.append(
        f"An open_clip `{p.arch}` model fine-tuned with **{method}**"
        + (f" from `{base}`" if base else "")
        + " using the starft command-line tool."
    )
    lines += ["", f"- weights: `{WEIGHTS_NAME}` (safetensors), sha256 `{p.sha256}`", f"- architecture: `{p.arch}`"]
    if p.head:
        names = p.metadata.get("head_classnames") or []
        lines.append(
            f"- classification head: `{HEAD_NAME}` ({len(names)} classes: {_cell(list(names))}; starft uses it for "
            "these classes, plain open_clip ignores it)"
        )
    if base:
        lines.append(f"- base model: `{base}`")
    lines.append(f"- method: {method}")

    hyper = _flatten(p.run_config) if p.run_config else _flatten(p.metadata)
    if hyper:
        lines += ["", "## Training configuration", ""]
        lines.append(_table(["setting", "value"], [[k, v] for k, v in sorted(hyper.items())]))
    if p.results:
        lines += ["", "## Evaluation", ""]
        note = (
            f" ({p.left_out} record(s) of other weights, e.g. the run's other checkpoint, left out)"
            if p.left_out
            else ""
        )
        lines.append(f"Results of the run's evaluation of these weights (`eval/results.json`){note}:")
        lines.append("")
        extra = sorted({k for r in p.results for k in r} - {"model", "dataset", "metric", "value"})
        header = ["model", "dataset", "metric", "value"] + [k for k in extra if k in ("suite", "split", "n")]
        rows = [[r.get(k, "") for k in header] for r in p.results]
        lines.append(_table(header, rows))
    if p.last_metrics:
        scalars = {k: v for k, v in p.last_metrics.items() if isinstance(v, int | float | str)}
        if scalars:
            step = p.metadata.get("step")
            title = f"Training log record of this checkpoint (step {step})" if isinstance(step, int) else None
            lines += ["", f"## {title or 'Last training log record'}", "", "From `metrics.jsonl`:", ""]
            lines.append(_table(["field", "value"], [[k, v] for k, v in scalars.items()]))
    lines += [
        "",
        "## How to use",
        "",
        "With starft (add it to your zoo once, then use its name anywhere a model is accepted; <COMMIT> is the",
        "full hash of the commit that holds this file, from the repository's history):",
        "",
        "```bash",
        f"starft zoo add {p.name} --arch {p.arch} --source hf-hub:{p.repo}@{revision_hint} \\",
        f"    --sha256 {p.sha256} --kind {_kind(method)} --license {p.license}",
        f"starft classify cat.jpg --labels cat,dog --model {p.name}",
        f"# or without a zoo entry: --model hf-hub:{p.repo}",
        "```",
        "",
        "With plain open_clip (it reads the architecture, its settings and the preprocessing from",
        f"`{CONFIG_NAME}`, so this works for every architecture):",
        "",
        "```python",
        "import open_clip",
        "",
        f'model, _, preprocess = open_clip.create_model_and_transforms("hf-hub:{p.repo}")',
        f'tokenizer = open_clip.get_tokenizer("hf-hub:{p.repo}")',
        "# or, from a downloaded copy of this repository (the folder holding both files):",
        'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:PATH/TO/FOLDER")',
        'tokenizer = open_clip.get_tokenizer("local-dir:PATH/TO/FOLDER")',
    ]
    if plain_arch_form_works(p):
        lines += [
            f"# or by architecture name ({p.arch} is one of open_clip's own, with the same settings):",
            f'# open_clip.create_model_and_transforms("{p.arch}", pretrained="{WEIGHTS_NAME}")',
        ]
    lines += ["```", ""]
    return "\n".join(lines)


def plain_arch_form_works(p: PublishPlan) -> bool:
    """Whether ``create_model_and_transforms(ARCH, pretrained=FILE)`` builds this model in plain open_clip: the
    architecture ships with open_clip (not one starft registers, like starft-tiny) and the saved model config and
    preprocessing equal what that name gives (no quick_gelu or preprocessing that only the config file carries)."""
    import dataclasses

    import open_clip
    from open_clip.transform import PreprocessCfg

    shipped = Path(open_clip.__file__).parent / "model_configs" / f"{p.arch}.json"
    if not shipped.is_file():
        return False
    try:
        expected = json.loads(shipped.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    from starft_cli.models import canonical_json

    if canonical_json(expected) != canonical_json(p.open_clip_config.get("model_cfg", {})):
        return False
    default_pp = {**dataclasses.asdict(PreprocessCfg()), "size": expected.get("vision_cfg", {}).get("image_size", 224)}
    saved_pp = {**default_pp, **(p.open_clip_config.get("preprocess_cfg") or {})}
    return _plain_pp(default_pp) == _plain_pp(saved_pp)


def _plain_pp(cfg: dict[str, Any]) -> dict[str, Any]:
    """A preprocess config in one form: tuples as lists, a square size ``[224, 224]`` as ``224``."""
    from starft_cli.models import canonical_json

    out = json.loads(canonical_json(cfg))
    size = out.get("size")
    if isinstance(size, list) and size and len(set(size)) == 1:
        out["size"] = size[0]
    return out


def _kind(method: str) -> str:
    return "starft" if "starft" in method.lower() else "baseline"


# ----------------------------------------------------------------------------------------------
# Folder, upload, manifest entry
# ----------------------------------------------------------------------------------------------


def write_folder(p: PublishPlan, out: Path) -> list[Path]:
    """Write the folder that would be uploaded (weights, open_clip config, model card), atomically per file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a directory", "Choose another `out`", param="out")
    if out.resolve() == p.checkpoint.resolve():
        raise UsageError("`out` must not be the checkpoint folder itself", "Choose another `out`", param="out")
    out.mkdir(parents=True, exist_ok=True)
    written = [out / WEIGHTS_NAME] + ([out / HEAD_NAME] if p.head else [])
    for target in written:
        with atomic_path(target) as tmp:
            shutil.copyfile(p.checkpoint / target.name, tmp)
    if not p.head:  # a head left from an earlier publish into this folder is not this checkpoint's
        (out / HEAD_NAME).unlink(missing_ok=True)
    atomic_write_text(out / CONFIG_NAME, json.dumps(p.open_clip_config, indent=2) + "\n")
    atomic_write_text(out / CARD_NAME, model_card(p))
    return [*written, out / CONFIG_NAME, out / CARD_NAME]


def upload(p: PublishPlan, folder: Path, *, private: bool = False, message: str | None = None) -> str:
    """Create the repo (if needed) and upload the folder through huggingface_hub; returns the commit hash."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint())
    where = f"{p.repo} on {endpoint()}"
    try:
        api.create_repo(p.repo, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=p.repo,
            folder_path=str(folder),
            repo_type="model",
            commit_message=message or f"Upload {p.name} ({p.arch}) with starft",
            allow_patterns=[WEIGHTS_NAME, CONFIG_NAME, CARD_NAME] + ([HEAD_NAME] if p.head else []),
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = (
            "Log in with `hf auth login` (or set HF_TOKEN) with a token that can write to the repository"
            if status in (401, 403)
            else "Check the repository name and your network, then retry"
        )
        raise ZooError(f"upload to {where} failed (HTTP {status}: {_first_line(exc)})", hint) from exc
    except Exception as exc:  # connection problems (httpx), offline mode
        raise ZooError(
            f"upload to {where} failed ({type(exc).__name__}: {_first_line(exc)})",
            "Check your network (and that HF_HUB_OFFLINE is not set), then retry; the folder can be "
            "written without an upload (`dry_run`)",
            param="dry_run",
        ) from exc
    oid = getattr(info, "oid", None)
    if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{40}", oid):
        raise ZooError(f"the Hub did not return a commit hash for the upload to {where}")
    return oid


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _own_results(p: PublishPlan) -> list[dict[str, Any]]:
    models = {str(r.get("model", "")) for r in p.results}
    if len(models) <= 1:
        return p.results
    keys = {p.checkpoint.name, str(p.checkpoint)}
    if p.run_dir is not None:
        keys |= {p.run_dir.name, str(p.run_dir)}
    return [r for r in p.results if any(k and k in str(r.get("model", "")) for k in keys)]


def manifest_entry(p: PublishPlan, revision: str) -> ZooEntry:
    """The zoo manifest entry that makes the published model a zoo model (pinned revision and sha256)."""
    method, base = _method(p)
    metrics = tuple(
        Metric(
            suite=str(r.get("suite") or "eval"),
            dataset=str(r["dataset"]),
            metric=str(r["metric"]),
            value=float(r["value"]),
            source=f"hf-hub:{p.repo}@{revision} README.md (the run's eval/results.json)",
        )
        for r in _own_results(p)
        if isinstance(r.get("value"), int | float) and not isinstance(r.get("value"), bool)
    )
    training = None
    if p.run_config:
        data = p.run_config.get("dataset") or p.run_config.get("data")
        training = str(data) if isinstance(data, str) else None
    entry = ZooEntry(
        name=p.name,
        arch=p.arch,
        source=Source(kind="hf-hub", repo=p.repo, filename=WEIGHTS_NAME, revision=revision),
        kind=_kind(method),
        license=p.license,
        sha256=p.sha256,
        training_data=training,
        description=f"{p.arch} fine-tuned with {method}" + (f" from {base}" if base else ""),
        metrics=metrics,
        origin="publish",
    )
    # Round trip through the validator: what we print must be accepted by every manifest reader.
    fields = entry.to_toml_fields()
    return validate_entry(p.name, fields, origin="publish")


def entry_text(entry: ZooEntry) -> str:
    return entry_to_toml(entry).lstrip("\n")
