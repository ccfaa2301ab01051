"""The `[update]` section of the kiosk config (remote signed updates)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_runtime.update.urls import UrlPolicy, parse_mirror

__all__ = ["UpdateConfig"]


class UpdateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="accept update commands on kiosk/{id}/cmd/update")
    store_dir: Path | None = Field(None, description="bundle store (releases/, current link); "
                                   "required when enabled")
    trusted_keys: list[Path] = Field(default_factory=list,
                                     description="pinned Ed25519 public keys (PEM); more than one for rotation")
    mirrors: list[str] = Field(
        default_factory=list, max_length=32,
        description="URL prefixes releases may come from (http(s)://host[:port]/path/); every "
        "manifest, artifact and redirect URL must lie under one; required when enabled")
    keep: int = Field(2, ge=1, le=20, description="bundles kept, the active one included")
    download_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="longest silence in one network step (connect, TLS "
        "handshake, a gap between bytes); also the time the manifest must arrive within")
    deadline_s: float = Field(600.0, gt=0, le=86400,
                              description="the manifest and every artifact of a release must "
                              "arrive within this many seconds")
    verify_timeout_s: float = Field(300.0, gt=0, le=86400,
                                    description="longest time for verifying and self-testing a "
                                    "release (in a subprocess, killed after this)")
    max_manifest_bytes: int = Field(1 << 20, ge=1024, le=1 << 24)
    max_total_bytes: int = Field(4 << 30, ge=1 << 20, description="cap on one release's artifacts")
    ca_file: Path | None = Field(None, description="CA bundle for https:// downloads (default: system CAs)")
    groups: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]] = Field(
        default_factory=list, max_length=32,
        description="fleet groups this kiosk belongs to (published in its retained status; "
        "`deploy push --group` targets them)")
    allow_http: bool = Field(True, description="accept http:// URLs (integrity comes from the "
                             "signed sha256 of every artifact)")

    @field_validator("mirrors")
    @classmethod
    def _mirrors(cls, v: list[str]) -> list[str]:
        try:
            return [parse_mirror(m) for m in v]
        except Exception as exc:  # Rejected or ValueError: one message for the config error
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _needed_when_enabled(self) -> UpdateConfig:
        if self.enabled and self.store_dir is None:
            raise ValueError("update.store_dir is required when update.enabled is true")
        if self.enabled and not self.mirrors:
            raise ValueError("update.mirrors is required when update.enabled is true (the URL "
                             "prefixes releases may be fetched from)")
        return self

    def url_policy(self) -> UrlPolicy:
        return UrlPolicy(tuple(self.mirrors), self.allow_http)
