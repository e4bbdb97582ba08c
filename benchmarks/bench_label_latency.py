"""Latency of "record a label and get the next pair" with 20 concurrent labelers over HTTP.

Run: .venv/bin/python benchmarks/bench_label_latency.py [--labelers 20] [--labels 10] [--think 2.0]

Starts the real app (model loaded lazily, so it is never touched) on a free port with a fresh data dir of
pairs, then has N concurrent labelers label and reports p50/p95/max per call, three ways, in the same run:

- direct LabelStore calls from N threads (the baseline: the store's own cost, fsync included);
- the app over an event-driven client of Gradio's queue protocol (POST queue/join, then read the SSE stream as
  messages arrive, on one keep-alive connection), which is what the browser's JS client does;
- the app over gradio_client, as the labeling issue asks. gradio_client 2.x waits for queue messages by polling
  with ``time.sleep(0.05)`` (gradio_client/utils.py, ``stream_sse_v1plus``) and opens a new connection per call,
  so every call costs at least one 50 ms sleep on the client: its p95 cannot go under 50 ms whatever the
  server does. The bench prints that floor, measured on a no-op call, next to the label calls.

``--think S`` makes each labeler pause a random 0..2S seconds between labels, as people do (reading two answers
takes seconds); ``--think 0`` is the closed-loop worst case where all 20 click at once, non-stop.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

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


class QueueClient:
    """A minimal client of Gradio's queue protocol (sse_v3) that reacts to each message as it arrives, like the
    browser's JS client: POST queue/join, then read the session's SSE stream until this event completes."""

    def __init__(self, url: str) -> None:
        root = url.rstrip("/")
        config = httpx.get(f"{root}/config", timeout=30).json()
        self.http = httpx.Client(base_url=f"{root}{config['api_prefix']}/", timeout=60)
        self.session = uuid.uuid4().hex
        self.states = {c["id"] for c in config["components"] if c["type"] == "state"}
        self.endpoints = {d["api_name"]: d for d in config["dependencies"] if d.get("api_name")}

    def predict(self, api_name: str, *args: object) -> list:
        dependency = self.endpoints[api_name]
        values = iter(args)
        # Session state lives on the server: the protocol sends None in its place, as gradio_client does.
        data = [None if component in self.states else next(values) for component in dependency["inputs"]]
        joined = self.http.post("queue/join", json={"data": data, "fn_index": dependency["id"],
                                                    "session_hash": self.session, "event_data": None,
                                                    "trigger_id": None})
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        with self.http.stream("GET", "queue/data", params={"session_hash": self.session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") == event_id and message["msg"] == "process_completed":
                    if not message.get("success"):
                        raise RuntimeError(f"{api_name} failed: {message.get('output')}")
                    return message["output"]["data"]
        raise RuntimeError(f"{api_name}: the stream closed before the event completed")

    def close(self) -> None:
        self.http.close()


def gradio_client_call(url: str):
    from gradio_client import Client

    client = Client(url, verbose=False)
    return lambda api_name, *args: client.predict(*args, api_name=f"/{api_name}")


def labeler(make_call, label_api: str, args: argparse.Namespace):
    """A labeler thread: sign in by name, then label ``args.labels`` pairs, timing each label call."""
    def run(name: str, times: list[float], lock: threading.Lock) -> None:
        call = make_call()
        call("label_start", name)
        pauses = random.Random(name)
        for _ in range(args.labels):
            time.sleep(pauses.uniform(0, 2 * args.think))
            start = time.perf_counter()
            call(label_api, "", "")
            with lock:
                times.append(time.perf_counter() - start)
    return run


def gradio_client_floor(calls: int = 20) -> list[float]:
    """gradio_client's own latency: one client calling a bare Gradio app whose endpoint does nothing."""
    import gradio as gr

    with gr.Blocks() as bare:
        gr.Button().click(lambda: None, None, None, api_name="noop")
    bare.queue().launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        call = gradio_client_call(bare.local_url)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            call("noop")
            times.append(time.perf_counter() - start)
        return times
    finally:
        bare.close()


def summary(name: str, values: list[float]) -> str:
    return (f"{name:40s} n={len(values):4d}  p50={statistics.median(values) * 1000:7.1f} ms  "
            f"p95={percentile(values, 0.95) * 1000:7.1f} ms  max={max(values) * 1000:7.1f} ms")


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
        seed(app_dir, 2 * needed)
        app = RunningApp(["--data-dir", str(app_dir), "--lazy"], free_port())
        try:
            event_driven = run_threads(labeler(lambda: QueueClient(app.url).predict, "label_left", args),
                                       args.labelers)
            over_client = run_threads(labeler(lambda: gradio_client_call(app.url), "label_right", args),
                                      args.labelers)
        finally:
            app.stop()
    floor = gradio_client_floor()

    print(summary("direct LabelStore (baseline)", baseline))
    print(summary("app, event-driven queue client", event_driven))
    print(summary("app, gradio_client", over_client))
    print(summary("gradio_client floor (no-op, 1 client)", floor))
    print(f"labelers: {args.labelers}, think time 0..{2 * args.think:g} s between labels")
    base95 = percentile(baseline, 0.95)
    for name, values in (("event-driven", event_driven), ("gradio_client", over_client)):
        p95 = percentile(values, 0.95)
        print(f"{name}: ratio p95 app / p95 direct {p95 / base95:.1f}x; target p95 < 50 ms: "
              f"{'met' if p95 < 0.050 else 'NOT met'} ({p95 * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
