"""Prompt templates and spurious-description pools, kept as data files.

A template has exactly one slot, written ``{}`` or ``{c}`` (the class name as it is), or ``{a/an c}`` (the class name
with ``_`` read as spaces, after "a", or "an" before a vowel: the article form of WiSE-FT's, FLYP's and the StarFT
code's FMoW templates, their ``append_proper_article``). Template sets live in ``templates/``, spurious pools in
``pools/`` (one template per line, ``#`` starts a comment line), the attribute vocabulary of ``starft pool discover``
in ``vocab/``. Pools a user imports (``starft pool import``) live in the user pool folder, ``<config>/pools``
(:func:`user_pool_dir`); a pool name resolves to a shipped pool first, then an imported one, then a file.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from pathlib import Path

from starft_cli.errors import TemplateError, UsageError

logger = logging.getLogger(__name__)

_SLOT = re.compile(r"\{c?\}|\{a/an c\}")
ARTICLE_SLOT = "{a/an c}"
_ANY_BRACE = re.compile(r"[{}]")


def _names(kind: str) -> list[str]:
    folder = resources.files("starft_cli.prompts").joinpath(kind)
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


def template_set_names() -> list[str]:
    """Names of the shipped template sets (``imagenet80``, ``ensemble``, ``single``, ...)."""
    return _names("templates")


def pool_names() -> list[str]:
    """Names of the shipped spurious pools (``background``, ``texture``, ``resolution``)."""
    return _names("pools")


def parse_templates(lines: list[str], source: str, unit: str = "line") -> list[str]:
    """Validate template lines: strip, skip blanks and comments, require exactly one slot, drop duplicates.
    ``unit`` names what a line is in error messages (``line``, or ``item`` for a list read from JSON or torch)."""
    out: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        slots = _SLOT.findall(line)
        if len(slots) != 1 or len(_ANY_BRACE.findall(_SLOT.sub("", line))) != 0:
            found = "no slot" if not slots else f"{len(slots)} slots" if len(slots) > 1 else "a stray brace"
            raise TemplateError(
                f"{source}, {unit} {number}: '{line}' must have exactly one slot (it has {found})",
                "Write the class name's place as {} (or {c}, or {a/an c} for 'a'/'an' and the name), once per template",
            )
        normalised = line if ARTICLE_SLOT in line else _SLOT.sub("{}", line)
        if normalised in seen:
            logger.warning("%s, line %d: duplicate template '%s' removed", source, number, line)
            continue
        seen.add(normalised)
        out.append(normalised)
    if not out:
        raise TemplateError(f"{source} holds no templates", "Put one template per line, each with one {} slot")
    return out


# ---------------------------------------------------------------------------------------------------------
# imported pools

_POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def user_pool_dir() -> Path:
    """Where imported pools live: ``<config>/pools`` (platformdirs' user config folder; ``$STARFT_HOME/config``
    when set), one ``NAME.txt`` per pool. Not created."""
    from starft_cli.paths import config_dir

    return config_dir() / "pools"


def imported_pool_names() -> list[str]:
    """Names of the pools imported with ``starft pool import`` (sorted)."""
    folder = user_pool_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.txt") if _POOL_NAME.match(p.stem))


def check_pool_name(name: str) -> str:
    """``name`` when it can name an imported pool: letters, digits, ``_ . -`` (starting with a letter or digit, at
    most 64), and not a shipped pool's name. Raises :class:`~starft_cli.errors.UsageError` otherwise."""
    if not _POOL_NAME.match(name) or name.endswith(".txt"):
        raise UsageError(
            f"'{name}' cannot name a pool",
            "Use letters, digits, '_', '.' and '-' (e.g. authors-background), without a .txt suffix",
            param="name",
        )
    if name in pool_names():
        raise UsageError(f"'{name}' is a shipped pool", "Choose another `name` for the imported pool", param="name")
    return name


def normalise_template(text: str) -> str:
    """One pool entry in the text format: surrounding and repeated white space (new lines included) collapsed to
    one space, a ``{c}`` slot written ``{}`` (an ``{a/an c}`` slot kept). The slot count is checked by
    :func:`parse_templates`."""
    text = " ".join(text.split())
    return text if ARTICLE_SLOT in text else _SLOT.sub("{}", text)


def read_pool_source(path: str | Path) -> tuple[list[str], str]:
    """The templates of a pool file in any of the accepted forms, normalised and checked, and the form's name:

    * ``torch``: a file written by ``torch.save`` of a list of strings (the StarFT authors' ``spurious_bg.pt``),
      read with ``torch.load(weights_only=True)`` only, so nothing but plain containers, strings and numbers is
      ever unpickled; anything else in it, or anything but a list of strings, is refused;
    * ``json``: a JSON list of strings;
    * ``text``: one template per line (``#`` comments and blank lines skipped).

    The form is told by the content (a zip or pickle header: torch; a ``.json`` suffix or a leading ``[``: JSON). Raises
    :class:`~starft_cli.errors.TemplateError` for an unreadable file, another content, or a template without
    exactly one slot (naming its line or item).
    """
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TemplateError(f"cannot read {path} ({exc.strerror or exc})", "Check the path") from None
    if data.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        items = _read_torch_list(path)
        return parse_templates([normalise_template(t) for t in items], str(path), unit="item"), "torch"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TemplateError(
            f"{path} is neither a torch file, JSON nor UTF-8 text", "Give a list of strings in one of these forms"
        ) from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        import json

        try:
            items = json.loads(text)
        except ValueError as exc:
            raise TemplateError(f"{path} is not valid JSON ({exc})", "Give a JSON list of strings") from None
        _check_strings(items, path, "a JSON")
        return parse_templates([normalise_template(t) for t in items], str(path), unit="item"), "json"
    lines = [normalise_template(line) if not line.lstrip().startswith("#") else line for line in text.splitlines()]
    return parse_templates(lines, str(path)), "text"


def _check_strings(items: object, path: Path, form: str) -> None:
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        what = type(items).__name__ if not isinstance(items, list) else "a list with non-string items"
        raise TemplateError(
            f"{path} holds {what}, not a list of strings", f"Give {form} list of templates, each with one {{}} slot"
        )


def _read_torch_list(path: Path) -> list[str]:
    """A list of strings from a torch file, read with ``weights_only=True`` (no arbitrary object is unpickled)."""
    import pickle

    import torch

    try:
        items = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TemplateError(
            f"{path} holds objects other than plain lists, strings and numbers; refused without unpickling them",
            "Save the pool as torch.save(list_of_strings, path), or give a JSON list or a text file",
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise TemplateError(f"cannot read {path} as a torch file ({exc})", "Check the file") from None
    _check_strings(items, path, "a torch file holding a")
    return items


def import_pool(path: str | Path, name: str | None = None, force: bool = False) -> tuple[Path, list[str], str]:
    """Store the pool in ``path`` (any form :func:`read_pool_source` reads) as the imported pool ``name`` (default:
    the file name without its suffix): ``<user pool dir>/NAME.txt``, written atomically, a header comment naming
    the source and its sha256. Returns the stored file, the templates and the source's form.

    Raises :class:`~starft_cli.errors.UsageError` for a bad name or one already imported (without ``force``), and
    what :func:`read_pool_source` raises.
    """
    from starft_cli.paths import atomic_write_text, sha256_file

    path = Path(path).expanduser()
    name = check_pool_name(name if name is not None else path.name.split(".")[0])
    templates, form = read_pool_source(path)
    target = user_pool_dir() / f"{name}.txt"
    if target.exists() and not force:
        raise UsageError(
            f"a pool named '{name}' is already imported ({target})",
            "Pass `force` to replace it, or choose another `name`",
            param=("force", "name"),
        )
    header = (
        f"# {name}: imported by `starft pool import` from {path.name} ({form}, sha256 {sha256_file(path)})\n"
        "# one template per line; {} is the caption without its final period\n"
    )
    atomic_write_text(target, header + "".join(f"{t}\n" for t in templates))
    return target, templates, form


def find_pool(name_or_file: str | Path) -> tuple[str, Path | None]:
    """Where a pool reference points: ``("shipped", None)``, ``("imported", file)`` or ``("file", file)``. Raises
    :class:`~starft_cli.errors.TemplateError` (naming the close matches) when it is none of them."""
    text = str(name_or_file)
    if text in pool_names():
        return "shipped", None
    if _POOL_NAME.match(text) and (user_pool_dir() / f"{text}.txt").is_file():
        return "imported", user_pool_dir() / f"{text}.txt"
    path = Path(text).expanduser()
    if path.is_file():
        return "file", path
    from starft_cli.suggest import did_you_mean

    known = pool_names() + imported_pool_names()
    raise TemplateError(
        f"unknown spurious pool '{text}' (not a shipped or imported name and no such file)",
        did_you_mean(
            text,
            known,
            then=f"Use one of {', '.join(known)}, a file with one template per line, or "
            "import one with `starft pool import FILE --name NAME`",
        ),
    )


def _load(kind: str, name_or_file: str | Path) -> list[str]:
    text = str(name_or_file)
    names = _names(kind)
    if text in names:
        resource = resources.files("starft_cli.prompts").joinpath(kind, f"{text}.txt")
        return parse_templates(resource.read_text(encoding="utf-8").splitlines(), f"{kind}/{text}")
    path = Path(text).expanduser()
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateError(f"cannot read {path} ({exc})") from exc
        return parse_templates(lines, str(path))
    what = "template set" if kind == "templates" else "spurious pool"
    raise TemplateError(
        f"unknown {what} '{text}' (not a shipped name and no such file)",
        f"Use one of {', '.join(names)} or a file with one template per line",
    )


def load_templates(name_or_file: str | Path) -> list[str]:
    """A shipped template set by name, or a user file."""
    return _load("templates", name_or_file)


def load_pool(name_or_file: str | Path) -> list[str]:
    """A spurious pool: a shipped one by name, an imported one by name (``starft pool import``), or a user file
    (one template per line). Raises :class:`~starft_cli.errors.TemplateError` for an unknown name or a bad file."""
    _, path = find_pool(name_or_file)
    return _load("pools", name_or_file if path is None else path)


def with_article(text: str) -> str:
    """``text`` with ``_`` read as spaces, after "an" when it starts with a vowel letter (a, e, i, o, u) and "a"
    otherwise: "an airport hangar", "a zoo" (the rule of ``append_proper_article`` in WiSE-FT's templates)."""
    text = text.replace("_", " ")
    return ("an " if text[:1] in ("a", "e", "i", "o", "u") else "a ") + text


def fill(template: str, text: str) -> str:
    """Put ``text`` into the template's slot (no ``str.format``: class names may hold braces); an ``{a/an c}``
    slot gets :func:`with_article` of it."""
    if ARTICLE_SLOT in template:
        return template.replace(ARTICLE_SLOT, with_article(text), 1)
    return template.replace("{}", text, 1)
