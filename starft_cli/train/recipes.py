"""The paper recipes: TOML files that reproduce the StarFT authors' runs, named ``paper:NAME``.

They live in ``configs/paper/`` of a source checkout and ship inside the wheel as ``starft_cli/_configs/``.
A training recipe is a ``starft finetune --config`` file; an evaluation recipe is a ``starft eval --suite`` file.
Both commands accept ``paper:NAME`` wherever they take such a file. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from starft_cli.errors import ConfigError

PREFIX = "paper:"


def recipe_folder() -> Path:
    """The folder of the shipped paper recipes: inside the installed package, or ``configs/paper`` of a checkout.

    Raises:
        ConfigError: neither exists (a broken installation).
    """
    here = Path(__file__).resolve().parents[1]  # starft_cli/
    for candidate in (here / "_configs", here.parent / "configs" / "paper"):
        if any(candidate.glob("*.toml")):
            return candidate
    raise ConfigError(
        "the paper recipes are missing from this installation",
        "Reinstall starft (the wheel ships starft_cli/_configs/*.toml)",
    )


KINDS = ("finetune", "eval")


def recipe_names(kind: str = "finetune") -> list[str]:
    """The names of the shipped recipes of ``kind``, sorted: training recipes (``starft-imagenet-vit-b16``, ...)
    or evaluation recipes (suite files, named ``eval-...``)."""
    names = sorted(p.stem for p in recipe_folder().glob("*.toml"))
    return [n for n in names if n.startswith("eval-") == (kind == "eval")]


def resolve_config_path(path: str | Path, kind: str = "finetune") -> Path:
    """``paper:NAME`` as the shipped recipe's file (a training recipe for ``kind="finetune"``, an evaluation
    suite for ``kind="eval"``); any other path as given (``~`` expanded).

    Raises:
        ConfigError: ``paper:NAME`` names no shipped recipe of that kind (the closest name and the list are given;
            an evaluation recipe given to finetune, or the reverse, says which command takes it).
    """
    text = str(path)
    if not text.startswith(PREFIX):
        return Path(text).expanduser()
    name = text[len(PREFIX) :].removesuffix(".toml")
    names = recipe_names(kind)
    other = "eval" if kind == "finetune" else "finetune"
    if name in recipe_names(other):
        use = "starft eval --suite" if other == "eval" else "starft finetune --config"
        raise ConfigError(f"paper:{name} is an {other} recipe", f"Use it as `{use} paper:{name}`")
    if name not in names:
        from starft_cli.suggest import did_you_mean

        raise ConfigError(
            f"no paper recipe named '{name}'",
            did_you_mean(name, names, n=1, quote=True, then=f"The recipes: {', '.join(names)}"),
        )
    return recipe_folder() / f"{name}.toml"
