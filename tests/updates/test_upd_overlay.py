"""Enrolment on the kiosk joins the fleet instead of forking it: the photos
go into the store's overlay, the release keeps its fleet version, the fleet's
next release installs, and the overlay is re-applied to it (re-encoded with
the new encoder by the verifier process), to a rollback, and at a restart."""

from __future__ import annotations

import json

from support import Collector, make_product_photos
from upd_harness import KioskUnderTest, Operator, asyncapi_validator

from edge_runtime.cli import main as runtime_main
from edge_runtime.matcher import Matcher
from edge_runtime.overlay import find_overlay
from edge_runtime.update.commands import make_rollback_command, make_update_command
from models.bundle import read_manifest, verify_bundle
from models.images import read_image


def _best(matcher, photo) -> tuple[str, float]:
    top = matcher.match_images([read_image(photo)], top_k=1)[0][0]
    return top.item_id, top.score


def test_local_enrolment_survives_the_next_fleet_release(broker, store, site, tmp_path, capsys):
    local = make_product_photos(tmp_path / "local", n_items=1, per_item=3, seed=42)
    folder = next(p for p in local.rglob("*") if p.is_dir() and list(p.glob("*.jpg")))
    photo = sorted(folder.glob("*.jpg"))[0]
    v1_name = store.current_name()
    assert runtime_main(["enroll", str(store.root), str(folder), "--item-id", "Local/Special",
                         "--no-progress"]) == 0
    assert "release 1 unchanged" in capsys.readouterr().out
    # Before: the enrolled bundle became release 2 (unsigned) and the fleet's
    # release 2 was then refused as "not newer than the active release 2".
    assert store.current_name() == v1_name and verify_bundle(store.current_path()).bundle_version == 1
    kiosk = KioskUnderTest(broker, store, [site.keys.pub], [site.base], kiosk_id="ov")
    op = Operator(broker)
    try:
        assert _best(kiosk.pipeline.current_matcher, photo) == ("Local/Special", 1.0)
        cmd = make_update_command(site.url("v2"), site.sig("v2"))
        op.send("ov", "update", cmd)
        assert op.wait_final(cmd["command_id"], 60)["state"] == "active"
        now = kiosk.pipeline.current_matcher
        v2 = read_manifest(site.root / "v2")
        assert now.manifest.bundle_version == 2 and now.manifest.encoder.sha256 == v2.encoder.sha256
        item, score = _best(now, photo)                    # re-applied with v2's encoder
        assert item == "Local/Special" and score > 0.999
        overlay = find_overlay(store.current_path())
        assert (overlay / f"embeddings-{v2.encoder.sha256[:16]}.npy").is_file()
        late = Collector(broker.port, ["kiosk/ov/status"])
        got = late.wait_for(lambda m: json.loads(m[1]).get("bundle_version") == 2, 5)
        late.close()
        assert json.loads(got[-1][1])["overlay"] == {"items": 1, "vectors": 3}
        asyncapi_validator()("kiosk/ov/status", json.loads(got[-1][1]))
        rb = make_rollback_command()
        op.send("ov", "rollback", rb)
        assert op.wait_final(rb["command_id"], 60)["state"] == "rolled_back"
        assert _best(kiosk.pipeline.current_matcher, photo)[0] == "Local/Special"
    finally:
        op.close()
        kiosk.close()
    # what a restart opens: the active release plus the overlay
    with Matcher.open(store.current_path(), overlay_dir=find_overlay(store.current_path())) as m:
        assert _best(m, photo)[0] == "Local/Special"
        assert m.self_test() == []                          # the release's own probes, untouched
