"""The network's hyperparameters as one small typed object (no torch here),
saved as JSON in every checkpoint so export and resume rebuild the model from
the run folder alone."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.preprocess import PreprocessSpec

__all__ = ["NetConfig", "LITE0_INPUT", "SCRATCH_INPUT", "BACKBONES"]

BACKBONES = ("lite0", "scratch")
# EfficientNet-Lite's ImageNet weights were trained on (pixel - 127) / 128
# (TensorFlow's efficientnet/lite preprocessing): on Grocery Store photos of
# ImageNet classes the reference network's top-1 is 0.76 with it and 0.61 with
# the usual ImageNet mean/std.
LITE0_INPUT = PreprocessSpec(size=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
SCRATCH_INPUT = PreprocessSpec(size=96)


class NetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Runs from before the pretrained backbone have no "backbone" key: scratch.
    backbone: Literal["lite0", "scratch"] = Field("scratch", description=(
        "lite0: EfficientNet-Lite0 with ImageNet weights; scratch: the small residual encoder "
        "trained from random weights"))
    cut: Literal["stage4", "stage5", "stage6", "head"] = Field("head", description=(
        "lite0: where the backbone ends (after stage 4, 5 or 6, or with its 1x1 head conv)"))
    width: int = Field(16, ge=4, le=512, description="scratch: channels of the first stage; doubles per stage")
    depth: int = Field(4, ge=2, le=6, description="scratch: number of stride-2 stages")
    stem_stride: int = Field(1, ge=1, le=2, description=(
        "scratch: stride of the first conv: 2 sees a larger input for the cost of one half its side"))
    blocks_per_stage: int = Field(1, ge=1, le=4, description="scratch: residual blocks after each downsampling")
    embedding_size: int = Field(128, ge=8, le=4096)
    colour_bins: int = Field(0, ge=0, le=256, description=(
        "scratch: learned soft colour histogram of the input (0 = off) pooled beside the conv features"))
    head_channels: int = Field(0, ge=0, le=4096, description=(
        "scratch: a 1x1 conv widening the last feature map before pooling (0 = off)"))
    # scratch: 96 px beat 64 px at equal training time on the Grocery Store
    # benchmark (top-1 0.456 vs 0.422 in 5 min). lite0: see LITE0_INPUT.
    input: PreprocessSpec = SCRATCH_INPUT

    @model_validator(mode="after")
    def _min_side(self) -> NetConfig:
        if self.input.size < self.stride():
            raise ValueError(f"input size {self.input.size} is below the network's stride {self.stride()}")
        return self

    def stage_channels(self) -> list[int]:
        """scratch: channels of each stage."""
        return [min(self.width * 2**i, 1024) for i in range(self.depth)]

    def stride(self) -> int:
        """Input side / feature-map side."""
        if self.backbone == "lite0":
            return 16 if self.cut == "stage4" else 32
        return 2**self.depth * self.stem_stride
