"""Verify a release in a separate process, off the frame path.

Checking a new bundle in full (the sha256 of every file, parsing and
validating items.json, comparing Annoy with the stored embeddings, encoding
a probe, measuring search modes) holds Python's GIL for tens of
milliseconds at a time; done in the kiosk's own process, beside the camera
loop, it delayed frames by up to 85 ms. So the updater runs it here, in a
child interpreter at a lower CPU priority, and the child hands back what
the kiosk needs to open the bundle cheaply (``matcher.VerifiedItems``): the
items, each vector's item, the search mode, and the manifest's sha256, which
the kiosk checks before it trusts the rest. The kiosk then opens the
encoder, memory-maps the index and runs the self-test itself, with the
backend it serves with.

The child also isolates a crash: a release that kills the verifier is a
rejected release, not a dead kiosk. It is killed when the update is
superseded or takes longer than ``update.verify_timeout_s``.

    python -m edge_runtime.update.verify BUNDLE_DIR   # header line, then binary payload

Output: one JSON line (``ok``, ``manifest_sha256``, counts, ``search_mode``,
or ``error``), then the vectors' item indices as little-endian int32, then
the item ids and names as UTF-8, NUL-separated.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edge_runtime.matcher import VerifiedItems
from edge_runtime.update.errors import Cancelled, Rejected
from edge_runtime.update.fetch import Cancel
from models.bundle import ENCODER, MANIFEST
from models.errors import KioskError

__all__ = ["verify_release"]

POLL_S = 0.25


def _child(root: Path) -> tuple[dict, bytes]:
    from edge_runtime.encoders.onnx_backend import OnnxEncoder
    from edge_runtime.matcher import Matcher
    from edge_runtime.overlay import find_overlay
    from models.bundle import read_manifest

    t = time.monotonic()
    m = read_manifest(root)
    # With the store's overlay: its photos get embedded (and cached) here,
    # not in the kiosk's process, when the encoder changes.
    matcher = Matcher.open(root, encoder=OnnxEncoder(root / ENCODER, m.input, m.embedding_size,
                                                     threads=1), overlay_dir=find_overlay(root))
    try:
        vec = np.ascontiguousarray(matcher.index.vec_item, dtype="<i4").tobytes()
        items = matcher.items[:matcher.n_base_items]
        text = "\0".join(s for pair in items for s in pair).encode("utf-8")
        header = {"ok": True, "manifest_sha256": hashlib.sha256((root / MANIFEST).read_bytes())
                  .hexdigest(), "n_items": len(items),
                  "n_vectors": int(matcher.index.n_vectors), "vec_bytes": len(vec),
                  "search_mode": matcher.search_mode, "search_report": matcher.search_report,
                  "seconds": round(time.monotonic() - t, 3)}
        return header, vec + text
    finally:
        matcher.close()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m edge_runtime.update.verify BUNDLE_DIR", file=sys.stderr)
        return 2
    try:
        os.nice(10)  # the camera loop comes first
    except OSError:
        pass
    try:
        header, payload = _child(Path(argv[0]))
    except (KioskError, OSError, ValueError) as exc:
        header, payload = {"ok": False, "error": str(exc)}, b""
    out = sys.stdout.buffer
    out.write(json.dumps(header).encode() + b"\n" + payload)
    out.flush()
    return 0 if header["ok"] else 1


def _parse(out: bytes) -> VerifiedItems:
    head, _, payload = out.partition(b"\n")
    h = json.loads(head)
    if not h.get("ok"):
        raise Rejected("self_test", f"verification failed: {h.get('error')}")
    vec = np.frombuffer(payload[:h["vec_bytes"]], dtype="<i4").astype(np.int64)
    words = payload[h["vec_bytes"]:].decode("utf-8").split("\0")
    items = list(zip(words[0::2], words[1::2], strict=True))
    if len(items) != h["n_items"] or len(vec) != h["n_vectors"]:
        raise Rejected("self_test", "verifier output is inconsistent")
    return VerifiedItems(h["manifest_sha256"], items, vec, h["search_mode"],
                         h.get("search_report") or {})


def verify_release(path: Path, *, timeout: float, cancel: Cancel | None = None) -> VerifiedItems:
    """Verify the bundle at ``path`` in a child process (see module docstring).
    Rejected("self_test") when it fails, crashes or runs past ``timeout``;
    Cancelled when ``cancel`` is set first."""
    import edge_runtime

    pkg_root = str(Path(edge_runtime.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.update.verify", str(path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    end = time.monotonic() + timeout
    try:
        while True:
            try:
                out, err = proc.communicate(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"{path}: verification cancelled") from None
                if time.monotonic() > end:
                    raise Rejected("self_test", f"{path}: verification took longer than "
                                   f"{timeout:g} s (update.verify_timeout_s)") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if proc.returncode not in (0, 1) or not out:
        tail = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise Rejected("self_test", f"{path}: verifier exited with status {proc.returncode}: "
                       f"{' | '.join(tail)}")
    try:
        return _parse(out)
    except Rejected:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise Rejected("self_test", f"{path}: unreadable verifier output ({exc})") from None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))
