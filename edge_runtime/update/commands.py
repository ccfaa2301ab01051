"""Update, rollback and revoke commands, and the checks a signed manifest must pass.

Everything that arrives on ``kiosk/{id}/cmd/...`` is untrusted until a
signature verifies, so this module is strict and small: size caps before
parsing, ``extra="forbid"``, exact schema ids. The updater runs the parsers
at the door, on the MQTT thread, before anything is queued; a failure is
``Rejected("invalid_command")``. The operator tools (deploy push, rollback,
revoke) build their payloads here too, so both ends share one schema.

A revocation is a small JSON document signed with the release key, like a
manifest: ``{"schema": "kiosk.revocation/1", "revoked": [versions],
"issued": ...}``. Kiosks add its versions to the revoked set they keep, so
replaying an old revocation changes nothing and none can un-revoke.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_runtime.update.errors import Rejected
from edge_runtime.update.policy import VersionPolicy
from edge_runtime.update.urls import UrlPolicy
from models.bundle import Manifest, parse_manifest, parse_utc, utc_now_iso
from models.errors import BundleError, UpdateError, first_validation_error
from models.signing import MAX_SIGNATURE_TEXT, decode_signature, verify

__all__ = [
    "UPDATE_SCHEMA", "ROLLBACK_SCHEMA", "REVOKE_SCHEMA", "REVOCATION_SCHEMA", "MAX_COMMAND_BYTES",
    "UpdateCommand", "RollbackCommand", "RevokeCommand", "Revocation", "DeviceInfo",
    "parse_command", "parse_update_command", "parse_rollback_command", "parse_revoke_command",
    "make_update_command", "make_rollback_command", "make_revoke_command", "make_revocation",
    "verified_revocation", "verified_manifest", "check_manifest", "engine_matches",
    "parse_version", "loose_command_id",
]

UPDATE_SCHEMA = "kiosk.update/1"
ROLLBACK_SCHEMA = "kiosk.rollback/1"
REVOKE_SCHEMA = "kiosk.revoke/1"
REVOCATION_SCHEMA = "kiosk.revocation/1"
MAX_COMMAND_BYTES = 8192
MAX_REVOKED_PER_DOC = 256
_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


def _signature_text(v: str) -> str:
    try:
        decode_signature(v)
    except UpdateError as exc:
        raise ValueError(str(exc)) from None
    return v


def _utc_text(v: str) -> str:
    parse_utc(v)
    return v


SignatureText = Annotated[str, Field(max_length=MAX_SIGNATURE_TEXT), AfterValidator(_signature_text)]
UtcText = Annotated[str, Field(max_length=64), AfterValidator(_utc_text)]


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    command_id: str = Field(pattern=_ID, description="chosen by the operator; echoed on update/status")
    issued_at: UtcText = Field(description="UTC ISO 8601, informational")


class UpdateCommand(_Command):
    schema_: Literal["kiosk.update/1"] = Field(alias="schema")
    manifest_url: str = Field(min_length=8, max_length=2048)
    signature: SignatureText = Field(description="base64 Ed25519 over manifest bytes")

    @field_validator("manifest_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/?#]+", v) or any(c.isspace() or ord(c) < 32 for c in v):
            raise ValueError("manifest_url must be an http:// or https:// URL")
        return v


class RollbackCommand(_Command):
    schema_: Literal["kiosk.rollback/1"] = Field(alias="schema")


class RevokeCommand(_Command):
    schema_: Literal["kiosk.revoke/1"] = Field(alias="schema")
    revocation: str = Field(max_length=4096, description="base64 of the signed revocation document")
    signature: SignatureText = Field(description="base64 Ed25519 over the document")

    @field_validator("revocation")
    @classmethod
    def _b64(cls, v: str) -> str:
        try:
            base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("revocation is not base64") from None
        return v


class Revocation(BaseModel):
    """The signed document inside a revoke command."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    schema_: Literal["kiosk.revocation/1"] = Field(alias="schema")
    revoked: tuple[int, ...] = Field(min_length=1, max_length=MAX_REVOKED_PER_DOC)
    issued: UtcText

    @field_validator("revoked")
    @classmethod
    def _versions(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(x < 1 or x > 2**53 for x in v):
            raise ValueError("versions are integers >= 1")
        return v


_MODELS: dict[str, type[_Command]] = {"update": UpdateCommand, "rollback": RollbackCommand,
                                      "revoke": RevokeCommand}


def _load_json(data: bytes, what: str) -> dict:
    if not isinstance(data, (bytes, bytearray)):
        raise Rejected("invalid_command", f"{what}: payload is not bytes")
    if len(data) > MAX_COMMAND_BYTES:
        raise Rejected("invalid_command",
                       f"{what}: payload of {len(data)} bytes exceeds {MAX_COMMAND_BYTES}",
                       public=f"the command is larger than {MAX_COMMAND_BYTES} bytes")
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except UnicodeDecodeError:
        raise Rejected("invalid_command", f"{what}: payload is not UTF-8") from None
    except (ValueError, RecursionError):
        raise Rejected("invalid_command", f"{what}: payload is not JSON") from None
    if not isinstance(obj, dict):
        raise Rejected("invalid_command", f"{what}: payload is not a JSON object")
    return obj


def _validate(model: type[BaseModel], obj: dict, what: str):
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        loc, msg = first_validation_error(exc)
        raise Rejected("invalid_command", f"{what}: invalid at {loc}: {msg}",
                       public=f"the {what} is invalid at {loc}") from None


def parse_command(kind: str, data: bytes, urls: UrlPolicy | None = None) -> _Command:
    """The door: size, JSON, schema, and for updates the manifest URL against
    ``urls`` (the kiosk's mirrors) - before anything is queued or fetched."""
    what = f"{kind} command"
    cmd = _validate(_MODELS[kind], _load_json(data, what), what)
    if urls is not None and isinstance(cmd, UpdateCommand):
        urls.check(cmd.manifest_url)
    return cmd


def parse_update_command(data: bytes, urls: UrlPolicy | None = None) -> UpdateCommand:
    return parse_command("update", data, urls)  # type: ignore[return-value]


def parse_rollback_command(data: bytes) -> RollbackCommand:
    return parse_command("rollback", data)  # type: ignore[return-value]


def parse_revoke_command(data: bytes) -> RevokeCommand:
    return parse_command("revoke", data)  # type: ignore[return-value]


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


def make_revocation(versions: list[int]) -> bytes:
    """The exact bytes of a revocation document (what gets signed)."""
    doc = {"schema": REVOCATION_SCHEMA, "revoked": sorted(set(versions)), "issued": utc_now_iso()}
    data = json.dumps(doc, separators=(",", ":")).encode()
    try:
        Revocation.model_validate_json(data)
    except ValidationError as exc:
        loc, msg = first_validation_error(exc)
        raise UpdateError(f"revocation: invalid at {loc}: {msg}") from None
    return data


def make_revoke_command(document: bytes, signature: str, command_id: str | None = None) -> dict:
    """The payload `deploy revoke` publishes (validated by the kiosk's own parser)."""
    payload = {"schema": REVOKE_SCHEMA, "command_id": command_id or uuid.uuid4().hex,
               "revocation": base64.b64encode(document).decode("ascii"),
               "signature": signature.strip(), "issued_at": utc_now_iso()}
    parse_revoke_command(json.dumps(payload).encode())
    return payload


def verified_revocation(cmd: RevokeCommand, keys) -> tuple[Revocation, str]:
    """Verify the document's signature against the pinned keys first, then parse it."""
    data = base64.b64decode(cmd.revocation, validate=True)
    try:
        kid = verify(data, cmd.signature, keys)
    except UpdateError as exc:
        raise Rejected("revocation_invalid", str(exc)) from None
    try:
        return Revocation.model_validate_json(data), kid
    except ValidationError as exc:
        loc, msg = first_validation_error(exc)
        raise Rejected("revocation_invalid", f"revocation: invalid at {loc}: {msg}") from None


# ------------------------------------------------------------ manifests

def verified_manifest(data: bytes, signature: str | bytes, keys) -> tuple[Manifest, str]:
    """Verify the signature over the raw bytes FIRST, then parse. Returns
    (manifest, key id); Rejected "signature" or "manifest_invalid"."""
    try:
        kid = verify(bytes(data), signature, keys)
    except UpdateError as exc:
        raise Rejected("signature", str(exc)) from None
    try:
        return parse_manifest(bytes(data), where="manifest"), kid
    except BundleError as exc:
        raise Rejected("manifest_invalid", str(exc)) from None


def parse_version(v: str) -> tuple[int, ...]:
    """'1.2.3' -> (1, 2, 3); a local suffix ('0.1.0+jetson', '0.2.0rc1') is ignored."""
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", v or "")
    if not m:
        raise Rejected("incompatible", f"version {v!r} is not MAJOR.MINOR.PATCH")
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


def check_manifest(m: Manifest, *, serving: Manifest, policy: VersionPolicy, runtime_version: str,
                   max_total_bytes: int, now: datetime | None = None) -> None:
    """The policy a verified manifest must meet before anything is downloaded:
    not revoked and above the version floor (the highest version ever active
    here: no replay, no downgrade, not even on a store without an active
    release), not expired, compatible with this runtime and with ``serving``
    (the manifest of the bundle the pipeline runs now)."""
    now = now or datetime.now(timezone.utc)
    policy.raised_to(serving.bundle_version).check(m.bundle_version)
    if m.expires is None:
        raise Rejected("expired", "manifest has no expiry (sign releases with `deploy sign`)")
    if m.is_expired(now):
        raise Rejected("expired", f"manifest expired at {m.expires}",
                       public=f"the manifest expired at {m.expires}")
    if parse_version(m.compatibility.min_runtime_version) > parse_version(runtime_version):
        why = (f"release needs runtime {m.compatibility.min_runtime_version}, "
               f"this kiosk runs {runtime_version}")
        raise Rejected("incompatible", why, public=why)
    if m.compatibility.embedding_size != serving.embedding_size:
        why = (f"manifest is for embedding size {m.compatibility.embedding_size}, "
               f"this kiosk's bundle has {serving.embedding_size}")
        raise Rejected("incompatible", why, public=why)
    if m.compatibility.input != serving.input:
        why = ("manifest's input spec differs from this kiosk's "
               f"({m.compatibility.input.size}px vs {serving.input.size}px, ...)")
        raise Rejected("incompatible", why, public=why)
    total = sum(a.size for a in m.artifacts)
    if total > max_total_bytes:
        raise Rejected("too_large", f"release of {total} bytes exceeds update.max_total_bytes "
                       f"({max_total_bytes})")
