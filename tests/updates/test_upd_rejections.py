"""Each bad update is rejected with a reason on update/status while the old
bundle keeps serving (real Mosquitto, real KioskMqtt, real HTTP server)."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from support import Broker, find_mosquitto
from upd_harness import KioskUnderTest, Operator

from deploy.cli import main as deploy_main
from deploy.sign import sign_bundle
from edge_runtime.update.commands import make_rollback_command, make_update_command
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
    kiosk = KioskUnderTest(broker, store, [site.keys.pub], kiosk_id="k9")
    op = Operator(broker)
    op.broker_url = broker.url
    yield kiosk, op
    op.close()
    kiosk.close()
    broker.stop()


def _reject(rig, url: str, sig: str, reason: str) -> dict:
    kiosk, op = rig
    cmd = make_update_command(url, sig)
    op.send("k9", "update", cmd)
    final = op.wait_final(cmd["command_id"])
    assert final["state"] == "rejected", final
    assert final["reason"], final
    assert re.search(reason, final["reason"]), final["reason"]
    _still_serving_v1(kiosk)
    return final


def _still_serving_v1(kiosk) -> None:
    assert kiosk.pipeline.current_matcher is kiosk.first_matcher
    assert kiosk.store.current_name().startswith("1-")
    assert [n for n in kiosk.store.release_names() if not n.startswith("1-")] == []
    assert not any(kiosk.store.staging.iterdir())
    probe = kiosk.first_matcher.bundle_dir / "probe-000.jpg"
    assert kiosk.first_matcher.match_images([read_image(probe)])[0][0].score > 0.99


def test_flipped_byte_in_any_artifact(rig, site):
    for a in read_manifest(site.root / "v2").artifacts:
        d = site.copy("v2", f"flip-{a.name}")
        data = bytearray((d / a.name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (d / a.name).write_bytes(bytes(data))
        _reject(rig, site.url(d.name), site.sig("v2"), "sha256 .* does not match")


def test_bad_signature(rig, site):
    raw = bytearray(base64.b64decode(site.sig("v2")))
    raw[10] ^= 0x80
    _reject(rig, site.url("v2"), encode_signature(bytes(raw)), "not signed by a pinned key")
    # the right signature over a manifest altered on the server
    d = site.copy("v2", "altered-manifest")
    (d / "manifest.json").write_bytes((d / "manifest.json").read_bytes().replace(b'"2', b'"3', 1))
    _reject(rig, site.url(d.name), site.sig("v2"), "not signed by a pinned key")


def test_key_not_pinned(rig, site):
    d = site.copy("v2", "intruder")
    sign_bundle(d, site.keys.other_key)
    _reject(rig, site.url(d.name), site.sig(d.name), "not signed by a pinned key")


def test_replayed_older_release(rig, site):
    _reject(rig, site.url("v1"), site.sig("v1"), r"release 1 is not newer than the active release 1")


def test_expired_manifest(rig, site):
    d = site.copy("v2", "expired")
    sign_bundle(d, site.keys.key, expires=datetime.now(timezone.utc) - timedelta(minutes=1))
    _reject(rig, site.url(d.name), site.sig(d.name), "expired at")


def test_artifact_from_another_release(rig, site):
    d = site.copy("v2", "mixed")
    for name in ("index.ann", "items.json"):
        (d / name).write_bytes((site.root / "v3" / name).read_bytes())
    _reject(rig, site.url(d.name), site.sig("v2"), "does not match|bytes received|declared")


def test_download_larger_than_declared(rig, site):
    d = site.copy("v2", "bigger")
    with open(d / "embeddings.npy", "ab") as f:
        f.write(b"\0" * 4096)
    _reject(rig, site.url(d.name), site.sig("v2"), "more than the .* declared|larger than")


def test_artifact_name_with_a_path(rig, site):
    d = site.copy("v2", "pathname")
    doc = json.loads((d / "manifest.json").read_bytes())
    doc["artifacts"][-1]["name"] = "../v1/" + doc["artifacts"][-1]["name"]
    raw = json.dumps(doc, indent=2).encode()
    (d / "manifest.json").write_bytes(raw)
    sig = encode_signature(sign(load_private_key(site.keys.key), raw))  # validly signed
    _reject(rig, site.url(d.name), sig, "path separator")


def test_manifest_for_another_embedding_size(rig, site):
    _reject(rig, site.url("v2-dim32"), site.sig("v2-dim32"), "embedding size 32")


def test_newer_runtime_required(rig, site):
    d = site.copy("v2", "newer-runtime")
    doc = json.loads((d / "manifest.json").read_bytes())
    doc["compatibility"]["min_runtime_version"] = "9.0.0"
    raw = json.dumps(doc).encode()
    (d / "manifest.json").write_bytes(raw)
    sig = encode_signature(sign(load_private_key(site.keys.key), raw))
    _reject(rig, site.url(d.name), sig, "needs runtime 9.0.0")


def test_failed_self_test_is_rejected_and_release_removed(rig, site):
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
    _reject(rig, site.url(d.name), site.sig(d.name), "self-test failed")


def test_unreachable_manifest_and_malformed_commands(rig, site):
    _reject(rig, site.url("no-such-release"), site.sig("v2"), "HTTP 404")
    kiosk, op = rig
    for raw, reason in [(b"\xff\xfe", "not UTF-8"), (b"[]", "not a JSON object"),
                        (b'{"schema": "kiosk.update/1", "command_id": "c-1"}', "invalid at"),
                        (json.dumps({**make_update_command(site.url("v2"), site.sig("v2")),
                                     "command_id": "c-2", "manifest_url": "file:///etc/passwd"}
                                    ).encode(), "manifest_url")]:
        op.send("k9", "update", raw)
        cid = "c-2" if b"c-2" in raw else ("c-1" if b"c-1" in raw else None)
        if cid is None:
            continue  # no id to wait on: checked below by the kiosk still serving
        final = op.wait_final(cid)
        assert final["state"] == "rejected" and reason in final["reason"], final
    _still_serving_v1(kiosk)


def test_rollback_without_previous_is_rejected(rig):
    kiosk, op = rig
    cmd = make_rollback_command()
    op.send("k9", "rollback", cmd)
    final = op.wait_final(cmd["command_id"])
    assert final["state"] == "rejected" and "no previous bundle" in final["reason"]
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
    from upd_harness import asyncapi_validator

    validate = asyncapi_validator()
    _, op = rig
    seen = [(t, json.loads(p)) for t, p, _ in list(op.collector.messages)
            if t.endswith("/update/status")]
    assert len(seen) > 20
    for topic, payload in seen:
        validate(topic, payload)


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
