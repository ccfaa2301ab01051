"""Real, small bundles for the update tests, built without torch in ~0.1 s.

The encoder is a genuine ONNX graph (average-pool to 4x4, a seeded linear
projection, L2 normalisation) made with onnx.helper; the catalogue is the
synthetic product photos of tests/support.py; embeddings are computed by
ONNX Runtime through the device's own preprocessing, the index is a real
Annoy file, the probes are byte copies of catalogue photos. ``extra``
random vectors (extra items) make a bundle of any size for the benchmark.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from models.bundle import (
    EMBEDDINGS,
    ENCODER,
    INDEX,
    ITEMS,
    PROBES,
    Compatibility,
    EncoderInfo,
    IndexInfo,
    Manifest,
    SearchDefaults,
    artifact_for,
    utc_now_iso,
    write_manifest,
)
from models.preprocess import PreprocessSpec

SPEC = PreprocessSpec(size=32, resize="stretch")


def make_encoder(path: Path, dim: int = 16, seed: int = 0, size: int = SPEC.size) -> Path:
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    w = rng.normal(size=(48, dim)).astype(np.float32)
    k = size // 4
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[k, k], strides=[k, k]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["proj"]),
         helper.make_node("LpNormalization", ["proj"], ["embedding"], axis=1, p=2)],
        "tiny-encoder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten().tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def build_bundle(out: Path, catalogue: Path, *, version: int = 1, dim: int = 16, seed: int = 0,
                 extra: int = 0, n_trees: int = 4, exact_below: int = 20000) -> Path:
    """A complete, verifiable bundle in ``out`` (created). ``seed`` picks the encoder."""
    from annoy import AnnoyIndex

    from edge_runtime.encoders.onnx_backend import OnnxEncoder
    from models.images import read_image
    from models.preprocess import preprocess_batch

    out.mkdir(parents=True)
    enc_path = make_encoder(out / ENCODER, dim=dim, seed=seed)
    photos = sorted(catalogue.rglob("*.jpg"))
    item_ids = sorted({str(p.parent.relative_to(catalogue)) for p in photos})
    enc = OnnxEncoder(enc_path, SPEC, dim, threads=1)
    emb = enc.encode(preprocess_batch([read_image(p) for p in photos], SPEC))
    enc.close()
    vec_items = [item_ids.index(str(p.parent.relative_to(catalogue))) for p in photos]
    sources = [str(p.relative_to(catalogue)) for p in photos]
    if extra:
        rng = np.random.default_rng(1000 + version)
        r = rng.normal(size=(extra, dim)).astype(np.float32)
        r /= np.linalg.norm(r, axis=1, keepdims=True)
        emb = np.concatenate([emb, r])
        base = len(item_ids)
        item_ids += [f"Extra/item-{i:06d}" for i in range(extra)]
        vec_items += list(range(base, base + extra))
        sources += [f"synthetic/{i}" for i in range(extra)]
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    np.save(out / EMBEDDINGS, emb, allow_pickle=False)
    index = AnnoyIndex(dim, "angular")
    index.set_seed(seed)
    for i, v in enumerate(emb):
        index.add_item(i, v.tolist())
    index.build(n_trees, n_jobs=1)
    index.save(str(out / INDEX))
    index.unload()
    items = {"items": [{"item_id": i, "name": i.split("/")[-1]} for i in item_ids],
             "vectors": [{"item": it, "source": s} for it, s in zip(vec_items, sources, strict=True)]}
    (out / ITEMS).write_text(json.dumps(items))
    probes = []
    for n, p in enumerate(photos[::3]):  # one photo per item
        name = f"probe-{n:03d}.jpg"
        shutil.copyfile(p, out / name)
        probes.append({"file": name, "item_id": str(p.parent.relative_to(catalogue)),
                       "vector": photos.index(p)})
    (out / PROBES).write_text(json.dumps({"probes": probes}))
    arts = [artifact_for(out / ENCODER, "encoder"), artifact_for(out / INDEX, "index"),
            artifact_for(out / EMBEDDINGS, "embeddings"), artifact_for(out / ITEMS, "items"),
            artifact_for(out / PROBES, "probes")]
    arts += [artifact_for(out / p["file"], "probe-image") for p in probes]
    enc_sha = arts[0].sha256
    m = Manifest(
        bundle_version=version, created=utc_now_iso(), embedding_size=dim, input=SPEC,
        item_count=len(item_ids),
        encoder=EncoderInfo(sha256=enc_sha, run_id=f"synthetic-{seed}"),
        index=IndexInfo(sha256=arts[1].sha256, dim=dim, n_vectors=len(emb), n_trees=n_trees,
                        encoder_sha256=enc_sha),
        search=SearchDefaults(threshold=0.5, mode="auto", exact_below=exact_below),
        compatibility=Compatibility(embedding_size=dim, input=SPEC), artifacts=tuple(arts))
    write_manifest(out, m)
    return out
