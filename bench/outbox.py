"""Benchmark: the kiosk's outbox on this machine's disk.

1. The queue alone: ``put`` (what the frame loop pays per event) and
   ``sync`` + ``head`` + ``remove`` (what the publisher pays around one
   PUBACK), for the SQLite outbox with ``sync = "full"`` (the WAL fsynced
   before each send: survives a power cut) and ``"normal"`` (survives a crash
   of the process), and for memory.
2. End to end through a real Mosquitto on loopback: ``KioskMqtt`` publishing
   match-sized events as fast as it can, each stored, sent, acknowledged and
   removed (messages/s), and the same burst queued while the broker is down
   then drained after it comes back.

    python bench/outbox.py [--messages 2000] [--dir DIR]   # DIR: the disk to measure
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support import Broker  # noqa: E402

from edge_runtime.config import MqttConfig  # noqa: E402
from edge_runtime.mqtt import KioskMqtt  # noqa: E402
from edge_runtime.outbox import MemoryOutbox, SqliteOutbox  # noqa: E402

EVENT = {"schema": "kiosk.match/1", "event_id": "3f2c1d9e-8a7b-4c6d-9e0f-1a2b3c4d5e6f",
         "kiosk_id": "kiosk-01", "camera_id": "cam0", "ts": "2026-11-29T08:00:00.123Z",
         "frame_index": 1234, "source_ts": 41.133, "latency_ms": 12.5,
         "item_id": "Fruit/Apple/Granny-Smith",
         "matches": [{"item_id": f"Fruit/Apple/Item-{i}", "name": f"Item-{i}", "score": 0.9,
                      "rank": i + 1} for i in range(5)],
         "bundle_version": 3, "encoder_sha256": "0" * 64, "backend": "onnxruntime",
         "votes": 5, "held_s": 0.167}


def queue_alone(make, n: int) -> dict:
    """Per message: ``put`` (the frame loop's cost), then ``sync`` + ``head``
    + ``remove`` (the publisher's cost around one PUBACK)."""
    box = make()
    payload = json.dumps(EVENT).encode()
    put, pub = [], []
    for _ in range(n):
        t = time.perf_counter()
        box.put("kiosk/kiosk-01/match", payload, 1)
        t1 = time.perf_counter()
        box.sync()
        box.remove(box.head().id)
        put.append(t1 - t)
        pub.append(time.perf_counter() - t1)
    box.close()

    def p99(xs: list[float]) -> float:
        return 1000 * sorted(xs)[int(0.99 * len(xs))]

    return {"put_ms_median": 1000 * statistics.median(put), "put_ms_p99": p99(put),
            "pub_ms_median": 1000 * statistics.median(pub), "pub_ms_p99": p99(pub),
            "per_s": n / (sum(put) + sum(pub))}


def through_broker(work: Path, box, n: int, outage: bool) -> float:
    broker = Broker(work / f"broker-{time.monotonic_ns()}").start()
    mq = KioskMqtt(MqttConfig(host="127.0.0.1", port=broker.port, queue_max=n + 10), "bench",
                   outbox=box)
    try:
        assert mq.start(wait_s=10)
        if outage:
            broker.stop()
            while mq.connected:
                time.sleep(0.01)
            for _ in range(n):
                mq.publish_json("match", EVENT)
            broker.start()
        t = time.perf_counter()
        if not outage:
            for _ in range(n):
                mq.publish_json("match", EVENT)
        while mq.queue_depth:
            time.sleep(0.005)
        return n / (time.perf_counter() - t)
    finally:
        mq.stop(5)
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=None, help="folder on the disk to measure "
                    "(default: a temporary folder beside this repository)")
    args = ap.parse_args()
    n = args.messages
    with tempfile.TemporaryDirectory(dir=args.dir or REPO) as tmp:
        work = Path(tmp)
        files = itertools.count()

        def sqlite(sync: str):
            return lambda: SqliteOutbox(work / f"o{next(files)}.sqlite", n + 10, 1 << 30, sync)

        makers = {"sqlite full": sqlite("full"), "sqlite normal": sqlite("normal"),
                  "memory": lambda: MemoryOutbox(n + 10, 1 << 30)}
        print(f"{n} match-sized events ({len(json.dumps(EVENT))} bytes); disk of {work}")
        print("| outbox | put ms p50 / p99 (frame loop) | sync+remove ms p50 / p99 (publisher) "
              "| msg/s, queue alone | msg/s through the broker | msg/s draining after an outage |")
        print("|---|---|---|---|---|---|")
        for name, make in makers.items():
            q = queue_alone(make, n)
            live = through_broker(work, make(), n, outage=False)
            drain = through_broker(work, make(), n, outage=True)
            print(f"| {name} | {q['put_ms_median']:.3f} / {q['put_ms_p99']:.3f} | "
                  f"{q['pub_ms_median']:.3f} / {q['pub_ms_p99']:.3f} | {q['per_s']:.0f} | "
                  f"{live:.0f} | {drain:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
