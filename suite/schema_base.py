"""The pydantic base every study-file schema builds on: `Strict` and the shared field types.

Owns: `Strict` (frozen, no unknown keys, no coercion), the constrained number types that the
run schema (`suite.spec`, `suite.schema_cures`) and the report-figure schema
(`suite.report.figure_spec`) use, and the "did you mean" hint of their errors.
Must not touch: anything else of the suite. It imports pydantic only, so both schemas can
import it without importing each other.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Frozen, no unknown keys, no coercion: "0.1" is not a number and 1.5 is not an int."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
PositiveInt = Annotated[int, Field(gt=0)]


def did_you_mean(word: str, options: Any) -> str:
    """` (did you mean 'x'?)` for the option closest to `word`, or nothing."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def off_or_choice(value: Any, choices: tuple[str, ...]) -> Any:
    """An optional choice key's value: `off` (which YAML reads as false) and null are None;
    anything else must name one of `choices` (ValueError with the nearest one)."""
    if value is None or value is False or value == "off":
        return None
    if value not in choices:
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        raise ValueError(f"expected {', '.join(choices)} or off, got {value!r}{hint}")
    return value
