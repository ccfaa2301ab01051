"""The whitened head: after training, the encoder's projection is replaced by
a closed-form linear map fitted on the catalogue's pooled backbone features.

Training shapes the backbone through the projection and its losses (the
cosine-margin classifier pulls each product's photos together). For
retrieval, the pooled features under that projection are a better embedding
once two linear steps are fitted on the catalogue photos (labels only, no
gradient):

1. PCA of the centred pooled features down to the embedding size;
2. within-class whitening: divide out the covariance of photos around their
   own product's mean (shrunk toward its average variance by ``shrink``), so
   directions in which one product's photos vary (light, angle, session) count
   less than those that separate products.

Both fold into one ``Linear(channels, embedding_size)`` with the projection's
shape, so the ONNX graph, the index and every contract downstream are
unchanged. On the grocery benchmark (val photos against the train split;
bench/results/retrieval-20261202-081807-head.md) it lifted top-1 0.811/0.824
-> 0.841/0.841 and top-5 0.963/0.963 -> 0.987/0.973 on two seeds of the
default Lite0 recipe, and moved a `--precision fp32` run by -0.006 (0.790 ->
0.784). Products enrolled later without retraining did not gain (bench
--unseen: 0.433 -> 0.403 top-1, two of 67 photos).

Before the fit, a Lite0 backbone is moved back part of the way to the
ImageNet weights it started from: ``blend`` x fine-tuned + (1 - blend) x
ImageNet, tensor by tensor (weight-space ensembling, "WiSE-FT": Wortsman et
al., CVPR 2022). Fine-tuning on the catalogue's products tunes the backbone
to them; the longer it trains, the more products enrolled later land on a
trained look-alike. On a 30-minute unseen-products run (bench --unseen,
2-core AVX2 CPU, 24.7 epochs) blends of 1 / 0.9 / 0.85 / 0.75 / 0.65 / 0.5 /
0 named the enrolled products' val photos at top-1 0.328 / 0.403 / 0.433 /
0.463 / 0.463 / 0.478 / 0.418 and the trained products' at 0.817 / 0.825 /
0.817 / 0.830 / 0.817 / 0.799 / 0.616 (README, Benchmarks).

The head is fitted on the last feature map pooled by its generalised mean
(``pool_power`` p: ``mean(x ** p) ** (1 / p)`` per channel, "GeM", Radenovic
et al., TPAMI 2019), while training pools by the plain average (p = 1); the
exported encoder pools as its head was fitted. On five finished runs of the
default (four of 30 minutes, one of 12 epochs; bench/pooling.py, 2-core AVX2
CPU, the same weights pooled each way) p = 2 named 0 to 5 more val photos than
the average on every run (three seen-products runs: +5, +4, +3 of 296; two
unseen-products runs: +0 and +2 of the trained products' 229, +1 and +2 of the
enrolled products' 67), at 0.002-0.011 less mAP; p = 3 and 4 gained as much on
some runs and lost 4 photos on another; the maximum (p toward infinity) lost 6
on one run and 1-3 enrolled products' photos on both unseen runs, at 0.05-0.07
less mAP.

The head lives beside the run's weights as ``head.safetensors`` (with
``head.json``: what it was fitted on, the blend, the pooling power and the
sha256 of the ``best`` weights it belongs to); with a blend under 1 the file
also holds the blended backbone tensors (the trained stages'; the run's own
weights stay as trained). ``trainer.checkpoint.load_model`` applies it to the
best weights only when that sha256 matches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.bundle import sha256_file

__all__ = ["Whitening", "fit_whitening", "min_photos", "HEAD_WEIGHTS", "HEAD_INFO", "SHRINK",
           "fit_head", "DEFAULT_BLEND", "blend_backbone", "check_blend", "default_blend",
           "DEFAULT_POOL_POWER", "MAX_POOL_POWER", "check_pool_power", "default_pool_power"]

log = logging.getLogger(__name__)

HEAD_WEIGHTS = "head.safetensors"
HEAD_INFO = "head.json"
# Shrinkage of the within-class covariance toward a multiple of the identity.
# On the two default runs' features (val top-1): 0.5 and 0.8 within two val
# photos of each other at 128 and 256 dimensions; 0.1 up to 0.007 lower.
SHRINK = 0.5
# A covariance of D dimensions needs several times D photos to be estimated;
# below this the trained projection is kept.
PHOTOS_PER_DIM = 4
# Share of the fine-tuned backbone kept when the head is fitted, the rest
# being its ImageNet start (see the module's docstring for the sweep behind it).
DEFAULT_BLEND = 0.75
# Power of the generalised-mean pooling the head is fitted on (1 = the average
# the network trains with; see the module's docstring for the measurements).
DEFAULT_POOL_POWER = 2.0
MAX_POOL_POWER = 8.0


@dataclass(frozen=True)
class Whitening:
    """y = x @ weight.T + bias, as torch.nn.Linear stores it: weight (D, C), bias (D,)."""

    weight: np.ndarray
    bias: np.ndarray
    photos: int
    items: int


def min_photos(dim: int) -> int:
    return PHOTOS_PER_DIM * dim


def fit_whitening(features: np.ndarray, labels: np.ndarray, dim: int,
                  shrink: float = SHRINK) -> Whitening | None:
    """Fit PCA to ``dim`` then within-class whitening on ``features`` (N, C)
    with one label per row. None when there are too few photos (under
    ``min_photos(dim)``), fewer than two labels, or ``dim`` > C."""
    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    n, c = x.shape
    classes = np.unique(labels)
    if n < min_photos(dim) or len(classes) < 2 or dim > c:
        return None
    mu = x.mean(axis=0)
    xc = x - mu
    evals, evecs = np.linalg.eigh(xc.T @ xc / max(n - 1, 1))
    basis = evecs[:, np.argsort(evals)[::-1][:dim]]          # (C, dim)
    z = xc @ basis
    within = np.zeros((dim, dim))
    for k in classes:
        zk = z[labels == k]
        d = zk - zk.mean(axis=0)
        within += d.T @ d
    within /= n
    within = (1.0 - shrink) * within + shrink * (np.trace(within) / dim) * np.eye(dim)
    w_evals, w_evecs = np.linalg.eigh(within)
    proj = basis @ (w_evecs / np.sqrt(np.maximum(w_evals, 1e-12)))  # (C, dim)
    return Whitening(weight=proj.T.astype(np.float32), bias=(-mu @ proj).astype(np.float32),
                     photos=n, items=len(classes))


def default_blend(backbone: str) -> float:
    return DEFAULT_BLEND if backbone == "lite0" else 1.0


def default_pool_power(backbone: str) -> float:
    return DEFAULT_POOL_POWER if backbone == "lite0" else 1.0


def check_pool_power(power: float) -> None:
    from models.errors import ConfigError

    if not 1.0 <= power <= MAX_POOL_POWER:
        raise ConfigError(f"--pool-power must be from 1 (the average) to {MAX_POOL_POWER:g}, got {power}")


def check_blend(blend: float) -> None:
    from models.errors import ConfigError

    if not 0.0 <= blend <= 1.0:
        raise ConfigError(f"--blend must be from 0 to 1 (1 = the fine-tuned weights as trained), got {blend}")


def blend_backbone(encoder, blend: float) -> dict:
    """Move the encoder's backbone to ``blend`` x its fine-tuned weights +
    (1 - blend) x the ImageNet weights it started from, in place. Returns
    the tensors that changed (state-dict keys of the whole model), for the
    head file; frozen stages and BatchNorm counters come out as they were."""
    import torch

    from trainer.pretrained import load_lite0_state

    if blend == 1.0:
        return {}
    start = load_lite0_state()
    own = encoder.backbone.state_dict()
    changed = {}
    with torch.no_grad():
        for k, v in own.items():
            if not v.is_floating_point():
                continue
            mixed = blend * v + (1.0 - blend) * start[k].to(v.dtype)
            if not torch.equal(mixed, v):
                changed[k] = mixed
    encoder.backbone.load_state_dict({**own, **changed})
    return {f"encoder.backbone.{k}": v.contiguous() for k, v in changed.items()}


def fit_head(run_dir: Path, catalogue: str | Path | None = None, blend: float | None = None,
             pool_power: float | None = None) -> dict:
    """Fit the whitened head of a run on its catalogue's labelled photos (the
    run's own catalogue unless ``catalogue`` is given) and write
    ``head.safetensors`` + ``head.json``. A Lite0 backbone is first blended
    with its ImageNet start (``blend``, default DEFAULT_BLEND; 1 = as
    trained) and the blended tensors go into the head file too; the feature
    map is pooled by its generalised mean of power ``pool_power`` (default
    DEFAULT_POOL_POWER for Lite0, 1 = the average). Returns head.json's
    contents; with too few photos nothing is written and
    ``{"head": "projection", ...}`` says why."""
    import torch

    from models.catalogue import load_catalogue
    from trainer import checkpoint as ck

    run_dir = Path(run_dir)
    t0 = time.monotonic()
    _, net, train = ck.read_config(run_dir)
    source = catalogue if catalogue is not None else train.get("catalogue")
    if not source:
        raise ck.RunError(f"{run_dir}/config.json: no catalogue recorded; give one")
    blend = default_blend(net.backbone) if blend is None else float(blend)
    check_blend(blend)
    if blend != 1.0 and net.backbone != "lite0":
        raise ck.RunError(f"{run_dir}: --blend needs a pretrained backbone; this run's is {net.backbone}")
    pool_power = default_pool_power(net.backbone) if pool_power is None else float(pool_power)
    check_pool_power(pool_power)
    model, net, _ = ck.load_model(run_dir, "best", head=False)
    blended = blend_backbone(model.encoder, blend)
    model.encoder.pool_power = pool_power
    entries = [e for e in load_catalogue(source).entries if e.item_id is not None]
    feats, labels = _pooled_features(model.encoder, entries, net)
    w = fit_whitening(feats, labels, net.embedding_size)
    best = ck.weights_path(run_dir, "best")
    info = {"head": "projection" if w is None else "whitened", "catalogue": str(source),
            "photos": int(len(labels)), "items": int(len(np.unique(labels))),
            "dim": net.embedding_size, "shrink": SHRINK, "blend": blend, "pool_power": pool_power,
            "weights_sha256": sha256_file(best),
            "seconds": round(time.monotonic() - t0, 1)}
    for stale in (HEAD_WEIGHTS, HEAD_INFO):
        (run_dir / stale).unlink(missing_ok=True)
    if w is None:
        # the trained projection goes with the backbone and pooling it was trained on
        info["blend"], info["pool_power"] = 1.0, 1.0
        log.info("head: kept the trained projection (%d photos of %d items; whitening %d dimensions "
                 "needs %d)", info["photos"], info["items"], net.embedding_size,
                 min_photos(net.embedding_size))
        return info
    ck.save_weights(run_dir / HEAD_WEIGHTS, {"encoder.proj.weight": torch.from_numpy(w.weight),
                                             "encoder.proj.bias": torch.from_numpy(w.bias), **blended})
    ck.save_json(run_dir / HEAD_INFO, info)
    log.info("head: whitened on %d photos of %d items in %.0f s", info["photos"], info["items"],
             info["seconds"])
    return info


def _pooled_features(encoder, entries, net, pool=None) -> tuple[np.ndarray, np.ndarray]:
    """The vectors the projection sees (pooled backbone features), for every
    readable photo, preprocessed exactly as for the index; ``pool`` (feature
    map -> vectors) replaces ``encoder.pooled`` (bench/pooling.py)."""
    import torch

    from models.catalogue import iter_images
    from models.preprocess import preprocess

    encoder.eval()
    pool = pool or encoder.pooled
    feats, labels, batch, batch_labels = [], [], [], []

    def flush() -> None:
        if batch:
            with torch.no_grad():
                x = torch.from_numpy(np.stack(batch)).contiguous(memory_format=torch.channels_last)
                feats.append(pool(encoder.feature_map(x)).float().numpy())
            labels.extend(batch_labels)
            batch.clear()
            batch_labels.clear()

    for e, img in iter_images(entries):
        batch.append(preprocess(img, net.input))
        batch_labels.append(e.item_id)
        if len(batch) == 64:
            flush()
    flush()
    if not feats:
        return np.zeros((0, 0), np.float32), np.array([], dtype=object)
    return np.concatenate(feats), np.array(labels, dtype=object)
