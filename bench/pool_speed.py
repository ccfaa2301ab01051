"""The view pool's build speed (Lite0's frozen stages on 64-photo batches at
224 px), with glibc malloc's defaults against trainer.memory.keep_freed_memory,
each in its own process, in turn, round after round; reports the median
ms per photo and the user/kernel CPU seconds of each.

    python bench/pool_speed.py --rounds 3 --batches 3

Writes bench/results/pool-speed-<time>.md/.json with the CPU's flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.retrieval import cpu_flags  # noqa: E402

CHILD = """
import json, resource, sys, time
import torch
from trainer.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else False
from models.lite0 import stage_blocks
from models.netconfig import LITE0_INPUT, NetConfig
from models.network import Lite0Encoder
bb = Lite0Encoder(NetConfig(backbone="lite0", input=LITE0_INPUT)).backbone
bb.freeze(stage_blocks(5))
bb.eval()
x = torch.randn(64, 3, 224, 224).contiguous(memory_format=torch.channels_last)
n = int(sys.argv[2])
with torch.no_grad():
    bb.frozen_part(x)
    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(n):
        bb.frozen_part(x)
    dt, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"kept": kept, "ms_per_photo": dt / (64 * n) * 1000, "user_s": r1.ru_utime - r0.ru_utime,
                  "sys_s": r1.ru_stime - r0.ru_stime, "minor_faults": r1.ru_minflt - r0.ru_minflt,
                  "peak_mib": r1.ru_maxrss / 1024}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=3, help="timed 64-photo batches per process")
    ap.add_argument("--results", type=Path, default=ROOT / "bench/results")
    a = ap.parse_args()
    runs: dict[str, list[dict]] = {"default": [], "kept": []}
    for r in range(a.rounds):
        for mode in runs:
            res = subprocess.run([sys.executable, "-c", CHILD, mode, str(a.batches)], cwd=ROOT,
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if res.returncode != 0:
                raise SystemExit(f"{mode}: {res.stderr[-2000:]}")
            runs[mode].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(r, mode, runs[mode][-1], flush=True)
    med = {m: {k: round(statistics.median(x[k] for x in v), 2)
               for k in ("ms_per_photo", "user_s", "sys_s", "minor_faults", "peak_mib")} for m, v in runs.items()}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    flags = ", ".join(k for k, v in cpu_flags().items() if v) or "unknown"
    result = {"time": stamp, "cpu_count": os.cpu_count(), "cpu_flags": cpu_flags(), "rounds": a.rounds,
              "batches": a.batches, "median": med, "runs": runs}
    lines = [f"Lite0 frozen stages (stem + 5 stages), 64 photos at 224 px, fp32, {a.batches} batches per process, "
             f"median of {a.rounds} rounds in turn; {os.cpu_count()} CPU cores (flags: {flags}).", "",
             "| malloc | ms/photo | user s | kernel s | minor faults | peak MiB |", "|---|---|---|---|---|---|"]
    for m, v in med.items():
        lines.append(f"| {'glibc defaults' if m == 'default' else 'keep_freed_memory()'} | {v['ms_per_photo']:.1f} | "
                     f"{v['user_s']:.1f} | {v['sys_s']:.1f} | {v['minor_faults']:.0f} | {v['peak_mib']:.0f} |")
    md = "\n".join(lines) + "\n"
    a.results.mkdir(parents=True, exist_ok=True)
    (a.results / f"pool-speed-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    (a.results / f"pool-speed-{stamp}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
