"""The `[update]` section of the kiosk config (remote signed updates)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["UpdateConfig"]


class UpdateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="accept update commands on kiosk/{id}/cmd/update")
    store_dir: Path | None = Field(None, description="bundle store (releases/, current link); "
                                   "required when enabled")
    trusted_keys: list[Path] = Field(default_factory=list,
                                     description="pinned Ed25519 public keys (PEM); more than one for rotation")
    keep: int = Field(2, ge=1, le=20, description="bundles kept, the active one included")
    download_timeout_s: float = Field(30.0, gt=0, le=3600, description="per-request connect/read timeout")
    max_manifest_bytes: int = Field(1 << 20, ge=1024, le=1 << 24)
    max_total_bytes: int = Field(4 << 30, ge=1 << 20, description="cap on one release's artifacts")
    ca_file: Path | None = Field(None, description="CA bundle for https:// downloads (default: system CAs)")
    groups: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]] = Field(
        default_factory=list, max_length=32,
        description="fleet groups this kiosk belongs to (published in its retained status; "
        "`deploy push --group` targets them)")
    allow_http: bool = Field(True, description="accept http:// artifact URLs (integrity comes from signed sha256)")
