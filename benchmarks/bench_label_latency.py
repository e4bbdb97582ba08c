"""Latency of "record a label and get the next pair" with 20 concurrent labelers over gradio_client.

Run: .venv/bin/python benchmarks/bench_label_latency.py [--labelers 20] [--labels 10] [--think 2.0]

Starts the real app (model loaded lazily, so it is never touched) on a free port with a fresh data dir of
pairs, then has N gradio_client sessions label concurrently and reports p50/p95/max per call. The baseline,
measured in the same run, is the same work done by N threads calling the LabelStore directly, so the ratio is
the HTTP + Gradio queue overhead. Target: p95 under 50 ms.

``--think S`` makes each labeler pause a random 0..2S seconds between labels, as people do (reading two answers
takes seconds); ``--think 0`` is the closed-loop worst case where all 20 click at once, non-stop.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labeling.records import LabelRecord, PairRecord, as_messages  # noqa: E402
from labeling.store import LabelStore  # noqa: E402
from tests.apprunner import RunningApp  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def seed(data_dir: Path, count: int) -> None:
    store = LabelStore(data_dir)
    store.add_pairs([PairRecord(prompt=as_messages(f"Create task {i}"), response_a=f"a{i}", response_b=f"b{i}",
                                strategy="bench", model_a="m", model_b="m") for i in range(count)])
    store.close()


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_threads(target, labelers: int) -> list[float]:
    times: list[float] = []
    lock = threading.Lock()
    threads = [threading.Thread(target=target, args=(f"bench-{i}", times, lock)) for i in range(labelers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelers", type=int, default=20)
    parser.add_argument("--labels", type=int, default=10)
    parser.add_argument("--think", type=float, default=2.0, help="Mean pause between labels, seconds.")
    args = parser.parse_args()
    needed = args.labelers * args.labels + args.labelers

    with tempfile.TemporaryDirectory() as tmp:
        direct_dir = Path(tmp) / "direct"
        seed(direct_dir, needed)
        store = LabelStore(direct_dir)

        def direct(name: str, times: list[float], lock: threading.Lock) -> None:
            assignment = store.next_pair(name)
            for _ in range(args.labels):
                start = time.perf_counter()
                store.record_label(LabelRecord(pair_id=assignment.pair.pair_id, labeler=name, choice="a",
                                               left=assignment.left))
                assignment = store.next_pair(name)
                with lock:
                    times.append(time.perf_counter() - start)

        baseline = run_threads(direct, args.labelers)

        app_dir = Path(tmp) / "app"
        seed(app_dir, needed)
        app = RunningApp(["--data-dir", str(app_dir), "--lazy"], free_port())
        try:
            from gradio_client import Client

            def over_http(name: str, times: list[float], lock: threading.Lock) -> None:
                client = Client(app.url, verbose=False)
                client.predict(name, api_name="/label_start")
                pauses = random.Random(name)
                for _ in range(args.labels):
                    time.sleep(pauses.uniform(0, 2 * args.think))
                    start = time.perf_counter()
                    client.predict("", "", api_name="/label_left")
                    with lock:
                        times.append(time.perf_counter() - start)

            measured = run_threads(over_http, args.labelers)
        finally:
            app.stop()

    for name, values in (("direct LabelStore (baseline)", baseline), ("app over gradio_client", measured)):
        print(f"{name:32s} n={len(values):4d}  p50={statistics.median(values) * 1000:7.1f} ms  "
              f"p95={percentile(values, 0.95) * 1000:7.1f} ms  max={max(values) * 1000:7.1f} ms")
    p95 = percentile(measured, 0.95)
    print(f"labelers: {args.labelers}, think time 0..{2 * args.think:g} s between labels")
    print(f"ratio p95 app / p95 direct: {p95 / percentile(baseline, 0.95):.1f}x")
    print(f"target p95 < 50 ms: {'met' if p95 < 0.050 else 'NOT met'} ({p95 * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
