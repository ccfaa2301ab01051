"""The tiny bundle the bundle, runtime and update tests share (imports torch
inside the function, so the torch-free Python 3.10 check can import conftest)."""

from __future__ import annotations

from pathlib import Path


def make_tiny_bundle(root: Path, catalogue: Path, seed: int = 0) -> Path:
    """Seeded untrained encoder (width 8, depth 3, 32 px, 32-d; projection
    bias centred on the catalogue, see below) -> run folder
    -> `trainer export` -> `trainer index` on ``catalogue``; returns the bundle.
    Uses only the checkpoint format, not the trainer's fit code."""
    import torch

    from edge_runtime.encoders.onnx_backend import OnnxEncoder
    from models.catalogue import iter_images, load_catalogue
    from models.indexing import IndexParams, index_catalogue
    from models.netconfig import NetConfig
    from models.network import AutoEncoder
    from models.preprocess import PreprocessSpec, preprocess_batch
    from trainer.checkpoint import save_weights, write_config
    from trainer.export import export_run

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    net = NetConfig(width=8, depth=3, blocks_per_stage=1, embedding_size=32,
                    input=PreprocessSpec(size=32))
    run_dir = root / f"run-seed{seed}"
    run_dir.mkdir(parents=True)
    write_config(run_dir, f"tiny-seed{seed}", net, {"seed": seed})
    model = AutoEncoder(net).eval()
    # Data-dependent init, no training: centre the projection on the
    # catalogue's mean pooled feature (bias = -W mu). A random conv net's
    # pooled ReLU features share one big common direction, so without this
    # every cosine is ~0.999 and thresholds mean nothing.
    imgs = [img for _, img in iter_images(load_catalogue(catalogue).entries)]
    with torch.no_grad():
        x = torch.from_numpy(preprocess_batch(imgs, net.input))
        mu = model.encoder.feature_map(x).mean(dim=(2, 3)).mean(dim=0)
        model.encoder.proj.bias.copy_(-model.encoder.proj.weight @ mu)
    save_weights(run_dir / "best.safetensors", model.state_dict())
    bundle = root / f"bundle-seed{seed}"
    info = export_run(run_dir, bundle, check_images=catalogue)
    cat = load_catalogue(catalogue)
    enc = OnnxEncoder(bundle / "encoder.onnx", info.input, info.embedding_size, threads=1)
    index_catalogue(bundle, cat.entries, cat.names(), enc, IndexParams(n_trees=10, threshold=0.5),
                    root=cat.root, progress=False)
    enc.close()
    return bundle
