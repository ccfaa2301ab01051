"""The bundle: the one verified contract between workstation and device.

A bundle is a flat folder::

    manifest.json      identity and checksums of everything below (this module)
    manifest.sig       detached Ed25519 signature over manifest.json's bytes (deploy sign)
    encoder.onnx       the encoder, one self-contained file, L2-normalised output
    index.ann          Annoy angular index over the catalogue embeddings
    embeddings.npy     float32 (vectors, dim), row i = Annoy item i
    items.json         items and, per vector, its item and source image
    probes.json        probe images and their expected items (device self-test)
    probe-NNN.jpg      the probe images
    engines/           device-local TensorRT engine cache; never listed, never shipped

``verify_bundle`` checks all of it before anything touches Annoy or ONNX
Runtime: a missing, altered or truncated file, a wrong dimension or an index
built by another encoder is a BundleError naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from models.errors import BundleError, first_validation_error
from models.preprocess import PreprocessSpec

__all__ = [
    "FORMAT_VERSION", "MANIFEST", "SIGNATURE", "ENCODER", "INDEX", "EMBEDDINGS", "ITEMS", "PROBES",
    "ENGINE_DIR", "Artifact", "EncoderInfo", "IndexInfo", "SearchDefaults", "EngineCompat",
    "Compatibility", "Manifest", "ItemsFile", "ProbesFile", "sha256_file", "check_artifact_name",
    "artifact_for", "parse_manifest", "read_manifest", "write_manifest", "verify_bundle",
    "verify_bundle_items",
    "load_items", "load_probes", "annoy_node_size", "utc_now_iso", "atomic_write_bytes",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
ENCODER = "encoder.onnx"
INDEX = "index.ann"
EMBEDDINGS = "embeddings.npy"
ITEMS = "items.json"
PROBES = "probes.json"
ENGINE_DIR = "engines"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
MAX_MANIFEST_BYTES = 1 << 20


def check_artifact_name(name: str) -> str:
    """Artifact names are plain file names: no separators, no '..', not absolute."""
    if not isinstance(name, str) or not name:
        raise ValueError("artifact name is empty")
    if "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"artifact name {name!r} contains a path separator")
    if name in (".", "..") or ".." in name:
        raise ValueError(f"artifact name {name!r} contains '..'")
    if not _NAME.match(name):
        raise ValueError(f"artifact name {name!r} is not a plain file name")
    if name in (MANIFEST, SIGNATURE):
        raise ValueError(f"artifact name {name!r} is reserved")
    return name


def _check_sha(v: str) -> str:
    if not _SHA256.match(v):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Artifact(_Strict):
    name: str
    size: int = Field(ge=0, le=1 << 34)
    sha256: str
    kind: Literal["encoder", "index", "embeddings", "items", "probes", "probe-image", "engine", "other"]
    url: str | None = Field(None, max_length=2048, description="absolute, or relative to the manifest URL")
    # For kind == "engine" only: what device the prebuilt TensorRT engine is for.
    engine: EngineCompat | None = None

    _name = field_validator("name")(classmethod(lambda cls, v: check_artifact_name(v)))
    _sha = field_validator("sha256")(classmethod(lambda cls, v: _check_sha(v)))


class EngineCompat(_Strict):
    trt_version: str = Field(max_length=32)
    compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    gpu_name: str | None = Field(None, max_length=128)
    precision: Literal["fp32", "fp16", "int8"] = "fp16"


Artifact.model_rebuild()


class EncoderInfo(_Strict):
    file: str = ENCODER
    sha256: str
    opset: int = Field(17, ge=7, le=30)
    run_id: str = Field(max_length=128)
    input_name: str = Field("input", max_length=128)
    output_name: str = Field("embedding", max_length=128)
    backbone: Literal["lite0", "scratch"] = Field("scratch", description="the encoder's network")
    pretrained: str | None = Field(None, max_length=512, description=(
        "where the backbone's starting weights came from (package, file, sha256); None: random"))

    _sha = field_validator("sha256")(classmethod(lambda cls, v: _check_sha(v)))


class IndexInfo(_Strict):
    file: str = INDEX
    sha256: str
    metric: Literal["angular"] = "angular"
    dim: int = Field(ge=1, le=65536)
    n_vectors: int = Field(ge=1)
    n_trees: int = Field(ge=1, le=10000)
    search_k: int = Field(-1, ge=-1)
    encoder_sha256: str = Field(description="sha256 of the encoder whose embeddings this index holds")

    _sha = field_validator("sha256", "encoder_sha256")(classmethod(lambda cls, v: _check_sha(v)))


class SearchDefaults(_Strict):
    threshold: float = Field(0.5, ge=-1.0, le=1.0, description="cosine below which a query is 'no match'")
    mode: Literal["auto", "exact", "annoy", "annoy_rerank"] = "auto"
    exact_below: int = Field(20000, ge=0, description="auto: exact search below this many vectors")


class Compatibility(_Strict):
    embedding_size: int = Field(ge=1, le=65536)
    input: PreprocessSpec
    min_runtime_version: str = Field("0.1.0", pattern=r"^\d+\.\d+\.\d+$")


class Manifest(_Strict):
    format_version: Literal[1] = FORMAT_VERSION
    bundle_version: int = Field(ge=1, le=2**53, description="release version, monotonically increasing")
    created: str = Field(max_length=64)
    expires: str | None = Field(None, max_length=64, description="UTC ISO 8601; refuse after this")
    embedding_size: int = Field(ge=1, le=65536)
    input: PreprocessSpec
    metric: Literal["angular"] = "angular"
    item_count: int = Field(ge=1)
    encoder: EncoderInfo
    index: IndexInfo
    search: SearchDefaults = SearchDefaults()
    compatibility: Compatibility
    artifacts: tuple[Artifact, ...] = Field(min_length=1, max_length=4096)

    @field_validator("created", "expires")
    @classmethod
    def _iso(cls, v: str | None) -> str | None:
        if v is not None:
            parse_utc(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [a.name for a in self.artifacts]
        if len(set(names)) != len(names):
            raise ValueError("duplicate artifact names")
        by = {a.name: a for a in self.artifacts}
        for role, fname, sha in (("encoder", self.encoder.file, self.encoder.sha256),
                                 ("index", self.index.file, self.index.sha256)):
            if fname not in by:
                raise ValueError(f"{role} file {fname!r} is not among the artifacts")
            if by[fname].sha256 != sha:
                raise ValueError(f"{role} sha256 differs from its artifact entry")
        if self.index.encoder_sha256 != self.encoder.sha256:
            raise ValueError("index was built by another encoder (index.encoder_sha256 != encoder.sha256)")
        if self.index.dim != self.embedding_size or self.compatibility.embedding_size != self.embedding_size:
            raise ValueError("embedding size disagrees between manifest, index and compatibility")
        if self.compatibility.input != self.input:
            raise ValueError("compatibility.input differs from input")
        for required in (EMBEDDINGS, ITEMS):
            if required not in by:
                raise ValueError(f"{required} is not among the artifacts")
        return self

    def artifact(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise KeyError(name)

    def is_expired(self, now: datetime | None = None) -> bool:
        if self.expires is None:
            return False
        return (now or datetime.now(timezone.utc)) >= parse_utc(self.expires)


class ItemRecord(_Strict):
    item_id: str = Field(min_length=1, max_length=512)
    name: str = Field(max_length=512)


class VectorRecord(_Strict):
    item: int = Field(ge=0)
    source: str = Field(max_length=4096)


class ItemsFile(_Strict):
    items: tuple[ItemRecord, ...]
    vectors: tuple[VectorRecord, ...]

    @model_validator(mode="after")
    def _refs(self) -> ItemsFile:
        n = len(self.items)
        if any(v.item >= n for v in self.vectors):
            raise ValueError("a vector refers to an item that does not exist")
        if len({i.item_id for i in self.items}) != n:
            raise ValueError("duplicate item_id")
        return self


class Probe(_Strict):
    file: str
    item_id: str
    # Row of embeddings.npy this probe's bytes were encoded into (a byte copy of
    # a catalogue photo): lets the device check its encoder reproduces the
    # stored embeddings, i.e. that the index was built by this encoder.
    vector: int | None = Field(None, ge=0)

    _name = field_validator("file")(classmethod(lambda cls, v: check_artifact_name(v)))


class ProbesFile(_Strict):
    probes: tuple[Probe, ...]


# ---------------------------------------------------------------- helpers

def utc_now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_utc(s: str) -> datetime:
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not an ISO 8601 time: {s!r}") from exc
    if dt.tzinfo is None:
        raise ValueError(f"time {s!r} has no time zone")
    return dt


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def artifact_for(path: Path, kind: str, **extra: object) -> Artifact:
    """An Artifact entry describing the file at ``path`` as it is now."""
    return Artifact(name=path.name, size=path.stat().st_size, sha256=sha256_file(path), kind=kind, **extra)


def annoy_node_size(dim: int) -> int:
    """Bytes per node of an Annoy angular index with int32 ids and float32
    values: n_descendants + two children + dim floats (annoylib.h, Angular::Node)."""
    return 4 + 8 + 4 * dim


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, rename over, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_manifest(data: bytes, *, where: str = MANIFEST) -> Manifest:
    """Parse manifest bytes; any problem is one BundleError naming ``where``."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        loc, msg = first_validation_error(exc)
        raise BundleError(f"{where}: invalid manifest at {loc}: {msg}") from None
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{where}: invalid manifest: {exc}") from None


def read_manifest(bundle_dir: str | Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (not a bundle folder?)") from None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_manifest(data, where=str(path))


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> bytes:
    """Write manifest.json atomically; return the exact bytes written (what gets signed)."""
    data = (manifest.model_dump_json(indent=2, exclude_none=True) + "\n").encode()
    atomic_write_bytes(Path(bundle_dir) / MANIFEST, data)
    return data


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran:
        raise ValueError("Fortran-ordered array")
    return shape, dtype


def verify_bundle(bundle_dir: str | Path) -> Manifest:
    """Check a bundle folder completely; return its manifest or raise BundleError."""
    return verify_bundle_items(bundle_dir)[0]


def verify_bundle_items(bundle_dir: str | Path) -> tuple[Manifest, ItemsFile]:
    """``verify_bundle`` that also returns the parsed items.json, so a loader
    parses it once (at 10k items the parse holds the GIL for ~100 ms, which a
    hot swap during a running camera loop should pay only once)."""
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"{root}: no such bundle folder")
    m = read_manifest(root)
    for a in m.artifacts:
        p = root / a.name
        if not p.is_file():
            raise BundleError(f"{p}: missing (listed in {MANIFEST})")
        size = p.stat().st_size
        if size != a.size:
            raise BundleError(f"{p}: size {size} bytes, manifest says {a.size} (truncated or altered)")
        if sha256_file(p) != a.sha256:
            raise BundleError(f"{p}: sha256 does not match {MANIFEST} (altered)")
    idx = root / m.index.file
    node = annoy_node_size(m.index.dim)
    size = idx.stat().st_size
    if size % node != 0 or size // node < m.index.n_vectors:
        raise BundleError(f"{idx}: {size} bytes is not an Annoy angular index of "
                          f"{m.index.n_vectors} vectors of dimension {m.index.dim}")
    emb = root / EMBEDDINGS
    try:
        shape, dtype = _npy_shape(emb)
    except (ValueError, OSError) as exc:
        raise BundleError(f"{emb}: not a readable .npy array ({exc})") from None
    if shape != (m.index.n_vectors, m.embedding_size) or dtype != np.float32:
        raise BundleError(f"{emb}: shape {shape} {dtype}, expected ({m.index.n_vectors}, "
                          f"{m.embedding_size}) float32")
    items = load_items(root)
    if len(items.vectors) != m.index.n_vectors or len(items.items) != m.item_count:
        raise BundleError(f"{root / ITEMS}: {len(items.items)} items / {len(items.vectors)} vectors, "
                          f"manifest says {m.item_count} / {m.index.n_vectors}")
    return m, items


_ITEM_LIST = TypeAdapter(list[ItemRecord])
_VECTOR_LIST = TypeAdapter(list[VectorRecord])
_CHUNK = 512


def _validate_chunked(adapter: TypeAdapter, rows: object, what: str) -> tuple:
    """Validate a long list in chunks. One pydantic call over 10k records holds
    the GIL for ~50 ms; chunks let a running camera loop in another thread get
    the interpreter between them while a remote update loads a new bundle."""
    if not isinstance(rows, list):
        raise ValueError(f"{what} must be a list")
    out: list = []
    for i in range(0, len(rows), _CHUNK):
        out.extend(adapter.validate_python(rows[i:i + _CHUNK]))
    return tuple(out)


def load_items(bundle_dir: str | Path) -> ItemsFile:
    p = Path(bundle_dir) / ITEMS
    try:
        raw = json.loads(p.read_bytes())
        if not isinstance(raw, dict) or set(raw) != {"items", "vectors"}:
            raise ValueError("expected exactly the keys 'items' and 'vectors'")
        items = _validate_chunked(_ITEM_LIST, raw["items"], "items")
        vectors = _validate_chunked(_VECTOR_LIST, raw["vectors"], "vectors")
        return ItemsFile(items=items, vectors=vectors)
    except FileNotFoundError:
        raise BundleError(f"{p}: missing") from None
    except OSError as exc:
        raise BundleError(f"{p}: cannot read ({exc.strerror})") from None
    except ValidationError as exc:
        raise BundleError(f"{p}: invalid ({first_validation_error(exc)[1]})") from None
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        raise BundleError(f"{p}: invalid ({exc})") from None


def load_probes(bundle_dir: str | Path) -> ProbesFile:
    p = Path(bundle_dir) / PROBES
    try:
        return ProbesFile.model_validate_json(p.read_bytes())
    except FileNotFoundError:
        return ProbesFile(probes=())
    except ValidationError as exc:
        raise BundleError(f"{p}: invalid ({first_validation_error(exc)[1]})") from None
