"""The pydantic base every study-file schema builds on: `Strict` and the shared field types.

Owns: `Strict` (frozen, no unknown keys, no coercion) and the constrained number types that the
run schema (`suite.spec`) and the report-figure schema (`suite.report.figure_spec`) both use.
Must not touch: anything else of the suite. It imports pydantic only, so both schemas can
import it without importing each other.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Frozen, no unknown keys, no coercion: "0.1" is not a number and 1.5 is not an int."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
PositiveInt = Annotated[int, Field(gt=0)]
