"""``starft demo``: the whole job on the embedded ``spurious-digits`` benchmark, on a laptop CPU, in minutes.

Stages, each cached so that an interrupted demo picks up where it stopped:

1. the benchmark (:mod:`starft_cli.data.digits`), generated on first use;
2. the zero-shot model: the ``starft-demo`` architecture (a small ResNet image tower from timm and a two-layer
   text transformer) pre-trained from random initialisation with starft's own engine on the balanced
   ``pretrain`` split (the contrastive loss alone, i.e. CLIP pre-training), built once per machine into the
   cache and verified by its sha256 on every use (the zoo lists it as ``starft-demo``);
3. one fine-tuning run per method on the biased ``train`` split, all with the same budget (steps, batch, learning
   rate schedule, seed, data order); the final checkpoint is evaluated; a finished run is reused, an interrupted
   one resumed;
4. evaluation of the zero-shot model and every run on ``val`` (in-distribution accuracy) and on the balanced
   ``test`` split (average, mean-group and worst-group accuracy, ECE), through the evaluation feature cache;
5. each model's spurious drift from the zero-shot model on ``test`` (:mod:`starft_cli.probe`, digits pool);
6. the leaderboard (deltas against the zero-shot model), ``results.json``, ``leaderboard.md``/``.csv`` and
   ``demo.png``.

The core never prints: progress goes to the ``progress`` callback, as events (dicts with a ``kind``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starft_cli.errors import ConfigError, UsageError
from starft_cli.locks import build_lock
from starft_cli.paths import atomic_dir, sha256_file
from starft_cli.runs import LAST, RunLayout

logger = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
DATASET = "spurious-digits"
ARCH = "starft-demo"
ZERO_SHOT = "zero-shot"
MODEL_FOLDER = "starft-demo-zero-shot"
BUILD_NAME = "build.json"
RECIPE_VERSION = 1

# The zero-shot model's recipe: CLIP pre-training (contrastive loss, no regulariser) from random weights.
PRETRAIN: dict[str, Any] = {
    "backbone": f"{ARCH}:none",
    "data": DATASET,
    "split": "pretrain",
    "method": "flyp",
    "epochs": 12,
    "lr": 1e-3,
    "wd": 0.1,
    "batch_size": 128,
    "warmup": 50,
    "seed": 0,
}


DISCOVERED_POOL = "<discovered>"  # a method's pool marker: the pool `starft pool discover` finds in `train`


@dataclass(frozen=True)
class DemoMethod:
    """A fine-tuning method as the demo runs it: a title and the training settings it changes."""

    name: str
    title: str
    settings: dict[str, Any]
    doc: str


METHODS: dict[str, DemoMethod] = {
    m.name: m
    for m in (
        DemoMethod("ft", "FT (cross-entropy)", {"method": "ft"}, "cross-entropy, zero-shot head init"),
        DemoMethod("flyp", "FLYP", {"method": "flyp"}, "contrastive fine-tuning with class captions"),
        DemoMethod(
            "flyp-lowlr",
            "FLYP (lr 3e-5)",
            {"method": "flyp", "lr": 3e-5},
            "FLYP at lr 3e-5, the rate at which its ID accuracy matches StarFT's (does StarFT only fine-tune less?)",
        ),
        DemoMethod(
            "starft",
            "StarFT",
            {"method": "starft", "pool": "digits", "reg_lambda": 1.0, "lambda_schedule": "constant"},
            "FLYP + StarReg, digits pool, lambda 1.0 constant (recommended for this benchmark)",
        ),
        DemoMethod(
            "starft-paper",
            "StarFT (paper schedule)",
            {"method": "starft", "pool": "digits", "reg_lambda": 0.5, "lambda_schedule": "linear"},
            "FLYP + StarReg, digits pool, lambda 0.5 decayed linearly per epoch (the paper's default)",
        ),
        DemoMethod(
            "kl",
            "KL ablation",
            {"method": "kl", "pool": "digits", "reg_lambda": 1.0, "lambda_schedule": "constant"},
            "FLYP + the unmasked KL ablation, lambda 1.0 constant",
        ),
        DemoMethod(
            "starft-discovered",
            "StarFT (discovered pool)",
            {"method": "starft", "pool": DISCOVERED_POOL, "reg_lambda": 1.0, "lambda_schedule": "constant"},
            "as starft, with the pool `starft pool discover` finds in the train split (zero-shot model, shipped "
            "vocabulary) instead of the hand-written digits pool",
        ),
        DemoMethod(
            "lp",
            "LP",
            {"method": "lp", "lr": 1e-2},
            "linear probe: the zero-shot head trained on frozen features, at lr 1e-2 (at the shared 1e-4 the head, "
            "exp(logit_scale) x unit text features, barely moves)",
        ),
        DemoMethod(
            "lp-ft",
            "LP-FT",
            {"method": "lp-ft", "hparams": {"lp_lr": 1e-2}},
            "linear probe (lr 1e-2) for half the steps, then cross-entropy FT from the probed head",
        ),
        DemoMethod("l2-sp", "L2-SP", {"method": "l2-sp"}, "cross-entropy + L2 pull towards the zero-shot weights"),
        DemoMethod(
            "lipsum-ft", "Lipsum-FT", {"method": "lipsum-ft"}, "cross-entropy + zero-shot energies on random texts"
        ),
        DemoMethod(
            "car-ft",
            "CAR-FT",
            {"method": "car-ft", "hparams": {"contexts": "imagenet80"}},
            "cross-entropy + the zero-shot distribution over the 80 ImageNet context prompts (the digits set has 2)",
        ),
        DemoMethod(
            "carot",
            "CaRot",
            {"method": "carot", "hparams": {"ema_every": 2}},
            "FLYP + orthogonal image projection + EMA self-distillation (teacher updated every 2 of the 120 steps, "
            "the authors' ~50 updates per run)",
        ),
    )
}
DEFAULT_METHODS = ("ft", "flyp", "starft")
# One budget for every method: same steps, batch, schedule and seed (fair comparison by construction).
BUDGET: dict[str, Any] = {"epochs": 10, "batch_size": 64, "lr": 1e-4, "wd": 0.1, "warmup": 10}
QUICK_BUDGET: dict[str, Any] = {"epochs": 2, "batch_size": 64, "lr": 1e-4, "wd": 0.1, "warmup": 2, "max_steps": 4}
QUICK_PRETRAIN: dict[str, Any] = {"epochs": 1, "max_steps": 6, "warmup": 2}
TEST_METRICS = ("top1", "mean_group_acc", "worst_group_acc", "ece")
FIGURE_NAME = "demo.png"
DRIFT_POOL = "digits"  # the pool the demo's StarFT runs use: `starft probe` reports each model's drift over it


def plot_available() -> bool:
    """Whether matplotlib (the ``plot`` extra) can be imported."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"ft,flyp,starft"`` (or ``all``) -> the method names, validated (unknown names list the known ones)."""
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
    parts = [p for p in parts if p]
    if parts == ["all"]:
        return tuple(METHODS)
    if not parts:
        raise UsageError("no method given", f"Known methods: {', '.join(METHODS)} (or all)")
    unknown = [p for p in parts if p not in METHODS]
    if unknown:
        raise UsageError(f"unknown demo method '{unknown[0]}'", f"Known methods: {', '.join(METHODS)} (or all)")
    if len(set(parts)) != len(parts):
        raise UsageError("a method is listed twice", "List each method once")
    return tuple(parts)


@dataclass(frozen=True)
class DemoConfig:
    """What ``starft demo`` runs. ``quick`` shortens every stage (a few steps) for tests and smoke checks; its
    zero-shot model is cached apart from the real one."""

    out: Path = Path("starft-demo")
    seed: int = 0
    methods: tuple[str, ...] = DEFAULT_METHODS
    rebuild: bool = False
    device: str = "auto"
    quick: bool = False
    plot: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # budget settings changed for every method

    def __post_init__(self) -> None:
        parse_methods(self.methods)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be a whole number >= 0 (got {self.seed!r})")


@dataclass
class DemoResult:
    """What the demo produced: the merged records, the files written and the runs used."""

    frame: Any  # pandas DataFrame of result records (model = "zero-shot" or a method name)
    paths: list[Path]
    runs: dict[str, Path]
    zero_shot: Path
    notes: list[str] = field(default_factory=list)  # one line per row: the method and its hyper-parameters


def run_description(name: str, run_dir: Path) -> str:
    """One leaderboard note for the demo row ``name``: the method with its hyper-parameters and the shared budget,
    read from the run's ``config.json``, e.g. ``starft: starft (lambda=1, schedule=constant, pool=digits); lr 1e-4,
    10 epochs, batch 64, seed 0``."""
    from starft_cli.train.config import config_from_json
    from starft_cli.train.methods import make_method

    path = RunLayout(run_dir).config
    cfg = config_from_json(path.read_text(encoding="utf-8"), str(path))
    method = make_method(cfg.method, cfg.hparams, cfg).describe()
    budget = f"lr {cfg.lr:g}, {cfg.epochs} epochs" + (f" (at most {cfg.max_steps} steps)" if cfg.max_steps else "")
    return f"{name}: {method}; {budget}, batch {cfg.batch_size}, seed {cfg.seed}"


# ---------------------------------------------------------------------------------------------------------
# the zero-shot model


def zero_shot_dir(quick: bool = False) -> Path:
    """Where the demo's zero-shot model folder lives (in the cache)."""
    from starft_cli.paths import cache_dir

    return cache_dir("models") / (MODEL_FOLDER + ("-quick" if quick else ""))


def zero_shot_recipe() -> Any:
    """The zoo recipe ``recipe:starft-demo``: the demo's zero-shot model, pre-trained by ``starft demo`` (a
    :class:`~starft_cli.zoo.recipes.Recipe`)."""
    from starft_cli.zoo.recipes import Recipe

    return Recipe(folder=zero_shot_dir, build=ensure_zero_shot, verify=verify_zero_shot)


def recipe(quick: bool = False) -> dict[str, Any]:
    """The zero-shot model's pre-training settings (a :class:`~starft_cli.train.config.TrainConfig` dict)."""
    return {**PRETRAIN, **(QUICK_PRETRAIN if quick else {})}


def verify_zero_shot(folder: Path) -> str | None:
    """The problem with a built zero-shot model folder, or None when its weights match their recorded sha256
    and recipe."""
    from starft_cli.runs import CONFIG_NAME, WEIGHTS_NAME

    build = folder / BUILD_NAME
    if not build.is_file():
        return f"{folder} has no {BUILD_NAME}"
    try:
        info = json.loads(build.read_text(encoding="utf-8"))
        expected = info["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{build} is damaged ({exc})"
    if info.get("recipe_version") != RECIPE_VERSION:
        return f"{folder} was built by another recipe version"
    weights = folder / WEIGHTS_NAME
    if not weights.is_file() or not (folder / CONFIG_NAME).is_file():
        return f"{folder} lacks {WEIGHTS_NAME} or {CONFIG_NAME}"
    if sha256_file(weights) != expected:
        return f"{weights} does not match its recorded sha256 (damaged)"
    return None


def ensure_zero_shot(
    *, rebuild: bool = False, quick: bool = False, device: str = "auto", progress: ProgressFn | None = None
) -> Path:
    """The demo's zero-shot model folder: built on first use (and when damaged, or with ``rebuild``).

    The build is a starft fine-tuning run from random weights (see :data:`PRETRAIN`) in a run folder beside the
    model; an interrupted build resumes. The finished model is copied into place atomically with a
    ``build.json`` recording the recipe and the weights' sha256.
    """
    emit = progress or (lambda event: None)
    folder = zero_shot_dir(quick)
    problem = "rebuild asked for" if rebuild else (verify_zero_shot(folder) if folder.exists() else "absent")
    if problem is None:
        emit({"kind": "stage", "stage": "zero-shot model", "status": "cached", "path": str(folder)})
        return folder

    def waiting(target: Path) -> None:
        emit({"kind": "stage", "stage": "zero-shot model", "status": "waiting", "path": str(target)})
        logger.info("another starft process is building %s: waiting for it", target)

    with build_lock(folder, on_wait=waiting):  # two demos on a cold cache: the second waits and uses the build
        built_meanwhile = not rebuild and folder.exists() and verify_zero_shot(folder) is None
        if built_meanwhile:
            emit({"kind": "stage", "stage": "zero-shot model", "status": "cached", "path": str(folder)})
            return folder
        return _build_zero_shot(folder, problem, rebuild, quick, device, progress, emit)


def _build_zero_shot(
    folder: Path, problem: str, rebuild: bool, quick: bool, device: str, progress: ProgressFn | None, emit: Any
) -> Path:
    from starft_cli.runs import CONFIG_NAME, WEIGHTS_NAME
    from starft_cli.train import build_config, finetune

    if folder.exists() and not rebuild:
        logger.warning("demo zero-shot model: %s; building it again", problem)
    run_dir = folder.parent / f".{folder.name}.build"
    settings = {**recipe(quick), "out": str(run_dir), "workers": 0, "device": device, "checkpoint_every": 20}
    if rebuild and run_dir.exists():
        shutil.rmtree(run_dir)
    resume = RunLayout(run_dir).is_run()
    emit({"kind": "stage", "stage": "zero-shot model", "status": "resuming" if resume else "building"})
    finetune(build_config({**settings, "resume": resume}), progress=progress)
    last = RunLayout(run_dir).checkpoint(LAST)
    with atomic_dir(folder) as tmp:
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            shutil.copyfile(last / name, tmp / name)
        info = {
            "model": ARCH,
            "recipe_version": RECIPE_VERSION,
            "recipe": recipe(quick),
            "sha256": sha256_file(tmp / WEIGHTS_NAME),
            "how": "CLIP pre-training with `starft finetune` (contrastive loss, no regulariser) from random "
            f"weights on the balanced '{DATASET}' pretrain split",
        }
        (tmp / BUILD_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    shutil.rmtree(run_dir, ignore_errors=True)
    emit({"kind": "stage", "stage": "zero-shot model", "status": "built", "path": str(folder)})
    return folder


# ---------------------------------------------------------------------------------------------------------
# fine-tuning runs


def run_settings(
    method: str,
    zero_shot: Path,
    out: Path,
    seed: int,
    quick: bool,
    overrides: dict[str, Any],
    discovered: Path | None = None,
) -> dict:
    """The training settings of one method's demo run (the shared budget + the method's own settings);
    ``discovered`` is the pool file that replaces the :data:`DISCOVERED_POOL` marker."""
    budget = {**(QUICK_BUDGET if quick else BUDGET), **overrides}
    own = dict(METHODS[method].settings)
    if own.get("pool") == DISCOVERED_POOL:
        if discovered is None:
            raise ConfigError(f"demo method {method} needs the discovered pool file")
        own["pool"] = str(discovered)
    return {
        "backbone": str(zero_shot),
        "data": DATASET,
        "split": "train",
        "seed": seed,
        "workers": 0,
        "out": str(out),
        "checkpoint_every": 2 if quick else 20,  # an interrupted run loses at most this many steps
        **budget,
        **own,
    }


def discovered_pool(zero_shot: Path, folder: Path, device: str) -> Path:
    """The pool `starft pool discover` finds in the ``train`` split with the zero-shot model and the shipped
    vocabulary (its top :data:`~starft_cli.discover.DEFAULT_TOP`), written into ``folder`` as
    ``discovered-pool-<sha256 prefix>.txt`` (a changed pool gets another name, so runs trained on the old one are not
    reused)."""
    import hashlib

    from starft_cli.discover import DEFAULT_TOP, discover, pool_text
    from starft_cli.paths import atomic_write_text

    text = pool_text(discover(str(zero_shot), DATASET, split="train", device=device), DEFAULT_TOP)
    path = folder / f"discovered-pool-{hashlib.sha256(text.encode()).hexdigest()[:12]}.txt"
    if not path.is_file():
        atomic_write_text(path, text)
    return path


def _run(settings: dict[str, Any], device: str, progress: ProgressFn | None) -> Path:
    """Train, resume or reuse one run: a finished run returns at once, an interrupted one continues."""
    from starft_cli.train import build_config, finetune
    from starft_cli.train.config import config_from_json

    out = Path(settings["out"])
    cfg = build_config({**settings, "device": device})
    stored = RunLayout(out).config
    if stored.is_file():
        old = config_from_json(stored.read_text(encoding="utf-8"), str(stored))
        if old.replace(device=cfg.device, workers=cfg.workers, resume=False) != cfg.replace(resume=False):
            logger.warning("%s was trained with other settings; training it again", out)
            shutil.rmtree(out)
        else:
            cfg = cfg.replace(resume=True)
    return finetune(cfg, progress=progress)


def model_checkpoint(run_dir: Path) -> Path:
    """The checkpoint the demo evaluates: the final one (every method trains the same number of steps; no
    checkpoint selection, whose ties on the small, saturated ID split would add noise to the comparison)."""
    return RunLayout(run_dir).checkpoint(LAST)


# ---------------------------------------------------------------------------------------------------------
# the whole demo


def suite() -> Any:
    """The demo's evaluation: ID accuracy on the biased ``val`` split, group metrics on the balanced ``test``."""
    from starft_cli.eval.suites import Suite, SuiteEntry

    return Suite(
        "demo",
        (
            SuiteEntry(DATASET, ("top1",), split="val", role="id"),
            SuiteEntry(DATASET, TEST_METRICS, split="test", role="ood"),
        ),
        f"{DATASET}: val = in-distribution (95% of each digit on its own background), test = balanced (every "
        "digit on every background; groups = digit x background).",
    )


def run_demo(config: DemoConfig, progress: ProgressFn | None = None) -> DemoResult:
    """Run every stage of the demo (see the module docstring) and write the report into ``config.out``.

    Raises :class:`~starft_cli.errors.UsageError` when ``config.out`` cannot be written (before any work).
    """
    from starft_cli.data.registry import load_dataset
    from starft_cli.device import resolve_device
    from starft_cli.eval.runner import evaluate
    from starft_cli.locks import folder_lock
    from starft_cli.reports import write_report

    emit = progress or (lambda event: None)
    out = Path(config.out).expanduser()
    check_writable(out)
    if config.plot and not plot_available():
        logger.warning("matplotlib is not installed: no %s (pip install 'starft[plot]')", FIGURE_NAME)
    device = str(resolve_device(config.device))
    if config.rebuild:
        from starft_cli.data import digits

        emit({"kind": "stage", "stage": "data", "status": "building"})
        digits.write(digits.default_root())
    load_dataset(DATASET, split="test")  # generated on first use, verified otherwise
    emit({"kind": "stage", "stage": "data", "status": "ready"})
    zero_shot = ensure_zero_shot(rebuild=config.rebuild, quick=config.quick, device=device, progress=progress)
    runs_root = out / "runs"
    _forget_stale_runs(runs_root, zero_shot)
    runs: dict[str, Path] = {}
    discovered = None
    if any(METHODS[m].settings.get("pool") == DISCOVERED_POOL for m in config.methods):
        emit({"kind": "stage", "stage": "discovering the pool", "status": "running"})
        discovered = discovered_pool(zero_shot, runs_root, device)
    for method in config.methods:
        emit({"kind": "stage", "stage": f"fine-tuning {method}", "status": "running"})
        out_dir = runs_root / f"{method}-seed{config.seed}"
        settings = run_settings(method, zero_shot, out_dir, config.seed, config.quick, config.overrides, discovered)
        runs[method] = _run(settings, device, progress)
    emit({"kind": "stage", "stage": "evaluation", "status": "running"})
    names = {str(zero_shot): ZERO_SHOT, **{str(model_checkpoint(r)): m for m, r in runs.items()}}
    frame = evaluate(
        list(names),
        suite(),
        None,
        device=device,
        seed=config.seed,
        progress=lambda name, done, total: emit({"kind": "eval", "name": name, "done": done, "total": total}),
    ).frame
    frame = _with_drift(frame, names, zero_shot, device, config)
    frame["model"] = frame["model"].map(lambda raw: names.get(raw, raw))
    notes = [run_description(m, r) for m, r in runs.items()]
    with folder_lock(out):  # the figure shows the merged records: another demo's write waits for both
        report = write_report(out, frame, baseline=ZERO_SHOT, description=suite().description, notes=notes)
        paths = list(report.paths)
        if config.plot and plot_available():
            from starft_cli.data.digits import BACKGROUNDS, CLASSNAMES
            from starft_cli.reports.plots import demo_figure

            majority = [f"{c} on {b}" for c, b in zip(CLASSNAMES, BACKGROUNDS, strict=True)]
            paths.append(demo_figure(report.frame, out / FIGURE_NAME, [ZERO_SHOT, *config.methods], majority))
    emit({"kind": "stage", "stage": "report", "status": "written", "path": str(out)})
    return DemoResult(frame=report.frame, paths=paths, runs=runs, zero_shot=zero_shot, notes=notes)


def _with_drift(frame: Any, names: dict[str, str], zero_shot: Path, device: str, config: DemoConfig) -> Any:
    """``frame`` plus every model's spurious drift from the zero-shot model on the ``test`` split (``starft probe``
    with the demo's pool and training batch size; the zero-shot model's own drift is 0 by definition)."""
    import pandas as pd

    from starft_cli.probe import probe

    batch = {**(QUICK_BUDGET if config.quick else BUDGET), **config.overrides}["batch_size"]
    drift = probe(
        list(names),
        str(zero_shot),
        DATASET,
        None,
        "test",
        [DRIFT_POOL],
        device=device,
        seed=config.seed,
        reg_batch_size=int(batch),
    )
    drift["reference"] = ZERO_SHOT
    return pd.concat([frame, drift], ignore_index=True)


def _forget_stale_runs(runs_root: Path, zero_shot: Path) -> None:
    """Runs fine-tuned from another zero-shot model (rebuilt or damaged since) are trained again."""
    stamp = runs_root / "zero_shot.json"
    current = json.loads((zero_shot / BUILD_NAME).read_text(encoding="utf-8"))["sha256"]
    if runs_root.exists() and stamp.is_file():
        try:
            previous = json.loads(stamp.read_text(encoding="utf-8")).get("sha256")
        except (OSError, ValueError):
            previous = None
        if previous != current:
            logger.warning("the zero-shot model changed since %s was trained; fine-tuning again", runs_root)
            shutil.rmtree(runs_root)
    from starft_cli.paths import atomic_write_text

    atomic_write_text(stamp, json.dumps({"sha256": current}) + "\n")


def check_writable(out: Path) -> None:
    """Fail early, in one line, when ``out`` cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".starft-write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"cannot write to `out` {out} ({exc.strerror or exc})", "Choose a folder you can write to", param="out"
        ) from None
