"""Update and rollback commands, and the checks a signed manifest must pass.

Everything that arrives on ``kiosk/{id}/cmd/update`` is untrusted until the
manifest's signature verifies, so this module is strict and small: size
caps before parsing, ``extra="forbid"``, exact schema ids, and every failure
is one UpdateError whose message is the reason published on update/status.
The operator tools (deploy push/rollback) build their payloads here too, so
both ends share one schema.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.bundle import Manifest, parse_manifest, parse_utc, utc_now_iso
from models.errors import BundleError, UpdateError, first_validation_error
from models.signing import MAX_SIGNATURE_TEXT, decode_signature, verify

__all__ = [
    "UPDATE_SCHEMA", "ROLLBACK_SCHEMA", "MAX_COMMAND_BYTES", "UpdateCommand", "RollbackCommand",
    "DeviceInfo", "parse_update_command", "parse_rollback_command", "make_update_command",
    "make_rollback_command", "verified_manifest", "check_manifest", "engine_matches",
    "parse_version", "loose_command_id",
]

UPDATE_SCHEMA = "kiosk.update/1"
ROLLBACK_SCHEMA = "kiosk.rollback/1"
MAX_COMMAND_BYTES = 8192
_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    command_id: str = Field(pattern=_ID, description="chosen by the operator; echoed on update/status")
    issued_at: str = Field(max_length=64, description="UTC ISO 8601, informational")

    @field_validator("issued_at")
    @classmethod
    def _iso(cls, v: str) -> str:
        parse_utc(v)
        return v


class UpdateCommand(_Command):
    schema_: Literal["kiosk.update/1"] = Field(alias="schema")
    manifest_url: str = Field(min_length=8, max_length=2048)
    signature: str = Field(max_length=MAX_SIGNATURE_TEXT, description="base64 Ed25519 over manifest bytes")

    @field_validator("manifest_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/?#]+", v) or any(c.isspace() or ord(c) < 32 for c in v):
            raise ValueError("manifest_url must be an http:// or https:// URL")
        return v

    @field_validator("signature")
    @classmethod
    def _sig(cls, v: str) -> str:
        try:
            decode_signature(v)
        except UpdateError as exc:
            raise ValueError(str(exc)) from None
        return v


class RollbackCommand(_Command):
    schema_: Literal["kiosk.rollback/1"] = Field(alias="schema")


def _load_json(data: bytes, what: str) -> dict:
    if not isinstance(data, (bytes, bytearray)):
        raise UpdateError(f"{what}: payload is not bytes")
    if len(data) > MAX_COMMAND_BYTES:
        raise UpdateError(f"{what}: payload of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except UnicodeDecodeError:
        raise UpdateError(f"{what}: payload is not UTF-8") from None
    except (ValueError, RecursionError):
        raise UpdateError(f"{what}: payload is not JSON") from None
    if not isinstance(obj, dict):
        raise UpdateError(f"{what}: payload is not a JSON object")
    return obj


def _validate(model: type[_Command], obj: dict, what: str):
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        loc, msg = first_validation_error(exc)
        raise UpdateError(f"{what}: invalid at {loc}: {msg}") from None


def parse_update_command(data: bytes) -> UpdateCommand:
    return _validate(UpdateCommand, _load_json(data, "update command"), "update command")


def parse_rollback_command(data: bytes) -> RollbackCommand:
    return _validate(RollbackCommand, _load_json(data, "rollback command"), "rollback command")


def loose_command_id(data: bytes) -> str | None:
    """Best-effort command id of a payload that failed to parse, so the
    rejection on update/status can still be matched to the operator's command."""
    try:
        obj = json.loads(bytes(data[:MAX_COMMAND_BYTES]).decode("utf-8"))
        cid = obj.get("command_id") if isinstance(obj, dict) else None
        return cid if isinstance(cid, str) and re.match(_ID, cid) else None
    except Exception:  # noqa: BLE001 - anything malformed simply has no id
        return None


def make_update_command(manifest_url: str, signature: str, command_id: str | None = None) -> dict:
    """The payload `deploy push` publishes (validated by the kiosk's own parser)."""
    payload = {"schema": UPDATE_SCHEMA, "command_id": command_id or uuid.uuid4().hex,
               "manifest_url": manifest_url, "signature": signature.strip(),
               "issued_at": utc_now_iso()}
    parse_update_command(json.dumps(payload).encode())
    return payload


def make_rollback_command(command_id: str | None = None) -> dict:
    payload = {"schema": ROLLBACK_SCHEMA, "command_id": command_id or uuid.uuid4().hex,
               "issued_at": utc_now_iso()}
    parse_rollback_command(json.dumps(payload).encode())
    return payload


# ------------------------------------------------------------ manifests

def verified_manifest(data: bytes, signature: str | bytes, keys) -> tuple[Manifest, str]:
    """Verify the signature over the raw bytes FIRST, then parse. Returns
    (manifest, key id). Any failure is an UpdateError with the reason."""
    kid = verify(bytes(data), signature, keys)
    try:
        return parse_manifest(bytes(data), where="manifest"), kid
    except BundleError as exc:
        raise UpdateError(str(exc)) from None


def parse_version(v: str) -> tuple[int, ...]:
    """'1.2.3' -> (1, 2, 3); a local suffix ('0.1.0+jetson', '0.2.0rc1') is ignored."""
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", v or "")
    if not m:
        raise UpdateError(f"version {v!r} is not MAJOR.MINOR.PATCH")
    return tuple(int(x) for x in m.groups())


@dataclass(frozen=True)
class DeviceInfo:
    """What a prebuilt TensorRT engine must match; None = no TensorRT here."""

    trt_version: str | None = None
    compute_capability: str | None = None
    gpu_name: str | None = None


def engine_matches(manifest: Manifest, name: str, device: DeviceInfo) -> bool:
    """True when artifact ``name`` is an engine built for this device
    (same TensorRT version and compute capability, and GPU name when given).
    An engine that does not match is never deserialised."""
    a = manifest.artifact(name)
    if a.kind != "engine" or a.engine is None or device.trt_version is None:
        return False
    e = a.engine
    return (e.trt_version == device.trt_version
            and e.compute_capability == device.compute_capability
            and (e.gpu_name is None or device.gpu_name is None or e.gpu_name == device.gpu_name))


def check_manifest(m: Manifest, *, active: Manifest | None, runtime_version: str,
                   max_total_bytes: int, now: datetime | None = None) -> None:
    """The policy a verified manifest must meet before anything is downloaded:
    newer than the active release (no replay, no downgrade), not expired,
    compatible with this runtime and with the running pipeline."""
    now = now or datetime.now(timezone.utc)
    if active is not None and m.bundle_version <= active.bundle_version:
        raise UpdateError(f"release {m.bundle_version} is not newer than the active release "
                          f"{active.bundle_version} (replay or downgrade refused)")
    if m.expires is None:
        raise UpdateError("manifest has no expiry (sign releases with `deploy sign`)")
    if m.is_expired(now):
        raise UpdateError(f"manifest expired at {m.expires}")
    if parse_version(m.compatibility.min_runtime_version) > parse_version(runtime_version):
        raise UpdateError(f"release needs runtime {m.compatibility.min_runtime_version}, "
                          f"this kiosk runs {runtime_version}")
    if active is not None:
        if m.compatibility.embedding_size != active.embedding_size:
            raise UpdateError(f"manifest is for embedding size {m.compatibility.embedding_size}, "
                              f"this kiosk's bundle has {active.embedding_size}")
        if m.compatibility.input != active.input:
            raise UpdateError("manifest's input spec differs from this kiosk's "
                              f"({m.compatibility.input.size}px vs {active.input.size}px, ...)")
    total = sum(a.size for a in m.artifacts)
    if total > max_total_bytes:
        raise UpdateError(f"release of {total} bytes exceeds update.max_total_bytes ({max_total_bytes})")
