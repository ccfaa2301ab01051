"""Configuration of the scene model, the framing and the snapshots (kiosk.toml
``[presence]``, ``[crop]``, ``[snapshot]``), part of the one KioskConfig (config.py).

The defaults need no per-kiosk tuning: they were chosen by measurement on two
clips (bench/runtime.py on val-clip.mp4 and on bench/make_clip.py's clip).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_runtime.presence import PresenceParams

__all__ = ["PresenceConfig", "CropConfig", "SnapshotConfig"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PresenceConfig(_Section):
    """Is something on the counter: a model of the empty scene learnt on the device."""

    mode: Literal["scene", "off"] = Field(
        "scene", description="scene: the scene model decides presence (default); off: every "
        "frame is encoded whole and a reserved item such as _background means 'nothing'")
    work_width: int = Field(160, ge=32, le=1920, description="px the scene model works at")
    pixel_threshold: float = Field(20.0, gt=0, le=255, description="colour difference that counts")
    min_area: float = Field(0.01, gt=0, lt=1, description="fraction of the view that must differ")
    scene_change: float = Field(0.6, gt=0, le=1, description="more than this of a band around "
                                "the border differs: the scene changed (camera, counter), relearnt")
    enter_frames: int = Field(2, ge=1, le=100, description="frames that differ before 'present'")
    leave_frames: int = Field(4, ge=1, le=100, description="frames that match before 'empty'")
    learn_rate: float = Field(0.05, gt=0, le=1, description="background blend per frame")
    relearn_s: float = Field(10.0, gt=0, le=86400,
                             description="a change that stays this long becomes background")
    settle_frames: int = Field(3, ge=1, le=100, description="still frames before relearning a changed scene")
    shadows: bool = Field(True, description="darker by a similar ratio in every channel: a shadow")

    def params(self) -> PresenceParams:
        return PresenceParams(**self.model_dump(exclude={"mode"}))


class CropConfig(_Section):
    """What the encoder sees: the foreground box, squared, per margin one view."""

    margins: list[float] = Field(
        [-0.1], min_length=1, max_length=5,
        description="fractions of the box's longer side added on each side (negative: the "
        "middle of the box); several: one view each, embeddings averaged")

    @model_validator(mode="after")
    def _range(self) -> CropConfig:
        if any(not -0.45 <= m <= 1.0 for m in self.margins):
            raise ValueError("each margin must be between -0.45 and 1.0")
        return self


class SnapshotConfig(_Section):
    """A JPEG of the crop beside each match event, on kiosk/{id}/match/snapshot."""

    enabled: bool = False
    max_bytes: int = Field(20000, ge=1000, le=262144, description="hard cap on the JPEG's size")
    max_side: int = Field(224, ge=32, le=1024, description="longer side of the thumbnail, px")
