"""Compare the match events a demo run received with the sample clip's ground truth.

    python -m deploy.demo_summary EVENTS.jsonl sample/clip.csv

An event is right when its top item is the product in view at its
``frame_index`` (the clip's ``start_frame..end_frame`` rows, inclusive); a
product is found when at least one right event falls in its range. Exit code 1
when no event arrived at all (the loop is broken), else 0: a wrong answer is a
model-quality fact to report, not a crash.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Truth:
    start: int
    end: int
    item_id: str


def read_truth(path: Path) -> list[Truth]:
    with path.open(newline="", encoding="utf-8") as f:
        return [Truth(int(r["start_frame"]), int(r["end_frame"]), r["item_id"])
                for r in csv.DictReader(f)]


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events, seen = [], set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("event_id") not in seen:
            seen.add(ev.get("event_id"))
            events.append(ev)
    return sorted(events, key=lambda e: e.get("frame_index", 0))


def top_item(ev: dict) -> str | None:
    matches = ev.get("matches") or []
    return matches[0].get("item_id") if matches and isinstance(matches[0], dict) else None


def in_view(truth: list[Truth], frame: int) -> Truth | None:
    return next((t for t in truth if t.start <= frame <= t.end), None)


def summarise(events: list[dict], truth: list[Truth]) -> tuple[list[str], int, int]:
    """Report lines, number of right events, number of products found."""
    lines = []
    right = 0
    found: set[int] = set()
    for ev in events:
        frame = int(ev.get("frame_index", -1))
        item = top_item(ev)
        t = in_view(truth, frame)
        ok = t is not None and t.item_id == item
        if ok:
            right += 1
            found.add(truth.index(t))
        score = (ev.get("matches") or [{}])[0].get("score")
        score_txt = f"{score:.3f}" if isinstance(score, (int, float)) else "?"
        where = f"in view: {t.item_id}" if t else "in view: nothing"
        lines.append(f"  frame {frame:5d}  {item}  score {score_txt}  "
                     f"{'RIGHT' if ok else 'WRONG'} ({where})")
    return lines, right, len(found)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("events", type=Path)
    ap.add_argument("truth", type=Path)
    ap.add_argument("--frames", type=int, default=None,
                    help="only the first N frames were played (products starting later are left out)")
    args = ap.parse_args(argv)
    truth = read_truth(args.truth)
    if args.frames is not None:
        truth = [t for t in truth if t.start < args.frames]
    events = read_events(args.events)
    lines, right, found = summarise(events, truth)
    print(f"ground truth: {len(truth)} products held up in {args.truth}")
    print(f"match events received: {len(events)}")
    print("\n".join(lines))
    if events:
        print(f"right events: {right}/{len(events)} (precision {right / len(events):.2f}); "
              f"products found: {found}/{len(truth)} (recall {found / len(truth):.2f})")
        return 0
    print("no match events arrived: see the runtime log above", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
