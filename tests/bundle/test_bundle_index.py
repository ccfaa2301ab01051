"""`trainer index`: every readable catalogue image encoded through ONNX
Runtime, corrupt ones skipped and reported, the manifest lists every file."""

from __future__ import annotations

import shutil

import numpy as np

from models.bundle import MANIFEST, load_items, load_probes, read_manifest, verify_bundle


def test_manifest_lists_every_file_and_matches_contents(tiny_bundle):
    m = verify_bundle(tiny_bundle)
    on_disk = {p.name for p in tiny_bundle.iterdir()} - {MANIFEST}
    assert {a.name for a in m.artifacts} == on_disk
    kinds = {a.name: a.kind for a in m.artifacts}
    assert kinds["encoder.onnx"] == "encoder" and kinds["index.ann"] == "index"
    assert m.bundle_version == 1 and m.item_count == 4 and m.index.n_vectors == 12
    assert m.embedding_size == m.index.dim == 32 and m.input.size == 32
    assert m.encoder.run_id == "tiny-seed0" and m.encoder.opset == 17
    emb = np.load(tiny_bundle / "embeddings.npy", allow_pickle=False)
    assert emb.dtype == np.float32 and emb.shape == (12, 32)
    items = load_items(tiny_bundle)
    assert [i.item_id for i in items.items] == sorted(i.item_id for i in items.items)
    assert all(v.source.endswith(".jpg") for v in items.vectors)
    probes = load_probes(tiny_bundle).probes
    assert len(probes) == 12 and {p.item_id for p in probes} == {i.item_id for i in items.items}
    assert all(items.items[items.vectors[p.vector].item].item_id == p.item_id for p in probes)


def test_index_cli_skips_corrupt_images_and_bumps_version(tiny_bundle, tiny_catalogue, tmp_path,
                                                          capsys):
    from trainer.cli import main

    cat = shutil.copytree(tiny_catalogue, tmp_path / "cat")
    (cat / "Group0" / "Item-0" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    rc = main(["index", str(bundle), str(cat), "--trees", "5", "--probes", "3", "--no-progress",
               "--threshold", "0.9", "--exact-below", "0"])
    out = capsys.readouterr()
    assert rc == 0
    assert "broken.jpg" in out.out and "1 unreadable skipped" in out.out
    m = verify_bundle(bundle)
    assert m.bundle_version == 2 and m.index.n_vectors == 12 and m.index.n_trees == 5
    assert m.search.threshold == 0.9 and len(load_probes(bundle).probes) == 3
    assert not list(tmp_path.glob(".bundle*")), "staging folder left behind"
    assert read_manifest(bundle).encoder.sha256 == read_manifest(tiny_bundle).encoder.sha256
    # exact_below 0: `auto` measures exact vs Annoy on this machine at open.
    from edge_runtime.matcher import Matcher

    with Matcher.open(bundle) as m:
        assert set(m.search_report) == {"exact", "annoy", "annoy_rerank"}
        assert m.search_mode in m.search_report and m.self_test() == []
