"""The network's hyperparameters as one small typed object (no torch here),
saved as JSON in every checkpoint so export and resume rebuild the model from
the run folder alone."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from models.preprocess import PreprocessSpec

__all__ = ["NetConfig"]


class NetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(16, ge=4, le=512, description="channels of the first stage; doubles per stage")
    depth: int = Field(4, ge=2, le=6, description="number of stride-2 stages")
    stem_stride: int = Field(1, ge=1, le=2, description=(
        "stride of the first conv: 2 sees a larger input for the cost of one half its side"))
    blocks_per_stage: int = Field(1, ge=1, le=4, description="residual blocks after each downsampling")
    embedding_size: int = Field(128, ge=8, le=4096)
    colour_bins: int = Field(0, ge=0, le=256, description=(
        "learned soft colour histogram of the input (0 = off) pooled beside the conv features: "
        "colour is what tells many products apart, and a histogram ignores where it is"))
    head_channels: int = Field(0, ge=0, le=4096, description=(
        "a 1x1 conv widening the last feature map before pooling (0 = off): "
        "cheap at that resolution, and gives the embedding more features to choose from"))
    # 96 px: on the Grocery Store benchmark (bench/retrieval.py, 2-core CPU, bf16)
    # 96 px beat 64 px at equal training time (top-1 0.456 vs 0.422 in 5 min)
    # although it saw half as many epochs: piles of fruit need the pixels.
    input: PreprocessSpec = PreprocessSpec(size=96)

    def stage_channels(self) -> list[int]:
        return [min(self.width * 2**i, 1024) for i in range(self.depth)]
