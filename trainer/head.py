"""`trainer head RUN_DIR`: fit (or refit) a run's whitened head.

`trainer fit` does this itself at the end of a run (``--head whitened``, the
lite0 default); this command is for runs trained before it, for a catalogue
that gained photos, or after ``--head projection``. See trainer/whiten.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trainer.whiten import DEFAULT_BLEND, DEFAULT_POOL_POWER

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run folder written by `trainer fit`")
    p.add_argument("--catalogue", help="fit on this catalogue (folder tree or CSV) instead of the run's own")
    p.add_argument("--blend", type=float, metavar="SHARE",
                   help="lite0: fit on SHARE x the fine-tuned backbone + (1 - SHARE) x its ImageNet weights "
                        f"(1 = as trained; default {DEFAULT_BLEND})")
    p.add_argument("--pool-power", type=float, metavar="P",
                   help="fit on the feature map pooled by its generalised mean (mean of x**P)**(1/P); "
                        f"1 = the average that training uses (default lite0 {DEFAULT_POOL_POWER:g}, scratch 1)")


def run(args: argparse.Namespace) -> int:
    from trainer.memory import keep_freed_memory
    from trainer.whiten import fit_head

    keep_freed_memory()
    print(json.dumps(fit_head(args.run_dir, args.catalogue, blend=args.blend, pool_power=args.pool_power)))
    return 0
