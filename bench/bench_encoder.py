"""Encoder benchmark: throughput against sentence-transformers, dtypes, cache, pipeline.

All on the same model, texts and thread count, in one run:

1. throughput — ``SentenceTransformer(path).encode()`` in fp32 and bf16 (and its ONNX
   backend when ``optimum[onnxruntime]`` is installed) vs ``segstream.encoding.Encoder``
   in fp32, bf16 and (``--int8``) int8, each compared at the same dtype, threads, batch
   size and texts; rounds are interleaved and the median is reported, since the machine
   may be shared;
2. quality — cosine of each dtype to fp32, and KMeans cluster agreement (k = 8 and the
   segmenter's 12, fitted on the fp32 vectors);
3. cache — the exact-text cache hit rate and the "unchanged text" rate on the realistic
   stream (ingest's renderer over the seeded persona stream), coalesced in 100-event and
   1,000-event windows;
4. pipeline — a real ``EncoderWorker`` on Redis fed that stream at ``--rate`` events/s for
   ``--seconds`` (texts + dirty marks, as ingest writes them), cache on and off: sustained
   events/s, texts encoded, hit rate and mark-to-embedding latency p50/p99.

    .venv/bin/python bench/bench_encoder.py --threads 2 --int8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from sklearn.cluster import KMeans

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.encoder_texts import Window, sample_texts, windows
from segstream.config import load_settings
from segstream.encoding import Encoder, cosine_rows, default_model_path, text_hash
from segstream.redis_io import Keys, redis_client


def rate(fn, texts: list[str]) -> tuple[float, float]:
    """(texts per wall-clock second, CPU milliseconds per text). CPU time is the steadier
    figure on a shared machine; with one thread it has no OpenMP spin-wait in it."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(texts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return len(texts) / wall, 1000 * cpu / len(texts)


def sentence_transformers_runners(dtypes: list[str]) -> dict[str, object]:
    """sentence-transformers on the same model folder, one instance per dtype, plus its
    ONNX backend when ``optimum[onnxruntime]`` is importable (it is not a dependency)."""
    from sentence_transformers import SentenceTransformer

    path = str(default_model_path())
    runners: dict[str, object] = {}
    for name in dtypes:
        st = SentenceTransformer(path, device="cpu")
        if name != "fp32":
            st = st.to(DTYPES[name])
        runners[f"sentence-transformers {name}"] = st
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError as exc:
        print(f"sentence-transformers ONNX backend: not installed here ({exc})")
    else:
        runners["sentence-transformers onnx"] = SentenceTransformer(path, device="cpu",
                                                                    backend="onnx")
    return runners


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def throughput(texts: list[str], rounds: int, int8: bool, batch: int) -> dict[str, Encoder]:
    """Interleaved rounds of every runner on the same texts, threads and batch size; each
    of ours is compared with sentence-transformers at the same dtype."""
    ours = {"fp32": Encoder(dtype="float32", batch_size=batch),
            "bf16": Encoder(dtype="bfloat16", batch_size=batch)}
    if int8:
        ours["int8"] = Encoder(quantize_int8=True, batch_size=batch)
    runners = {}
    for name, st in sentence_transformers_runners(list(DTYPES)).items():
        runners[name] = (lambda model: lambda t: model.encode(
            t, batch_size=batch, convert_to_numpy=False))(st)
    runners |= {f"segstream {k}": enc.encode for k, enc in ours.items()}
    for fn in runners.values():
        fn(texts[:64])  # warm-up
    results: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            r, c = rate(fn, texts)
            results[name].append(r)
            cpu[name].append(c)
    print(f"\n== throughput: {len(texts)} texts, {torch.get_num_threads()} threads, batch "
          f"{batch}, median of {rounds} interleaved rounds ==")
    for name, values in results.items():
        dtype = name.rsplit(" ", 1)[-1]
        peer = f"sentence-transformers {dtype}"
        med, c = statistics.median(values), statistics.median(cpu[name])
        line = f"{name:28s} {med:7.1f} texts/s {c:6.1f} CPU ms/text"
        if name.startswith("segstream") and peer in results:
            base = statistics.median(results[peer])
            line += (f" | x{med / base:.2f} texts/s, x{statistics.median(cpu[peer]) / c:.2f} "
                     f"CPU vs {peer}")
        print(f"{line}  (rounds: {', '.join(f'{v:.0f}' for v in values)} texts/s)")
    auto = Encoder()
    print(f"default (dtype=auto) on this machine: {auto.dtype_name} on {auto.device}")
    return ours


def quality(texts: list[str], ours: dict[str, Encoder]) -> None:
    ref = ours["fp32"].encode(texts)
    print(f"\n== quality vs fp32 on {len(texts)} texts ==")
    fits = {k: KMeans(n_clusters=k, n_init=4, random_state=0).fit(ref) for k in (8, 12)}
    for name, enc in ours.items():
        if name == "fp32":
            continue
        vecs = enc.encode(texts)
        cos = cosine_rows(ref, vecs)
        agree = {k: float((km.predict(ref) == km.predict(vecs)).mean())
                 for k, km in fits.items()}
        print(f"{name}: cosine mean {cos.mean():.5f} min {cos.min():.5f}; cluster agreement "
              f"k=8 {agree[8]:.1%}, k=12 {agree[12]:.1%}")


def cache_study(users: int) -> None:
    print(f"\n== exact-text cache on the realistic stream ({users} users, 30 days) ==")
    for window_events in (100, 1_000):
        seen: set[str] = set()
        cached: set[str] = set()  # with the service's admission: stored once a text recurs
        last: dict[str, str] = {}
        events = texts = unchanged = hits = admitted_hits = 0
        for w in windows(users=users, window_events=window_events):
            events += w.events
            for uid, text in w.texts.items():
                texts += 1
                h = text_hash(text)
                if last.get(uid) == h:
                    unchanged += 1
                elif h in seen:
                    hits += 1
                    if h in cached:
                        admitted_hits += 1
                    cached.add(h)
                seen.add(h)
                last[uid] = h
        lookups = texts - unchanged
        print(f"window {window_events:5d} events: {events} events -> {texts} coalesced "
              f"user texts ({events / texts:.1f} events each); unchanged {unchanged} "
              f"({unchanged / texts:.1%}); cache hits {hits}/{lookups} "
              f"({hits / max(lookups, 1):.1%}); model runs per event "
              f"{(lookups - hits) / events:.3f}")
        # ~1.0 KB per cached vector, ~0.15 KB per seen marker (Redis MEMORY USAGE)
        print(f"  store every vector: {len(seen)} vectors (~{len(seen):.0f} KB); "
              f"admit on recurrence: {len(cached)} vectors + {len(seen)} markers "
              f"(~{len(cached) + len(seen) * 0.15:.0f} KB), hits {admitted_hits}")


def pipeline(windows_: list[Window], rate_eps: float, cache: bool, threads: int) -> None:
    from segstream_services.encoder.service import EncoderWorker

    settings = load_settings()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"key_prefix": prefix}),
        "encoder": settings.encoder.model_copy(update={
            "metrics_port": 0, "cache_enabled": cache, "torch_threads": threads}),
    })
    client = redis_client(settings.redis)
    keys = Keys(prefix)
    worker = EncoderWorker(settings, client=client)
    worker.encoder.warmup()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    started = time.perf_counter()
    events = 0
    for w in windows_:  # paced: window i is written when i windows' worth of time passed
        events += w.events
        pipe = client.pipeline(transaction=False)
        now = time.time_ns() // 1_000_000
        for uid, text in w.texts.items():
            pipe.set(keys.text(uid), text)
            pipe.zadd(keys.dirty(), {uid: now}, nx=True)
        pipe.execute()
        delay = started + events / rate_eps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    fed_s = time.perf_counter() - started
    while client.zcard(keys.dirty()) + client.zcard(keys.claims()):
        time.sleep(0.05)
    total_s = time.perf_counter() - started
    stop.set()
    thread.join()
    entries = client.xrange(keys.embedded())
    lat = np.array([int(f[b"encoded_ms"]) - int(f[b"dirty_ms"]) for _, f in entries]) / 1e3
    t = worker.totals
    lookups = t["cache"] + t["encoded"]
    print(f"cache {'on ' if cache else 'off'}: {events} events fed in {fed_s:.1f}s "
          f"({events / fed_s:.0f}/s), drained at {total_s:.1f}s -> sustained "
          f"{events / total_s:.0f} events/s; {len(entries)} embeddings, "
          f"{t['texts_encoded']} texts encoded in {t['batches']} batches; "
          f"cache/dedupe hit rate {t['cache'] / max(lookups, 1):.1%}, vectors cached "
          f"{worker.cache.stored if worker.cache else 0}, unchanged {t['unchanged']}; "
          f"latency p50 {np.percentile(lat, 50):.2f}s p99 {np.percentile(lat, 99):.2f}s")
    for key in client.scan_iter(match=f"*{prefix}*", count=1000):
        client.delete(key)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32, help="encode batch size (all runners)")
    ap.add_argument("--int8", action="store_true", help="also measure int8 quantisation")
    ap.add_argument("--users", type=int, default=1_000)
    ap.add_argument("--rate", type=float, default=1_000.0, help="pipeline events/s")
    ap.add_argument("--seconds", type=float, default=20.0, help="pipeline feed duration")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: "
                    "throughput,cache,pipeline")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    if "throughput" not in skip:
        texts = sample_texts(args.texts)
        ours = throughput(texts, args.rounds, args.int8, args.batch)
        quality(texts, ours)
    if "cache" not in skip:
        cache_study(args.users)
    if "pipeline" not in skip:
        budget = int(args.rate * args.seconds)
        feed = list(windows(users=args.users, window_events=100, max_events=budget))
        print(f"\n== pipeline: real worker on Redis, {args.rate:.0f} events/s offered for "
              f"{args.seconds:.0f}s ({args.users} users, 100-event windows) ==")
        for cache in (True, False):
            pipeline(feed, args.rate, cache, args.threads)


if __name__ == "__main__":
    main()
