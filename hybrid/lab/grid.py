"""A prompt grid: variants x test cases x models x sampling settings x repeats -> queries.

Each query's ``metadata`` keeps every coordinate (``variant``, ``case``, ``model``, ``temperature``,
``repeat``), so results pivot by any of them, and its name spells them out.  A variant is a
template whose ``{{name}}`` placeholders are filled from the test case's variables; a repeat is a
distinct sample (``Query.sample``), so the cache keeps repeated samples apart.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from hybrid.errors import ConfigError, check_int
from hybrid.query import Query
from hybrid.templating import placeholders, render


def grid(
    variants: Mapping[str, str],
    cases: Mapping[str, Mapping[str, Any]],
    *,
    models: Sequence[str | None] = (None,),
    temperatures: Sequence[float | None] = (None,),
    repeats: int = 1,
    system: str | None = None,
    max_tokens: int | None = None,
) -> list[Query]:
    """Every combination as a :class:`Query` (see the module docstring).  Placeholders a case does
    not fill are a :class:`ConfigError` here, before anything is sent."""
    check_int("grid(repeats=...)", repeats, minimum=1)
    if not variants or not cases:
        raise ConfigError("grid() needs at least one variant and one test case.")
    queries = []
    for (variant, template), (case, values), model, temperature, repeat in itertools.product(
        variants.items(), cases.items(), models, temperatures, range(repeats)
    ):
        missing = sorted(set(placeholders(template)) - set(values))
        if missing:
            raise ConfigError(f"Variant {variant!r} uses {missing}, which test case {case!r} does not define.")
        filled = {key: str(value) for key, value in values.items()}
        coordinates = {"variant": variant, "case": case, "model": model, "temperature": temperature, "repeat": repeat}
        sampling = () if temperature is None else (f"t{temperature}",)  # the server's default: not named
        name = "|".join(str(part) for part in (variant, case, model or "default", *sampling, f"r{repeat}"))
        queries.append(
            Query(
                name,
                render(template, filled),
                system=system,
                model=model,
                temperature=temperature,
                max_tokens=max_tokens,
                sample=repeat,
                metadata={**coordinates, "vars": dict(values)},
            )
        )
    return queries
