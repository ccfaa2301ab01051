"""Each bad update is rejected with a reason on update/status while the old
bundle keeps serving (real Mosquitto, real KioskMqtt, real HTTP server)."""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import datetime, timedelta, timezone

import pytest
from support import Broker, find_mosquitto, free_port
from upd_harness import KioskUnderTest, Operator
from upd_servers import HttpServer, Listener

from deploy.cli import main as deploy_main
from deploy.sign import sign_bundle
from edge_runtime.update.commands import make_rollback_command, make_update_command
from edge_runtime.update.errors import CATEGORIES
from edge_runtime.update.store import BundleStore
from models.bundle import read_manifest, sha256_file
from models.images import read_image
from models.signing import encode_signature, load_private_key, sign


@pytest.fixture(scope="module")
def rig(tmp_path_factory, site):
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    broker = Broker(tmp_path_factory.mktemp("rej-broker")).start()
    store = BundleStore(tmp_path_factory.mktemp("rej") / "store")
    store.init_from(site.root / "v1")
    slow, dead = HttpServer(site.root), free_port()   # a trickling mirror and one that is down
    kiosk = KioskUnderTest(broker, store, [site.keys.pub],
                           [site.base, f"{slow.base}/", f"http://127.0.0.1:{dead}/"], kiosk_id="k9")
    op = Operator(broker)
    op.broker_url, op.slow, op.dead = broker.url, slow, dead
    yield kiosk, op
    op.close()
    kiosk.close()
    slow.close()
    broker.stop()


def _reject(rig, url: str, sig: str, category: str, caplog=None, detail: str | None = None
            ) -> dict:
    """Send an update that must be refused: update/status carries the
    category and its fixed sentence, the local log the detail."""
    kiosk, op = rig
    cmd = make_update_command(url, sig)
    op.send("k9", "update", cmd)
    final = op.wait_final(cmd["command_id"])
    assert final["state"] == "rejected", final
    assert final["error"] == category, final
    if category in ("version_floor", "revoked", "incompatible", "expired"):
        assert final["reason"], final   # may name versions: signed or local facts
    else:
        assert final["reason"] == CATEGORIES[category], final
    if caplog is not None and detail is not None:
        logged = [r.getMessage() for r in caplog.records if cmd["command_id"] in r.getMessage()]
        assert any(re.search(detail, m) for m in logged), logged
        assert not re.search(detail, json.dumps(final)), final   # the detail stays local
    _still_serving_v1(kiosk)
    return final


def _still_serving_v1(kiosk) -> None:
    assert kiosk.pipeline.current_matcher is kiosk.first_matcher
    assert kiosk.store.current_name().startswith("1-")
    assert [n for n in kiosk.store.release_names() if not n.startswith("1-")] == []
    assert not any(kiosk.store.staging.iterdir())
    probe = kiosk.first_matcher.bundle_dir / "probe-000.jpg"
    assert kiosk.first_matcher.match_images([read_image(probe)])[0][0].score > 0.99


def test_flipped_byte_in_any_artifact(rig, site, caplog):
    for a in read_manifest(site.root / "v2").artifacts:
        d = site.copy("v2", f"flip-{a.name}")
        data = bytearray((d / a.name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (d / a.name).write_bytes(bytes(data))
        _reject(rig, site.url(d.name), site.sig("v2"), "artifact_mismatch", caplog,
                "sha256 .* does not match")


def test_bad_signature(rig, site):
    raw = bytearray(base64.b64decode(site.sig("v2")))
    raw[10] ^= 0x80
    _reject(rig, site.url("v2"), encode_signature(bytes(raw)), "signature")
    # the right signature over a manifest altered on the server
    d = site.copy("v2", "altered-manifest")
    (d / "manifest.json").write_bytes((d / "manifest.json").read_bytes().replace(b'"2', b'"3', 1))
    _reject(rig, site.url(d.name), site.sig("v2"), "signature")


def test_key_not_pinned(rig, site):
    d = site.copy("v2", "intruder")
    sign_bundle(d, site.keys.other_key)
    _reject(rig, site.url(d.name), site.sig(d.name), "signature")


def test_replayed_older_release(rig, site):
    final = _reject(rig, site.url("v1"), site.sig("v1"), "version_floor")
    assert final["reason"] == "release 1 is not newer than this kiosk's version floor 1"


def test_expired_manifest(rig, site):
    d = site.copy("v2", "expired")
    sign_bundle(d, site.keys.key, expires=datetime.now(timezone.utc) - timedelta(minutes=1))
    _reject(rig, site.url(d.name), site.sig(d.name), "expired")


def test_artifact_from_another_release(rig, site):
    d = site.copy("v2", "mixed")
    for name in ("index.ann", "items.json"):
        (d / name).write_bytes((site.root / "v3" / name).read_bytes())
    _reject(rig, site.url(d.name), site.sig("v2"), "artifact_mismatch")


def test_download_larger_than_declared(rig, site):
    d = site.copy("v2", "bigger")
    with open(d / "embeddings.npy", "ab") as f:
        f.write(b"\0" * 4096)
    _reject(rig, site.url(d.name), site.sig("v2"), "artifact_mismatch")


def test_artifact_name_with_a_path(rig, site):
    d = site.copy("v2", "pathname")
    doc = json.loads((d / "manifest.json").read_bytes())
    doc["artifacts"][-1]["name"] = "../v1/" + doc["artifacts"][-1]["name"]
    raw = json.dumps(doc, indent=2).encode()
    (d / "manifest.json").write_bytes(raw)
    sig = encode_signature(sign(load_private_key(site.keys.key), raw))  # validly signed
    _reject(rig, site.url(d.name), sig, "manifest_invalid")


def test_manifest_for_another_embedding_size(rig, site):
    final = _reject(rig, site.url("v2-dim32"), site.sig("v2-dim32"), "incompatible")
    assert "embedding size 32" in final["reason"]


def test_newer_runtime_required(rig, site):
    d = site.copy("v2", "newer-runtime")
    doc = json.loads((d / "manifest.json").read_bytes())
    doc["compatibility"]["min_runtime_version"] = "9.0.0"
    raw = json.dumps(doc).encode()
    (d / "manifest.json").write_bytes(raw)
    sig = encode_signature(sign(load_private_key(site.keys.key), raw))
    final = _reject(rig, site.url(d.name), sig, "incompatible")
    assert "needs runtime 9.0.0" in final["reason"]


def test_failed_self_test_is_rejected_and_release_removed(rig, site, caplog):
    d = site.copy("v2", "bad-probes")
    probes = json.loads((d / "probes.json").read_text())
    ids = [p["item_id"] for p in probes["probes"]]
    for p, wrong in zip(probes["probes"], ids[1:] + ids[:1], strict=True):
        p["item_id"], p["vector"] = wrong, None
    (d / "probes.json").write_text(json.dumps(probes))
    doc = json.loads((d / "manifest.json").read_bytes())
    for a in doc["artifacts"]:
        if a["name"] == "probes.json":
            a["size"], a["sha256"] = (d / "probes.json").stat().st_size, sha256_file(d / "probes.json")
    (d / "manifest.json").write_text(json.dumps(doc))
    sign_bundle(d, site.keys.key)
    _reject(rig, site.url(d.name), site.sig(d.name), "self_test", caplog, "self-test failed")


def test_network_failures_are_published_as_categories_only(rig, site, caplog):
    """A port scanner behind the firewall learns nothing from update/status."""
    final = _reject(rig, site.url("no-such-release"), site.sig("v2"), "manifest_unavailable",
                    caplog, "HTTP 404")
    assert "404" not in json.dumps(final) and "127.0.0.1" not in json.dumps(final)
    _, op = rig
    final = _reject(rig, f"http://127.0.0.1:{op.dead}/v2/manifest.json", site.sig("v2"),
                    "manifest_unavailable", caplog, "(?i)refused")
    assert "refused" not in json.dumps(final).lower() and str(op.dead) not in json.dumps(final)


def test_a_manifest_url_outside_the_mirrors_is_refused_at_the_door(rig, site):
    kiosk, op = rig
    outside = Listener()
    try:
        cmd = make_update_command(f"http://127.0.0.1:{outside.port}/v2/manifest.json",
                                  site.sig("v2"))
        op.send("k9", "update", cmd)
        final = op.wait_final(cmd["command_id"])
        assert (final["state"], final["error"]) == ("rejected", "url_refused")
        assert [s["state"] for s in op.statuses(cmd["command_id"])] == ["rejected"]  # not queued
        time.sleep(0.3)
        assert outside.accepted == 0
    finally:
        outside.close()
    _still_serving_v1(kiosk)


def test_malformed_commands_are_refused_at_the_door(rig, site):
    kiosk, op = rig
    for raw, where in [(b"\xff\xfe", None), (b"[]", None),
                       (b'{"schema": "kiosk.update/1", "command_id": "c-1"}', "c-1"),
                       (json.dumps({**make_update_command(site.url("v2"), site.sig("v2")),
                                    "command_id": "c-2", "manifest_url": "file:///etc/passwd"}
                                   ).encode(), "c-2")]:
        op.send("k9", "update", raw)
        if where is None:
            continue  # no id to wait on: checked below by the kiosk still serving
        final = op.wait_final(where)
        assert (final["state"], final["error"]) == ("rejected", "invalid_command"), final
    _still_serving_v1(kiosk)


def test_oversize_commands_never_reach_the_queue(rig, site):
    """Before the fix a payload was queued first and checked later: four junk
    payloads behind a slow update filled the queue and the rollback after
    them was dropped as "kiosk busy"."""
    kiosk, op = rig
    op.slow.trickle("encoder.onnx")
    try:
        upd = make_update_command(f"{op.slow.base}/site/v2/manifest.json", site.sig("v2"))
        op.send("k9", "update", upd)
        assert op.collector.wait_for(lambda m: b'"downloading"' in m[1], 10)
        junk = json.dumps({**make_rollback_command(), "pad": "x" * 9000}).encode()
        for _ in range(6):
            op.send("k9", "rollback", junk)
        marker = make_rollback_command()
        op.send("k9", "rollback", marker)
        final = op.wait_final(marker["command_id"])
        assert final["error"] == "no_previous", final   # handled, not dropped as busy
        assert op.wait_final(upd["command_id"])["error"] == "superseded"
    finally:
        op.slow.trickle()
    junk_answers = [json.loads(p) for t, p, _ in list(op.collector.messages)
                    if t.endswith("/update/status") and b"larger than" in p]
    assert len(junk_answers) == 6 and all(a["error"] == "invalid_command" for a in junk_answers)
    _still_serving_v1(kiosk)


def test_rollback_without_previous_is_rejected(rig):
    kiosk, op = rig
    cmd = make_rollback_command()
    op.send("k9", "rollback", cmd)
    final = op.wait_final(cmd["command_id"])
    assert (final["state"], final["error"]) == ("rejected", "no_previous")
    _still_serving_v1(kiosk)


def test_push_to_a_group_resolves_kiosks_from_retained_status(rig, site, capsys):
    kiosk, op = rig
    rc = deploy_main(["push", "--group", "north", "--manifest-url", site.url("v1"),
                      "--broker", op.broker_url, "--wait", "20"])
    captured = capsys.readouterr()
    assert rc == 2
    assert "k9: update sent" in captured.out and "k9: rejected" in captured.out
    assert "rejected the update" in captured.err
    rc = deploy_main(["push", "--group", "south", "--manifest-url", site.url("v1"),
                      "--broker", op.broker_url, "--timeout", "1"])
    assert rc == 2 and "no kiosk's retained status lists this group" in capsys.readouterr().err
    _still_serving_v1(kiosk)


def test_every_update_status_so_far_matches_the_asyncapi_schema(rig):
    from upd_harness import ASYNCAPI, asyncapi_validator

    validate = asyncapi_validator()
    _, op = rig
    seen = [(t, json.loads(p)) for t, p, _ in list(op.collector.messages)
            if t.endswith("/update/status")]
    assert len(seen) > 20
    for topic, payload in seen:
        validate(topic, payload)
    import yaml

    doc = yaml.safe_load(ASYNCAPI.read_text())
    enum = doc["components"]["schemas"]["UpdateStatus"]["properties"]["error"]["enum"]
    assert enum == list(CATEGORIES), "docs/asyncapi.yaml lists the categories of errors.py"


def test_a_redelivered_command_is_handled_once(rig, site):
    kiosk, op = rig
    cmd = make_update_command(site.url("v1"), site.sig("v1"))
    op.send("k9", "update", cmd)
    op.send("k9", "update", cmd)  # what a QoS 1 redelivery looks like
    op.wait_final(cmd["command_id"])
    marker = make_rollback_command()
    op.send("k9", "rollback", marker)  # the worker handles commands in order
    op.wait_final(marker["command_id"])
    assert [s["state"] for s in op.statuses(cmd["command_id"])] == ["received", "rejected"]
