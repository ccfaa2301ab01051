"""A kiosk for the update tests: the real KioskMqtt on a real Mosquitto, the
real Pipeline and Matcher (optionally running on a looping folder of frames),
the real Updater and store; plus an operator client that sends commands and
waits for the kiosk's answer on update/status."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

from support import Collector

from edge_runtime.config import MqttConfig
from edge_runtime.decision import Decider, DecisionParams
from edge_runtime.matcher import Matcher
from edge_runtime.mqtt import KioskMqtt
from edge_runtime.overlay import find_overlay
from edge_runtime.pipeline import Pipeline, PipelineOptions
from edge_runtime.sources import CaptureSource, ImageFolderCapture
from edge_runtime.update.config import UpdateConfig
from edge_runtime.update.store import BundleStore
from edge_runtime.update.updater import Updater

FINAL = ("active", "rejected", "rolled_back", "revoked")
ASYNCAPI = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


def asyncapi_validator():
    """validate(topic, payload) against the channel's payload schema in docs/asyncapi.yaml."""
    import re

    import jsonschema
    import yaml

    doc = yaml.safe_load(ASYNCAPI.read_text())
    channels = []
    for name, ch in doc["channels"].items():
        op = ch.get("subscribe") or ch.get("publish")
        msg = doc["components"]["messages"][op["message"]["$ref"].rsplit("/", 1)[-1]]
        pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(name)) + "$"
        channels.append((re.compile(pattern), msg["payload"]["$ref"]))

    def validate(topic: str, payload: dict) -> None:
        ref = next((r for rx, r in channels if rx.match(topic)), None)
        assert ref is not None, f"{topic} is not described in {ASYNCAPI.name}"
        jsonschema.Draft7Validator({**doc, "$ref": ref}).validate(payload)

    return validate


def frame_folder(catalogue: Path, out: Path, repeat: int = 6) -> Path:
    """A 'clip' as a folder: each item's photos held in view for a while."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for photo in sorted(catalogue.rglob("*.jpg")):
        for _ in range(repeat):
            shutil.copyfile(photo, out / f"f{n:05d}.jpg")
            n += 1
    return out


class KioskUnderTest:
    def __init__(self, broker, store: BundleStore, pub_keys: list[Path], mirrors: list[str],
                 kiosk_id: str = "k1", frames: Path | None = None,
                 groups: tuple[str, ...] = ("north",), runtime_version: str = "0.1.0",
                 **update: object) -> None:
        self.kiosk_id = kiosk_id
        self.store = store
        self.cfg = UpdateConfig(enabled=True, store_dir=store.root, trusted_keys=pub_keys,
                                mirrors=mirrors, download_timeout_s=5.0, groups=list(groups),
                                **update)
        self.mqtt = KioskMqtt(MqttConfig(host="127.0.0.1", port=broker.port), kiosk_id)
        assert self.mqtt.start(wait_s=10)
        self.first_matcher = Matcher.open(store.current_path(),
                                          overlay_dir=find_overlay(store.current_path()))
        self.source = None
        if frames is not None:
            self.source = CaptureSource(lambda: ImageFolderCapture(frames, 30.0), live=False,
                                        realtime=True, loop=True, name="frames")
        self.pipeline = Pipeline(
            self.source, self.first_matcher,
            Decider(DecisionParams(threshold=0.5, margin=0.0, window=3, min_frames=2,
                                   cooldown_s=0.2)),
            self.mqtt, PipelineOptions(kiosk_id=kiosk_id, camera_id="cam0", max_batch=1))
        self.updater = Updater(store, self.mqtt, self.pipeline, self.cfg, runtime_version)
        self.updater.start()
        self.stop_event = threading.Event()
        self.thread = None
        if self.source is not None:
            self.source.start()
            self.thread = threading.Thread(target=self.pipeline.run, args=(self.stop_event,),
                                           daemon=True)
            self.thread.start()

    def close(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(5)
        if self.source is not None:
            self.source.stop()
        self.updater.stop()
        self.mqtt.stop(timeout=2)
        self.pipeline.current_matcher.close()


class Operator:
    """Sends commands like `deploy push` does and collects the kiosks' answers."""

    def __init__(self, broker, topics: tuple[str, ...] = ("kiosk/+/update/status", "kiosk/+/match",
                                                          "kiosk/+/cmd/#", "kiosk/+/status")
                 ) -> None:
        self.collector = Collector(broker.port, list(topics))

    def send(self, kiosk: str, name: str, payload: dict | bytes) -> None:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.collector.client.publish(f"kiosk/{kiosk}/cmd/{name}", raw, qos=1).wait_for_publish(5)

    def statuses(self, command_id: str | None) -> list[dict]:
        out = []
        for topic, payload, _ in list(self.collector.messages):
            if topic.endswith("/update/status"):
                body = json.loads(payload)
                if body.get("command_id") == command_id:
                    out.append(body)
        return out

    def wait_final(self, command_id: str | None, timeout: float = 20.0) -> dict:
        def final(m):
            if not m[0].endswith("/update/status"):
                return False
            body = json.loads(m[1])
            return body.get("command_id") == command_id and body.get("state") in FINAL
        found = self.collector.wait_for(final, timeout)
        assert found, f"no final update/status for {command_id}: {self.statuses(command_id)}"
        return json.loads(found[-1][1])

    def matches(self, kiosk: str) -> list[dict]:
        return [json.loads(p) for p in self.collector.on(f"kiosk/{kiosk}/match")]

    def wait_match(self, kiosk: str, predicate, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.matches(kiosk) if predicate(m)]
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"no match event on kiosk/{kiosk}/match satisfying the condition "
                             f"({len(self.matches(kiosk))} events seen)")

    def close(self) -> None:
        self.collector.close()
