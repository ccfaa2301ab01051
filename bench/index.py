"""Index benchmark: Annoy vs exact BLAS search vs hnswlib, side by side.

    python bench/index.py                       # synthetic 10k and 100k x 128
    python bench/index.py --sizes 10000 100000 1000000
    python bench/index.py --bundle BUNDLE --queries CATALOGUE   # + a real bundle

For each data set: exact cosine search (one BLAS matrix-vector product over the
memory-mapped embeddings.npy, as edge_runtime.search does), Annoy at several
(n_trees, search_k), Annoy candidates re-ranked by exact cosine, and hnswlib
at several ef. Reported: recall@1 and recall@10 against the exact answer,
median and p99 single-query latency, build time, file size, load time
(memory-mapped vs prefault). With a bundle and labelled queries also the top-1
item accuracy. One query at a time on one thread (a kiosk searches one frame
at a time; the machine is shared). Results: bench/results/index.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_runtime.search import exact_topk  # noqa: E402

K = 10
TARGET = 0.95


def synthetic(n: int, dim: int, n_queries: int, seed: int = 0, per_item: int = 30,
              items_per_category: int = 20, tau: float = 1.0, sigma: float = 0.7
              ) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchically clustered unit vectors, like a product catalogue:
    categories of ~20 items (item centres at pairwise cos ~1/(1+tau^2) inside
    a category), ~30 photos per item (pairwise cos ~1/(1+sigma^2) per item).
    Queries are fresh photos of random items."""
    rng = np.random.default_rng(seed)

    def unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def jitter(centres: np.ndarray, scale: float) -> np.ndarray:
        return unit(centres + scale * rng.normal(size=centres.shape).astype(np.float32) / np.sqrt(dim))

    n_items = max(1, n // per_item)
    cats = unit(rng.normal(size=(max(1, n_items // items_per_category), dim)))
    items = jitter(cats[rng.integers(0, len(cats), n_items)], tau)
    return (jitter(items[rng.integers(0, n_items, n)], sigma),
            jitter(items[rng.integers(0, n_items, n_queries)], sigma))


def _lat(fn, queries: np.ndarray) -> tuple[list, float, float]:
    out, times = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        times.append((time.perf_counter() - t) * 1e3)
    return out, float(np.median(times)), float(np.percentile(times, 99))


LABELS: dict = {}  # set for a labelled bundle data set: vec_item, labels


def _recall(got: list[np.ndarray], truth: np.ndarray) -> tuple[float, float]:
    r1 = np.mean([len(g) > 0 and g[0] == t[0] for g, t in zip(got, truth, strict=True)])
    r10 = np.mean([len(set(g[:K]) & set(t[:K])) / K for g, t in zip(got, truth, strict=True)])
    return float(r1), float(r10)


def _row(method: str, params: str, got: list, med: float, p99: float, truth: np.ndarray,
         **extra) -> dict:
    r1, r10 = _recall(got, truth)
    row = {"method": method, "params": params, "recall@1": r1, "recall@10": r10,
           "median_ms": med, "p99_ms": p99, **extra}
    if LABELS:
        vi, labels = LABELS["vec_item"], LABELS["labels"]
        row["top1_item_acc"] = float(np.mean([len(g) > 0 and vi[int(g[0])] == y
                                              for g, y in zip(got, labels, strict=True)]))
    return row


def bench_exact(emb_path: Path, queries: np.ndarray, truth: np.ndarray) -> dict:
    t = time.perf_counter()
    emb = np.load(emb_path, mmap_mode="r")
    load_ms = (time.perf_counter() - t) * 1e3
    exact_topk(emb, queries[:2], K)  # touch the pages once (warm, as the matcher does)
    got, med, p99 = _lat(lambda q: exact_topk(emb, q[None], K)[0][0], queries)
    return _row("exact (BLAS, mmap)", "-", got, med, p99, truth, build_s=0.0,
                file_mb=emb_path.stat().st_size / 1e6, load_mmap_ms=load_ms, load_prefault_ms=None)


def bench_annoy(emb: np.ndarray, emb_mm: np.ndarray, queries: np.ndarray, truth: np.ndarray,
                tmp: Path, trees: list[int], search_ks: list[int], rerank_n: list[int]) -> list:
    from annoy import AnnoyIndex

    rows = []
    for nt in trees:
        idx = AnnoyIndex(emb.shape[1], "angular")
        idx.set_seed(0)
        for i, v in enumerate(emb):
            idx.add_item(i, v.tolist())
        t = time.perf_counter()
        idx.build(nt, n_jobs=1)
        build = time.perf_counter() - t
        path = tmp / f"annoy-{nt}.ann"
        idx.save(str(path))
        idx.unload()
        loads = {}
        for prefault in (False, True):
            a = AnnoyIndex(emb.shape[1], "angular")
            t = time.perf_counter()
            a.load(str(path), prefault=prefault)
            loads[prefault] = (time.perf_counter() - t) * 1e3
            if prefault:
                a.unload()
            else:
                idx = a
        common = {"build_s": build, "file_mb": path.stat().st_size / 1e6,
                  "load_mmap_ms": loads[False], "load_prefault_ms": loads[True]}
        for sk in search_ks:
            got, med, p99 = _lat(lambda q, sk=sk, idx=idx: np.asarray(
                idx.get_nns_by_vector(q.tolist(), K, search_k=sk)), queries)
            rows.append(_row("annoy", f"trees={nt} search_k={sk}", got, med, p99, truth,
                             trees=nt, search_k=sk, **common))
        for n in rerank_n:
            sk = max(n * nt, 1)

            def rerank(q, n=n, sk=sk, idx=idx):
                ids = np.sort(np.asarray(idx.get_nns_by_vector(q.tolist(), n, search_k=sk)))
                s = emb_mm[ids] @ q
                return ids[np.argsort(-s)[:K]]

            got, med, p99 = _lat(rerank, queries)
            rows.append(_row("annoy + exact rerank", f"trees={nt} candidates={n}", got, med, p99,
                             truth, trees=nt, search_k=sk, **common))
        idx.unload()
        path.unlink()
        print(f"  annoy trees={nt} done (build {build:.1f}s)", file=sys.stderr)
    return rows


def bench_hnsw(emb: np.ndarray, queries: np.ndarray, truth: np.ndarray, tmp: Path,
               efs: list[int]) -> list:
    try:
        import hnswlib
    except ImportError:
        return []
    idx = hnswlib.Index(space="ip", dim=emb.shape[1])
    idx.init_index(max_elements=len(emb), ef_construction=200, M=16, random_seed=0)
    idx.set_num_threads(1)
    t = time.perf_counter()
    idx.add_items(emb, np.arange(len(emb)))
    build = time.perf_counter() - t
    path = tmp / "hnsw.bin"
    idx.save_index(str(path))
    t = time.perf_counter()
    idx2 = hnswlib.Index(space="ip", dim=emb.shape[1])
    idx2.load_index(str(path), max_elements=len(emb))
    load = (time.perf_counter() - t) * 1e3
    idx2.set_num_threads(1)
    rows = []
    for ef in efs:
        idx2.set_ef(max(ef, K))
        got, med, p99 = _lat(lambda q: idx2.knn_query(q[None], k=K)[0][0], queries)
        rows.append(_row("hnswlib (M=16)", f"ef={ef}", got, med, p99, truth, build_s=build,
                         file_mb=path.stat().st_size / 1e6, load_mmap_ms=None,
                         load_prefault_ms=load))
    path.unlink()
    return rows


def run_dataset(name: str, emb: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> dict:
    print(f"{name}: {emb.shape[0]} x {emb.shape[1]}, {len(queries)} queries", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=args.tmp) as d:
        tmp = Path(d)
        emb_path = tmp / "embeddings.npy"
        np.save(emb_path, emb)
        emb_mm = np.load(emb_path, mmap_mode="r")
        truth = np.concatenate([exact_topk(emb, queries[i : i + 256], K)[0]
                                for i in range(0, len(queries), 256)])
        rows = [bench_exact(emb_path, queries, truth)]
        rows += bench_annoy(emb, emb_mm, queries, truth, tmp, args.trees, args.search_k,
                            args.rerank)
        if len(emb) <= args.hnsw_max:
            rows += bench_hnsw(emb, queries, truth, tmp, args.ef)
        del emb_mm
    exact = rows[0]["median_ms"]
    good = [r for r in rows[1:] if r["method"].startswith("annoy") and r["recall@10"] >= TARGET]
    best = min(good, key=lambda r: r["median_ms"]) if good else None
    return {"name": name, "n": int(emb.shape[0]), "dim": int(emb.shape[1]), "rows": rows,
            "exact_median_ms": exact, "best_annoy": best,
            "annoy_wins": bool(best and best["median_ms"] < exact)}


def crossover(group: list[dict]) -> str:
    """Per size: is the fastest Annoy set-up with recall@10 >= 0.95 faster
    than exact search? Then the smallest size from which Annoy wins at every
    larger size run (or why there is none)."""
    parts = []
    for r in sorted(group, key=lambda r: r["n"]):
        b = r["best_annoy"]
        if b is None:
            best = max((x for x in r["rows"] if x["method"].startswith("annoy")),
                       key=lambda x: x["recall@10"])
            parts.append(f"{r['n']:,}: no Annoy set-up reaches {TARGET} (best {best['recall@10']:.3f}"
                         f" at {best['params']}, {best['median_ms']:.2f} ms; exact "
                         f"{r['exact_median_ms']:.2f} ms)")
        else:
            parts.append(f"{r['n']:,}: {'Annoy' if r['annoy_wins'] else 'exact'} "
                         f"({b['median_ms']:.3f} ms {b['method']} {b['params']} vs exact "
                         f"{r['exact_median_ms']:.3f} ms)")
    ns = sorted(r["n"] for r in group)
    wins = {r["n"] for r in group if r["annoy_wins"]}
    tail = [n for i, n in enumerate(ns) if all(m in wins for m in ns[i:])]
    if tail:
        verdict = f"Annoy faster from {tail[0]:,} vectors on (every size run from there)"
    else:
        verdict = "Annoy is not faster at recall@10 >= 0.95 at the largest size run"
    return verdict + "; " + "; ".join(parts)


def _fmt(v, nd=2) -> str:
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def write_results(results: list[dict], cross: dict[str, str], out: Path, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").write_text(json.dumps({"meta": meta, "results": results,
                                                "crossover": cross}, indent=1))
    lines = [f"# Index benchmark ({meta['machine']}, {meta['date']})", "",
             f"One query at a time, one thread; k = {K}; recall against exact cosine search.", ""]
    for r in results:
        lines += [f"## {r['name']}: {r['n']:,} x {r['dim']}", "",
                  "| method | params | recall@1 | recall@10 | median ms | p99 ms | build s | "
                  "file MB | load mmap ms | load prefault ms | top-1 item acc |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(
                f"| {row['method']} | {row['params']} | {row['recall@1']:.3f} | "
                f"{row['recall@10']:.3f} | {row['median_ms']:.3f} | {row['p99_ms']:.3f} | "
                f"{row['build_s']:.1f} | {row['file_mb']:.1f} | {_fmt(row['load_mmap_ms'])} | "
                f"{_fmt(row['load_prefault_ms'])} | {_fmt(row.get('top1_item_acc'), 3)} |")
        b = r["best_annoy"]
        lines += ["", (f"Fastest Annoy set-up at recall@10 >= {TARGET}: {b['method']} "
                       f"{b['params']}, {b['median_ms']:.3f} ms vs exact {r['exact_median_ms']:.3f}"
                       f" ms -> {'Annoy' if r['annoy_wins'] else 'exact'} is faster.")
                  if b else f"No Annoy set-up reached recall@10 >= {TARGET}.", ""]
    lines += [f"**Crossover** (Annoy faster than exact at recall@10 >= {TARGET}):", ""]
    lines += [f"- {regime}: {text}" for regime, text in cross.items()] + [""]
    (out / "index.md").write_text("\n".join(lines))


def bundle_dataset(bundle: Path, queries_cat: Path, args) -> tuple[np.ndarray, np.ndarray, dict]:
    """The bundle's stored embeddings as the gallery; the catalogue's images,
    encoded by the bundle's encoder, as labelled queries."""
    from edge_runtime.matcher import Matcher
    from models.bundle import load_items
    from models.catalogue import load_catalogue
    from models.indexing import encode_entries

    emb = np.load(bundle / "embeddings.npy").astype(np.float32)
    items = load_items(bundle)
    vec_item = [items.items[v.item].item_id for v in items.vectors]
    with Matcher.open(bundle, search_mode="exact") as m:
        entries = load_catalogue(queries_cat).entries
        if args.max_queries and len(entries) > args.max_queries:
            pick = np.linspace(0, len(entries) - 1, args.max_queries).astype(int)
            entries = [entries[i] for i in pick]
        q, kept, _ = encode_entries(m.encoder, entries, progress=False)
    return emb, q, {"vec_item": vec_item, "labels": [e.item_id for e in kept]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--regimes", nargs="+", default=["easy:1.0:0.7", "hard:1.5:1.5"],
                    help="NAME:TAU:SIGMA synthetic regimes: item spread in a category, photo "
                         "spread in an item (default: easy:1.0:0.7 hard:1.5:1.5)")
    ap.add_argument("--queries", type=Path, help="labelled catalogue of query images (with --bundle)")
    ap.add_argument("--bundle", type=Path, help="a bundle whose embeddings to benchmark too")
    ap.add_argument("--n-queries", type=int, default=300)
    ap.add_argument("--max-queries", type=int, default=300)
    ap.add_argument("--trees", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--search-k", type=int, nargs="+", default=[-1, 1000, 3000, 10000, 30000])
    ap.add_argument("--rerank", type=int, nargs="+", default=[50, 100])
    ap.add_argument("--ef", type=int, nargs="+", default=[16, 64, 128])
    ap.add_argument("--hnsw-max", type=int, default=200_000,
                    help="skip hnswlib above this many vectors (its 1-thread build takes long)")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: system temp)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    results, cross = [], {}
    for regime in args.regimes:
        label, tau, sigma = regime.split(":")
        group = []
        for n in args.sizes:
            emb, q = synthetic(n, args.dim, args.n_queries, tau=float(tau), sigma=float(sigma))
            name = f"synthetic {label} (tau {tau}, sigma {sigma}) {n // 1000}k"
            group.append(run_dataset(name, emb, q, args))
            del emb, q
        results += group
        cross[f"synthetic {label}"] = crossover(group)
    if args.bundle:
        if not args.queries:
            ap.error("--bundle needs --queries CATALOGUE")
        emb, q, lab = bundle_dataset(args.bundle, args.queries, args)
        LABELS.update(lab)
        results.append(run_dataset(f"bundle {args.bundle.name} ({args.queries.name} queries)",
                                   emb, q, args))
        cross[f"bundle {args.bundle.name}"] = crossover(results[-1:])
    meta = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "threads": os.environ.get("OMP_NUM_THREADS")}
    write_results(results, cross, args.out, meta)
    print((args.out / "index.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
