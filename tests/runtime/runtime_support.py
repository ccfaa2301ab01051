"""Fixtures for the runtime tests: a real bundle with a *discriminative*
encoder, a real video clip with known ground truth, and an MQTT subscriber
whose session survives a broker restart.

Why a hand-written encoder: the seeded untrained network of ``tiny_bundle``
embeds every image at cosine ~0.999 to every other (measured), so no
threshold or margin can separate items or an empty counter. These tests are
about the pipeline, not the model, so ``pixel_bundle`` uses a tiny real ONNX
graph (8x8 average pooling of the normalised input, flattened,
L2-normalised) exported into the real bundle format and indexed with the
real indexer: ONNX Runtime, Annoy and the manifest are all real.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from support import Collector

CLIP_W, CLIP_H, CLIP_FPS = 320, 240, 30.0


def write_pixel_encoder(path: Path, size: int = 32, pool: int = 8) -> int:
    """Write the ONNX encoder; return its embedding size."""
    import onnx
    from onnx import TensorProto, helper

    d = 3 * (size // pool) ** 2
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", d])
    nodes = [helper.make_node("AveragePool", ["input"], ["p"], kernel_shape=[pool, pool],
                              strides=[pool, pool]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("LpNormalization", ["f"], ["embedding"], axis=1, p=2)]
    model = helper.make_model(helper.make_graph(nodes, "pixels", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return d


def make_pixel_bundle(out: Path, catalogue: Path, threshold: float = 0.9) -> Path:
    from edge_runtime.encoders.onnx_backend import OnnxEncoder
    from models.bundle import sha256_file
    from models.catalogue import load_catalogue
    from models.indexing import EXPORT_INFO, ExportInfo, IndexParams, index_catalogue
    from models.preprocess import PreprocessSpec

    out.mkdir(parents=True)
    spec = PreprocessSpec(size=32)
    dim = write_pixel_encoder(out / "encoder.onnx")
    info = ExportInfo(run_id="pixels", embedding_size=dim, input=spec, opset=17,
                      encoder_sha256=sha256_file(out / "encoder.onnx"))
    (out / EXPORT_INFO).write_text(info.model_dump_json())
    cat = load_catalogue(catalogue)
    enc = OnnxEncoder(out / "encoder.onnx", spec, dim, threads=1)
    index_catalogue(out, cat.entries, cat.names(), enc, IndexParams(n_trees=5, threshold=threshold),
                    root=cat.root, progress=False)
    enc.close()
    return out


@dataclass(frozen=True)
class Segment:
    start: int
    end: int          # inclusive
    item_id: str | None   # None: shaky/ambiguous (must give no event)


@dataclass(frozen=True)
class Clip:
    path: Path
    frames: int
    segments: tuple[Segment, ...]

    def item_at(self, index: int) -> str | None:
        return next((s.item_id for s in self.segments if s.start <= index <= s.end), None)


def make_clip(path: Path, catalogue: Path, seed: int = 0) -> Clip:
    """A kiosk view: an empty counter (a grey gradient with sensor noise), then
    products (the catalogue's 120 px photos) held in the middle of the 320x240
    frame with jitter, a direct change of product, a shaky segment alternating
    items every frame, a product in no catalogue, a product lowered out of view
    for a moment and raised again, separated by empty frames; mp4v at 30 fps,
    decoded by OpenCV in the tests. Segments with item None must give no event."""
    import cv2

    rng = np.random.default_rng(seed)
    items = sorted(p for p in catalogue.glob("*/*") if p.is_dir())
    ids = [p.relative_to(catalogue).as_posix() for p in items]
    photos = [cv2.imread(str(sorted(p.glob("*.jpg"))[0])) for p in items]

    counter = np.linspace(80, 110, CLIP_W, dtype=np.float32)[None, :, None] * np.ones((CLIP_H, 1, 3))

    def background() -> np.ndarray:
        return np.clip(counter + rng.normal(0, 3, counter.shape), 0, 255).astype(np.uint8)

    def held(k: int) -> np.ndarray:
        f = background()
        ph = photos[k]
        dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
        x0, y0 = (CLIP_W - ph.shape[1]) // 2 + dx, (CLIP_H - ph.shape[0]) // 2 + dy
        f[y0:y0 + ph.shape[0], x0:x0 + ph.shape[1]] = ph
        return f

    unknown = rng.integers(0, 255, (40, 40, 3)).astype(np.uint8).repeat(3, 0).repeat(3, 1)
    photos.append(unknown)   # a product that is in no catalogue: blocks of random colour
    plan: list[tuple[str, int, int | None]] = [
        ("empty", 20, None), ("item", 45, 0), ("empty", 20, None), ("item", 45, 1),
        ("empty", 20, None), ("item", 40, 2), ("item", 40, 3), ("empty", 20, None),
        ("shaky", 30, None), ("empty", 20, None), ("item", 45, 0), ("empty", 15, None),
        ("unknown", 40, len(photos) - 1), ("empty", 20, None),
        # lowered out of view for 6 frames (0.2 s) and raised again: one showing
        ("item", 30, 1), ("empty", 6, None), ("item", 30, 1), ("empty", 15, None)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, (CLIP_W, CLIP_H))
    segments, n = [], 0
    for kind, count, k in plan:
        start = n
        for i in range(count):
            if kind == "empty":
                writer.write(background())
            elif kind in ("item", "unknown"):
                writer.write(held(k))
            else:  # two items alternating every frame: an unclear view
                writer.write(held(i % 2))
            n += 1
        if kind == "item":
            last = segments[-1] if segments else None
            if last is not None and last.item_id == ids[k] and start - last.end <= 7:
                segments[-1] = Segment(last.start, n - 1, ids[k])   # raised again: the same showing
            else:
                segments.append(Segment(start, n - 1, ids[k]))
        elif kind in ("shaky", "unknown"):
            segments.append(Segment(start, n - 1, None))
    writer.release()
    return Clip(path, n, tuple(segments))


class SessionSubscriber(Collector):
    """A Collector with a persistent session (MQTT 3.1.1, clean_session
    False, fixed client id): with broker persistence on, QoS 1 messages
    published while it is away are kept for it, so a broker restart cannot
    race the test's own subscriber."""

    def __init__(self, port: int, topics: list[str], client_id: str) -> None:
        super().__init__(port, topics, client_id=client_id, persistent_session=True)

    def json_on(self, suffix: str) -> list[dict]:
        with self._cond:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def wait_until(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True


ASYNCAPI = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


def message_validator():
    """validate(topic, payload_dict) against docs/asyncapi.yaml: the channel is
    found by matching the topic against the channel names, its message's
    payload schema is checked with jsonschema (refs resolved in the document)."""
    import re

    import jsonschema
    import yaml

    doc = yaml.safe_load(ASYNCAPI.read_text())
    channels = []
    for name, ch in doc["channels"].items():
        op = ch.get("subscribe") or ch.get("publish")
        ref = op["message"]["$ref"].rsplit("/", 1)[-1]
        payload_ref = doc["components"]["messages"][ref]["payload"]["$ref"]
        pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(name)) + "$"
        channels.append((re.compile(pattern), payload_ref))

    def validate(topic: str, payload: dict) -> None:
        ref = next((r for rx, r in channels if rx.match(topic)), None)
        assert ref is not None, f"topic {topic} is not in {ASYNCAPI.name}"
        schema = {**doc, "$ref": ref}   # the document is the root, so '#/components/...' resolves
        jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker()).validate(payload)

    return validate
