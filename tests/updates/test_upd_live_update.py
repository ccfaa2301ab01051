"""A good signed update becomes active inside a running kiosk (real Mosquitto,
real HTTP, real pipeline on a looping clip) while it keeps publishing; the
retained status and `deploy status` show it; `deploy rollback` returns."""

from __future__ import annotations

import json

from support import Collector
from upd_harness import KioskUnderTest, Operator, asyncapi_validator, frame_folder

from deploy.cli import main as deploy_main
from models.bundle import read_manifest


def _tells_the_truth(status: dict, m, floor: int) -> None:
    """The retained status names exactly the release that serves."""
    assert (status["bundle_version"], status["encoder_sha256"], status["index_sha256"]) == (
        m.bundle_version, m.encoder.sha256, m.index.sha256), status
    assert status["backend"] == "onnxruntime" and "CPUExecutionProvider" in status["engine"]
    assert status["floor"] == floor


def test_signed_update_goes_live_without_stopping_the_loop(broker, store, site, tmp_path, capsys):
    v1, v2 = (read_manifest(site.root / n) for n in ("v1", "v2"))
    frames = frame_folder(site.catalogue, tmp_path / "frames")
    kiosk = KioskUnderTest(broker, store, [site.keys.pub], [site.base], frames=frames)
    op = Operator(broker)
    try:
        op.wait_match("k1", lambda m: m["bundle_version"] == 1)
        n_before = len(op.matches("k1"))
        # the operator's tool, exactly as documented
        rc = deploy_main(["push", "--kiosk", "k1", "--manifest-url", site.url("v2"),
                          "--broker", broker.url, "--wait", "30"])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "k1: active" in out
        cid = out.split("command ")[1].split(")")[0]
        op.wait_final(cid)  # our own subscriber may hear "active" a moment after deploy push
        states = [s["state"] for s in op.statuses(cid)]
        assert states == ["received", "verified", "downloading", "testing", "active"], states
        active = op.statuses(cid)[-1]
        assert active["bundle_version"] == 2 and active["previous_version"] == 1
        assert set(active["timings"]) >= {"download_s", "verify_s", "test_s", "swap_s"}
        # events keep coming, now from the new bundle
        op.wait_match("k1", lambda m: m["bundle_version"] == 2)
        assert kiosk.thread.is_alive()
        assert len(op.matches("k1")) > n_before
        assert kiosk.pipeline.current_matcher.manifest.bundle_version == 2
        assert kiosk.store.current_name().startswith("2-")
        # the retained status, as a newcomer sees it
        late = Collector(broker.port, ["kiosk/k1/status"])
        got = late.wait_for(lambda m: json.loads(m[1]).get("bundle_version") == 2, 5)
        late.close()
        assert got and got[-1][2], "retained status with bundle_version 2"
        status = json.loads(got[-1][1])
        assert status["last_update"]["state"] == "active" and status["groups"] == ["north"]
        _tells_the_truth(status, v2, floor=2)   # before: still v1's encoder and index hashes
        assert deploy_main(["status", "--broker", broker.url, "--wait", "1"]) == 0
        table = capsys.readouterr().out
        assert "k1" in table and "active v2" in table and "north" in table
        assert v2.encoder.sha256[:8] in table and v2.index.sha256[:8] in table
        # rollback to the previous bundle, still without stopping
        assert deploy_main(["rollback", "--kiosk", "k1", "--broker", broker.url]) == 0
        rcid = capsys.readouterr().out.split("command ")[1].split(")")[0]
        assert op.wait_final(rcid)["state"] == "rolled_back"
        assert kiosk.pipeline.current_matcher.manifest.bundle_version == 1
        assert kiosk.store.current_name().startswith("1-")
        n = len(op.matches("k1"))
        op.wait_match("k1", lambda m: m["bundle_version"] == 1 and
                      op.matches("k1").index(m) >= n)
        late = Collector(broker.port, ["kiosk/k1/status"])
        got = late.wait_for(lambda m: json.loads(m[1])["last_update"]["state"] == "rolled_back", 5)
        late.close()
        _tells_the_truth(json.loads(got[-1][1]), v1, floor=2)
        # the release rolled back from cannot come back: the floor holds
        # (before: "newer" meant newer than the active release, and v2 installed again)
        rc = deploy_main(["push", "--kiosk", "k1", "--manifest-url", site.url("v2"),
                          "--broker", broker.url, "--wait", "30"])
        out = capsys.readouterr().out
        assert rc == 2 and "k1: rejected (version_floor" in out, out
        assert kiosk.pipeline.current_matcher.manifest.bundle_version == 1
        # every update message that crossed the broker matches docs/asyncapi.yaml
        validate = asyncapi_validator()
        checked = 0
        for topic, payload, _ in list(op.collector.messages):
            if "/cmd/" in topic or topic.endswith(("/update/status", "/status")):
                validate(topic, json.loads(payload))
                checked += 1
        assert checked >= 8
    finally:
        op.close()
        kiosk.close()
