"""Prompt templates and spurious-description pools, kept as data files.

A template has exactly one slot, written ``{}`` or ``{c}`` (the class name as it is), or ``{a/an c}`` (the class name
with ``_`` read as spaces, after "a", or "an" before a vowel: the article form of WiSE-FT's, FLYP's and the StarFT
code's FMoW templates, their ``append_proper_article``). Template sets live in ``templates/``, spurious pools in
``pools/`` (one template per line, ``#`` starts a comment line).
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from pathlib import Path

from starft_cli.errors import TemplateError

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


def parse_templates(lines: list[str], source: str) -> list[str]:
    """Validate template lines: strip, skip blanks and comments, require exactly one slot, drop duplicates."""
    out: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        slots = _SLOT.findall(line)
        if len(slots) != 1 or len(_ANY_BRACE.findall(_SLOT.sub("", line))) != 0:
            raise TemplateError(
                f"{source}, line {number}: '{line}' must have exactly one slot",
                "Write the class name's place as {} (or {c}, or {a/an c} for 'a'/'an' and the name), once per line",
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
    """A shipped spurious pool by name, or a user file."""
    return _load("pools", name_or_file)


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
