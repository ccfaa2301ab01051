"""Enrolment without retraining: new photos encoded by the bundle's own
encoder, index rebuilt into a new folder swapped in atomically."""

from __future__ import annotations

import json
import shutil

from support import make_product_photos
from test_bundle_match import run_cli

from edge_runtime.matcher import Matcher
from models.bundle import load_items, verify_bundle
from models.images import read_image


def test_enrolled_item_is_found_from_photos_not_enrolled(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    # A fifth product, 6 views; 3 enrolled, 3 held out. The fixture encoder is
    # untrained, so views of one synthetic product only cluster for some
    # generator seeds (17 of 20 do); seed 13 is one of them (fixed, deterministic).
    photos = make_product_photos(tmp_path / "new", n_items=5, per_item=6, seed=13)
    new_item = photos / "Group0" / "Item-4"
    enrol_dir = tmp_path / "Oat-Milk"
    enrol_dir.mkdir()
    held_out = []
    for k, p in enumerate(sorted(new_item.glob("*.jpg"))):
        if k < 3:
            shutil.copy(p, enrol_dir / p.name)
        else:
            held_out.append(p)
    (enrol_dir / "corrupt.jpg").write_bytes(b"junk")

    old = Matcher.open(bundle)  # maps the current index.ann
    index_inode = (bundle / "index.ann").stat().st_ino
    r = run_cli("enroll", str(bundle), str(enrol_dir), "--name", "Oat milk", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "enrolled 3 photos (1 new items)" in r.stdout and "corrupt.jpg" in r.stdout

    m = verify_bundle(bundle)
    assert m.bundle_version == 2 and m.item_count == 5 and m.index.n_vectors == 15
    assert (bundle / "index.ann").stat().st_ino != index_inode  # a new file, not rewritten
    assert not list(tmp_path.glob(".bundle*")), "staging folder left behind"
    assert {"item_id": "Oat-Milk", "name": "Oat milk"} in [
        i.model_dump() for i in load_items(bundle).items]
    # The matcher opened before the swap still answers from the old files.
    assert old.match_images([read_image(held_out[0])], 1)[0][0].item_id != "Oat-Milk"
    old.close()

    with Matcher.open(bundle) as new:
        assert new.self_test() == []
        for res in new.match_images([read_image(p) for p in held_out], top_k=1):
            assert res[0].item_id == "Oat-Milk", res


def test_trainer_enroll_adds_photos_to_a_known_item_into_a_new_folder(tiny_bundle,
                                                                      tiny_catalogue, tmp_path,
                                                                      capsys):
    from trainer.cli import main

    extra = tmp_path / "more"
    shutil.copytree(tiny_catalogue / "Group0" / "Item-2", extra)
    out = tmp_path / "bigger"
    rc = main(["enroll", str(tiny_bundle), str(extra), "--item-id", "Group0/Item-2",
               "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    m = verify_bundle(out)
    assert m.bundle_version == 2 and m.item_count == 4 and m.index.n_vectors == 15
    assert verify_bundle(tiny_bundle).bundle_version == 1  # original untouched
    items = load_items(out)
    assert sum(items.items[v.item].item_id == "Group0/Item-2" for v in items.vectors) == 6


def test_enroll_errors_are_one_line(tiny_bundle, tmp_path):
    empty = tmp_path / "Empty"
    empty.mkdir()
    r = run_cli("enroll", str(tiny_bundle), str(empty))
    assert r.returncode == 2 and "Empty: no images in item folder" in r.stderr
    assert "Traceback" not in r.stderr


def test_enroll_on_a_bundle_store_writes_the_local_overlay(tiny_bundle, tiny_catalogue, tmp_path):
    """The kiosk's enrolment leaves its releases alone (no new version: the
    fleet's next release must still install) and lands in the overlay."""
    from edge_runtime.update.store import BundleStore

    store = BundleStore(tmp_path / "store")
    first = store.init_from(tiny_bundle)
    extra = shutil.copytree(tiny_catalogue / "Group1" / "Item-3", tmp_path / "Item-3")
    code = ("from edge_runtime.cli import main; rc = main(); "
            "print('torch imported' if 'torch' in sys.modules else 'no torch'); sys.exit(rc)")
    r = run_cli("enroll", str(tmp_path / "store"), str(extra), "--item-id", "Local/Item-3",
                "--name", "Local special", "--no-progress", code=code)
    assert r.returncode == 0, r.stderr
    assert "release 1 unchanged" in r.stdout and "1 items, 3 photos" in r.stdout
    assert r.stdout.strip().endswith("no torch")  # the device's enrolment is torch-free
    assert store.current_path() == first and verify_bundle(first).bundle_version == 1
    assert store.release_names() == [first.name]
    assert (tmp_path / "store" / "overlay" / "overlay.json").is_file()
    r = run_cli("match", str(tmp_path / "store"), str(next(extra.glob("*.jpg"))), "--json")
    assert r.returncode == 0, r.stderr
    found = {m["item_id"]: m for m in json.loads(r.stdout)["matches"]}
    assert found["Local/Item-3"]["score"] > 0.999 and found["Local/Item-3"]["name"] == "Local special"
    r = run_cli("enroll", str(tmp_path / "store"), "--clear-overlay")
    assert r.returncode == 0 and "removed" in r.stdout
    assert not (tmp_path / "store" / "overlay").exists()
