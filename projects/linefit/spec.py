"""The line fit's spec: the shared fields of ``mlrepro.BaseSpec`` and its own three."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mlrepro.capture.spec import BaseSpec, Count


class LineFitSpec(BaseSpec):
    """The seed's first job: one hidden layer of ReLUs fitting y = 10x with plain gradient steps."""

    job: Literal["linefit"] = "linefit"
    steps: Count = Field(1000, ge=1, le=10**9, description="gradient steps, one loss logged per step")
    lr: float = Field(1e-4, gt=0, allow_inf_nan=False, description="learning rate of the manual update")
    hidden: Count = Field(100, ge=1, le=1_000_000, description="units in the hidden layer")
