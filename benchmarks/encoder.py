"""The encoder backends side by side: torch, onnx (fp32) and onnx-int8, in one run.

    .venv/bin/python benchmarks/encoder.py                       # about 15 minutes on 2 cores
    .venv/bin/python benchmarks/encoder.py --images 64 --ingest 64 --rounds 1   # a quick look

For each backend (PGCLIP_ENCODER), ViT-B-32 with random (seeded) weights loaded from a local
checkpoint, as benchmarks/ingest.py does:

  forward  a worker's encoder (PGCLIP_MODEL_THREADS, default auto) in its own process: its
           model threads each take the next prepared batch (their share of PGCLIP_BATCH_SIZE)
           and run ``encode_prepared`` on it, images/s; the same for batches of 32 captions,
           texts/s; the process's resident memory (RSS) after both.
  query    the API's encoder (one model thread, every core) in its own process: one text
           at a time, 40 distinct texts, latency p50.
  fidelity per-vector cosine of each backend's image and text vectors against torch fp32;
           for int8 also the cosine of centred vectors (the set's mean removed) and the
           top-10 neighbour agreement (image -> images, text -> images) with torch fp32.
           Random weights give every input nearly the same direction, so raw cosines
           near 1 say little: the centred cosine and the neighbours are the informative ones.
  ingest   ``pgclip worker`` already running, idle, then ``pgclip ingest`` of new JPEGs
           (benchmarks/ingest.py's running-worker measurement), images/s, and its ratio to
           that backend's forward.

Each round runs the backends in turn (the order rotated each round) and the report takes
the median of the rounds: the machine's load drifts, and a ratio of figures measured
minutes apart would measure the drift. The exports are made before the first round. The
report says how many cores other processes used meanwhile. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import MODEL, REPO, CpuMeter, log, make_checkpoint, run_cli, running_worker, write_jpegs  # noqa: E402

BACKENDS = ("torch", "onnx", "onnx-int8")
SIZE = (640, 480)
TEXT_BATCH = 32
QUERIES = 40
WORDS = "dog cat beach mountain city night red blue old child bicycle coffee tree snow boat market".split()


def captions(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"a photo of a {' '.join(rng.choice(WORDS, size=3))} number {seed + i}" for i in range(n)]


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process, MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def in_threads(n: int, work: list, run) -> float:
    """Seconds for `n` threads to drain `work`, each calling `run` on the next item."""
    import queue
    import threading

    todo: queue.Queue = queue.Queue()
    for item in work:
        todo.put(item)

    def drain() -> None:
        while True:
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            run(item)

    threads = [threading.Thread(target=drain) for _ in range(n)]
    t = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - t


def child_forward(backend: str, folder: Path, out: Path) -> None:
    """The forward measurement of one backend, in this (fresh) process."""
    from pgclip.core.settings import Settings
    from pgclip.workers.decode import decode
    from pgclip.workers.encoder import ClipEncoder

    settings = Settings.from_env()
    encoder = ClipEncoder(settings.model, settings.pretrained, device="cpu", torch_threads=settings.torch_threads,
                          model_threads=settings.model_threads, backend=backend)
    encoder.load()
    prepared = [encoder.prepare(decode(p.read_bytes())) for p in sorted(folder.glob("*.jpg"))]
    size = max(1, settings.batch_size // encoder.model_threads)  # each model thread's batch, as in Worker
    batches = [prepared[i : i + size] for i in range(0, len(prepared), size)]
    texts = captions(len(prepared), 0)
    text_batches = [texts[i : i + TEXT_BATCH // encoder.model_threads]
                    for i in range(0, len(texts), TEXT_BATCH // encoder.model_threads)]
    in_threads(encoder.model_threads, batches[: encoder.model_threads], encoder.encode_prepared)  # warm-up
    in_threads(encoder.model_threads, text_batches[: encoder.model_threads], encoder.encode_texts)
    with CpuMeter() as images_cpu:
        in_threads(encoder.model_threads, batches, encoder.encode_prepared)
    with CpuMeter() as texts_cpu:
        in_threads(encoder.model_threads, text_batches, encoder.encode_texts)
    rss, peak = rss_mib()
    np.savez(out.with_suffix(".npz"), images=encoder.encode_prepared(prepared), texts=encoder.encode_texts(texts))
    out.write_text(json.dumps({
        "model_threads": encoder.model_threads, "images_per_s": len(prepared) / images_cpu.wall,
        "texts_per_s": len(texts) / texts_cpu.wall, "rss_mib": rss, "peak_rss_mib": peak,
        "other_cores": [images_cpu.other, texts_cpu.other],
    }))


def child_query(backend: str, out: Path) -> None:
    """One text at a time through the API's encoder (one model thread), in this (fresh) process."""
    from pgclip.core.settings import Settings
    from pgclip.workers.encoder import ClipEncoder

    settings = Settings.from_env()
    encoder = ClipEncoder(settings.model, settings.pretrained, device="cpu", torch_threads=settings.torch_threads,
                          backend=backend)
    encoder.encode_texts(["warm-up"])
    latencies = []
    with CpuMeter() as cpu:
        for text in captions(QUERIES, 10_000):
            t = time.perf_counter()
            encoder.encode_texts([text])
            latencies.append((time.perf_counter() - t) * 1000)
    out.write_text(json.dumps({"p50_ms": statistics.median(latencies), "other_cores": cpu.other}))


def in_child(mode: str, backend: str, *args: str, env: dict[str, str]) -> dict:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    subprocess.run([sys.executable, __file__, f"--_{mode}", backend, *args, str(out)], env=env, check=True, cwd=REPO)
    return json.loads(out.read_text()) | ({"npz": str(out.with_suffix(".npz"))} if mode == "forward" else {})


def top10(queries: np.ndarray, items: np.ndarray, exclude_self: bool) -> np.ndarray:
    sims = queries @ items.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1)[:, :10]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))


def fidelity(ours: dict[str, np.ndarray], torch_: dict[str, np.ndarray]) -> dict:
    report = {}
    for kind in ("images", "texts"):
        cos = (ours[kind] * torch_[kind]).sum(axis=1)
        mean = torch_[kind].mean(axis=0)
        a, b = ours[kind] - mean, torch_[kind] - mean
        centred = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        report[kind] = {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
                        "centred_min": float(centred.min()), "centred_mean": float(centred.mean())}
    report["top10_image_to_images"] = agreement(top10(ours["images"], ours["images"], True),
                                                top10(torch_["images"], torch_["images"], True))
    report["top10_text_to_images"] = agreement(top10(ours["texts"], ours["images"], False),
                                               top10(torch_["texts"], torch_["images"], False))
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=256, help="JPEGs for the forward and fidelity (default 256)")
    p.add_argument("--ingest", type=int, default=256, help="JPEGs per running-worker ingest (default 256; 0: skip)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every backend (default 2)")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    p.add_argument("--_forward", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--_query", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._forward:
        child_forward(args._forward[0], Path(args._forward[1]), Path(args._forward[2]))
        return 0
    if args._query:
        child_query(args._query[0], Path(args._query[1]))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="pgclip-bench-encoder-"))
    checkpoint = tmp / "vit-b-32-random.pt"
    env = {**os.environ, "PGCLIP_MODEL": MODEL, "PGCLIP_PRETRAINED": str(checkpoint),
           "PGCLIP_DATA_DIR": str(tmp / "data"), "XDG_CACHE_HOME": str(tmp / "cache")}
    log(f"temporary folder {tmp}")
    make_checkpoint(checkpoint, 0)
    folder = tmp / "images"
    write_jpegs(folder, args.images, SIZE, 0)
    log("exporting (fp32, int8) before measuring")
    in_child("query", "onnx-int8", env=env)

    forward: dict[str, list[dict]] = {b: [] for b in BACKENDS}
    query: dict[str, list[dict]] = {b: [] for b in BACKENDS}
    for r in range(args.rounds):
        order = BACKENDS[r % 3:] + BACKENDS[: r % 3]
        for backend in order:
            forward[backend].append(in_child("forward", backend, str(folder), env=env))
            query[backend].append(in_child("query", backend, env=env))
            f, q = forward[backend][-1], query[backend][-1]
            log(f"round {r + 1} {backend}: {f['images_per_s']:.1f} img/s, {f['texts_per_s']:.1f} texts/s, "
                f"query p50 {q['p50_ms']:.1f} ms, RSS {f['rss_mib']:.0f} MiB")

    vectors = {b: dict(np.load(forward[b][0]["npz"])) for b in BACKENDS}
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "images": args.images,
                     "rounds": args.rounds, "backends": {}}
    for b in BACKENDS:
        results["backends"][b] = {
            "images_per_s": statistics.median(f["images_per_s"] for f in forward[b]),
            "texts_per_s": statistics.median(f["texts_per_s"] for f in forward[b]),
            "query_p50_ms": statistics.median(q["p50_ms"] for q in query[b]),
            "rss_mib": statistics.median(f["rss_mib"] for f in forward[b]),
            "model_threads": forward[b][0]["model_threads"],
            "other_cores": [c for f in forward[b] for c in f["other_cores"]] + [q["other_cores"] for q in query[b]],
            "fidelity": fidelity(vectors[b], vectors["torch"]),
        }

    if args.ingest:
        ingest(results, tmp, env, args.ingest)
    report(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def ingest(results: dict, tmp: Path, env: dict[str, str], n: int) -> None:
    from pgclip.application.bootstrap import register_configured_model
    from pgclip.core.settings import Settings
    from pgclip.db.engine import database_url

    run_cli("migrate", env=env)
    for i, backend in enumerate(BACKENDS):
        benv = {**env, "PGCLIP_ENCODER": backend}
        settings = Settings.from_env(benv)
        url = database_url(settings)
        model = register_configured_model(url, settings)
        wfolder = tmp / f"ingest-{backend}"
        write_jpegs(wfolder, n, SIZE, 1_000_000 * (i + 1))
        log(f"ingest into a running worker, {backend}")
        run = running_worker(wfolder, n, benv, url, model.id)
        b = results["backends"][backend]
        b["ingest_images_per_s"] = run["images_per_s"]
        b["ingest_steady_images_per_s"] = run["steady_images_per_s"]
        b["ingest_other_cores"] = run["cpu"]["other_cores"]
    run_cli("db", "stop", env=env)


def report(r: dict) -> None:
    b = r["backends"]
    torch_img, torch_q = b["torch"]["images_per_s"], b["torch"]["query_p50_ms"]
    print(f"\n{r['date']}, {r['cores']} cores, ViT-B-32 random weights, medians of {r['rounds']} rounds")
    print(f"{'backend':<10} {'threads':>7} {'img/s':>7} {'texts/s':>8} {'query p50':>10} {'RSS MiB':>8} "
          f"{'ingest img/s':>13} {'ingest/fwd':>10} {'ingest/torch fwd':>17} {'query x':>8}")
    for name, x in b.items():
        ingest = x.get("ingest_images_per_s")
        ratios = (f"{ingest:.1f}", f"{ingest / x['images_per_s']:.2f}", f"{ingest / torch_img:.2f}") if ingest else ("-",) * 3
        print(f"{name:<10} {x['model_threads']:>7} {x['images_per_s']:>7.1f} {x['texts_per_s']:>8.1f} "
              f"{x['query_p50_ms']:>8.1f}ms {x['rss_mib']:>8.0f} {ratios[0]:>13} {ratios[1]:>10} {ratios[2]:>17} "
              f"{torch_q / x['query_p50_ms']:>8.2f}")
    print("\nfidelity against torch fp32 (per vector; centred = the torch set's mean removed from both)")
    for name, x in b.items():
        f = x["fidelity"]
        print(f"{name:<10} images cos min {f['images']['cos_min']:.6f} centred min {f['images']['centred_min']:.4f} "
              f"mean {f['images']['centred_mean']:.4f} | texts cos min {f['texts']['cos_min']:.6f} centred min "
              f"{f['texts']['centred_min']:.4f} mean {f['texts']['centred_mean']:.4f} | top-10 agreement "
              f"image->images {f['top10_image_to_images']:.3f}, text->images {f['top10_text_to_images']:.3f}")
    others = [c for x in b.values() for c in x["other_cores"] + [x.get("ingest_other_cores")] if c is not None]
    if others:
        print(f"\nother processes' load during the measurements: {min(others):.2f} to {max(others):.2f} cores busy "
              f"(median {statistics.median(others):.2f})")


if __name__ == "__main__":
    raise SystemExit(main())
