"""Base pydantic model for every config block: unknown keys are errors, not silently ignored."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config model that rejects unknown keys, so a misspelt option fails loudly."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
