"""Run one real update in a fresh interpreter with pickle booby-trapped, then
report what was imported. With a 6th argument ``trap-verify``, the full
verification of a bundle (hashing every file, parsing items.json) is also
booby-trapped once the first bundle is open: an update must then do that
work in another process. Used by test_upd_isolation.py."""

from __future__ import annotations

import json
import pickle
import sys
import time

CALLS: list[str] = []


def _trap(name):
    def boom(*args, **kwargs):
        CALLS.append(name)
        raise RuntimeError(f"pickle.{name} called on the update path")
    return boom


for _name in ("load", "loads", "Unpickler"):
    setattr(pickle, _name, _trap(_name))
sys.addaudithook(lambda event, args: CALLS.append(event) if event.startswith("pickle.") else None)


def main() -> None:
    port, store_root, pub, url, sig = sys.argv[1:6]
    trap_verify = sys.argv[6:] == ["trap-verify"]
    from edge_runtime.config import MqttConfig
    from edge_runtime.decision import Decider, DecisionParams
    from edge_runtime.matcher import Matcher
    from edge_runtime.mqtt import KioskMqtt
    from edge_runtime.pipeline import Pipeline, PipelineOptions
    from edge_runtime.update.commands import make_update_command
    from edge_runtime.update.config import UpdateConfig
    from edge_runtime.update.store import BundleStore, resolve_bundle
    from edge_runtime.update.updater import Updater

    store = BundleStore(store_root)
    mqtt = KioskMqtt(MqttConfig(host="127.0.0.1", port=int(port)), "iso")
    mqtt.start(wait_s=10)
    pipeline = Pipeline(None, Matcher.open(resolve_bundle(store_root)), Decider(DecisionParams()),
                        mqtt, PipelineOptions(kiosk_id="iso", camera_id="cam0"))
    if trap_verify:   # from here on, full verification in this process is an error
        import edge_runtime.matcher
        import edge_runtime.update.store
        import models.bundle

        for module in (models.bundle, edge_runtime.matcher, edge_runtime.update.store):
            for name in ("verify_bundle_items", "verify_bundle", "load_items", "sha256_file"):
                if hasattr(module, name):
                    setattr(module, name, _trap(name))
    cfg = UpdateConfig(enabled=True, store_dir=store_root, trusted_keys=[pub],
                       mirrors=[url.rsplit("/", 2)[0] + "/"])
    updater = Updater(store, mqtt, pipeline, cfg, "0.1.0")
    updater.start()
    updater._submit("update", json.dumps(make_update_command(url, sig)).encode())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "last_update" not in mqtt.status:
        time.sleep(0.05)
    updater.stop()
    mqtt.stop(timeout=2)
    print(json.dumps({"last_update": mqtt.status.get("last_update"),
                      "active": pipeline.current_matcher.manifest.bundle_version,
                      "pickle_calls": CALLS, "modules": sorted(sys.modules)}))


if __name__ == "__main__":
    main()
