"""Safe prompt templating for pipelines: ``{{name}}`` is replaced by the answer of query ``name``.

Placeholders are plain names and nothing else.  Unlike ``str.format`` there is no attribute or
index access (``{{a.__class__}}``, ``{{a[0]}}`` are rejected), no format spec, and single braces are
left alone, so JSON in a prompt needs no escaping.  Every placeholder is checked against the names
of earlier stages before the pipeline sends anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from hybrid.errors import TemplateError

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def placeholders(prompt: str) -> list[str]:
    """The names a prompt refers to; raises :class:`TemplateError` for anything that is not a plain name."""
    names = []
    for match in PLACEHOLDER.finditer(prompt):
        name = match.group(1).strip()
        if not NAME.fullmatch(name):
            raise TemplateError(
                f"Placeholder {{{{{match.group(1)}}}}} is not a plain query name. Only {{{{name}}}} is allowed: "
                "no attributes, indexes or expressions."
            )
        names.append(name)
    return names


def check_references(prompt: str, query_name: str, available: Iterable[str]) -> None:
    """Raise :class:`TemplateError` if ``prompt`` names a query that is not in ``available``."""
    known = set(available)
    for name in placeholders(prompt):
        if name not in known:
            hint = f" Earlier queries: {sorted(known)}." if known else " It is in the first stage, which has none."
            raise TemplateError(
                f"Query {query_name!r} refers to {{{{{name}}}}}, which is not a query of an earlier stage.{hint}"
            )


def render(prompt: str, answers: Mapping[str, str]) -> str:
    """Fill each ``{{name}}`` with ``answers[name]`` (already checked by :func:`check_references`)."""
    return PLACEHOLDER.sub(lambda m: answers[m.group(1).strip()], prompt)
