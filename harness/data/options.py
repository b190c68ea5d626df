"""``DataConfig``: how examples become token rows (template, length, multi-turn, packing, cache).

The train engineer embeds it in the run configuration; every key is documented in
docs/data-templates.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.data.templates import TEMPLATE_NAMES, Identity


class DataConfig(BaseModel):
    """Formatting, tokenization and batching options of a run's training data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str = Field("survey", description="chat template name: " + ", ".join(TEMPLATE_NAMES))
    max_length: int = Field(2048, ge=2, description="tokens per example and per packed row")
    multiturn: Literal["whole", "split"] = Field(
        "whole", description="whole: loss on every assistant turn; split: one example per assistant turn"
    )
    too_long: Literal["truncate", "drop", "split"] = Field(
        "truncate", description="policy for examples over max_length (split = at turn boundaries)"
    )
    system_prompt: str | None = Field(None, description="system text for examples that have none")
    identity_name: str | None = Field(None, description="self-identification: the assistant's name")
    identity_org: str | None = Field(None, description="self-identification: its developer")
    num_demonstrations: int = Field(0, ge=0, description="k in-context examples from the same task")
    demonstration_key: str = Field("task", description="Example.meta key that names an example's task")
    packing: bool = Field(True, description="pack several examples into one row (else one per row)")
    pack_window: int = Field(
        2048, ge=1, description="examples per first-fit-decreasing packing window (bigger = denser)"
    )
    cache_dir: str | None = Field(None, description="tokenization cache (default $HARNESS_CACHE or ~/.cache/harness)")

    @model_validator(mode="after")
    def _identity_pair(self) -> "DataConfig":
        if (self.identity_name is None) != (self.identity_org is None):
            raise ValueError("identity_name and identity_org must be given together")
        if self.template not in TEMPLATE_NAMES:
            raise ValueError(f"unknown template {self.template!r}; expected one of {', '.join(TEMPLATE_NAMES)}")
        return self

    @property
    def identity(self) -> Identity | None:
        if self.identity_name is None:
            return None
        return Identity(self.identity_name, self.identity_org)
