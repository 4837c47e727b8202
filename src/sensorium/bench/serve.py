"""Serving under load: requests/s and latency of `sensorium serve` with dynamic batching on and off.

The server runs in this process on a loopback port with one adapter (by default a freshly initialised
one on --lm and --encoder: throughput does not depend on training). Each of N clients sends an easy-vqa
test question with its image and waits for the answer before sending the next, for a fixed time;
first against a server that batches concurrent requests, then against one answering them one by one,
over the same loaded models. Latency is per request, as the client sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ..serve.app import create_app, load_registry, running_server
from ..serve.settings import ServeSettings
from .common import add_common_arguments, build_model, examples, print_table, record

ADAPTER = "bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, repeated=False)
    parser.add_argument("--adapter", type=Path, help="a VQA adapter folder to serve instead of a fresh adapter")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients, one request in flight each")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed load per mode, after one warm-up round")
    parser.add_argument("--max-batch-size", type=int, default=ServeSettings.max_batch_size,
                        help="requests per generate() call with batching on")
    parser.add_argument("--max-wait-ms", type=float, default=ServeSettings.max_wait_ms, help="batching window")
    parser.add_argument("--smoke", action="store_true",
                        help="2 clients for 1 s per mode: runs the code path, measures nothing")


async def _ask(http: httpx.AsyncClient, upload: tuple[bytes, str]) -> dict[str, Any]:
    image, question = upload
    response = await http.post("/v1/ask", data={"adapter": ADAPTER, "question": question},
                               files={"media": ("image.png", image, "image/png")})
    response.raise_for_status()
    return response.json()


async def _load(url: str, uploads: list[tuple[bytes, str]], clients: int, seconds: float) -> dict[str, Any]:
    """Closed-loop clients for ``seconds``; requests in flight at the end still count, and so does their time."""
    latencies: list[float] = []
    answers: list[dict[str, Any]] = []

    async def client(first: int, deadline: float) -> None:
        turn = first
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            answer = await _ask(http, uploads[turn % len(uploads)])
            latencies.append(time.perf_counter() - started)
            answers.append(answer)
            turn += clients

    async with httpx.AsyncClient(base_url=url, timeout=None, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(_ask(http, uploads[i % len(uploads)]) for i in range(clients)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client(i, started + seconds) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "requests_per_s": len(latencies) / elapsed,
            "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99)),
            "mean_batch": statistics.fmean(a["batch_size"] for a in answers),
            **{f"server_{step}_ms": statistics.fmean(a["timings"][f"{step}_ms"] for a in answers)
               for step in ("queue", "encode", "generate")}}


def _fresh_adapter(args: argparse.Namespace, folder: Path) -> Path:
    model = build_model(args)
    model.save_pretrained(folder)
    return folder


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke:
        args.clients, args.seconds = 2, 1.0
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.adapter or _fresh_adapter(args, Path(scratch) / "adapter")
        registry = load_registry([(ADAPTER, folder)], args.device)
    uploads = [(Path(e.media).read_bytes(), e.question) for e in examples("test", 4 * args.clients, args.limit)]
    rows = []
    for mode, batch_size in [("batching", args.max_batch_size), ("one by one", 1)]:
        app = create_app(registry, ServeSettings(max_batch_size=batch_size, max_wait_ms=args.max_wait_ms))
        with running_server(app) as url:
            rows.append({"mode": mode, "max_batch": batch_size, "clients": args.clients,
                         **asyncio.run(_load(url, uploads, args.clients, args.seconds))})
    batched, alone = rows
    ratios = {"batching_over_one_by_one_requests_per_s": batched["requests_per_s"] / alone["requests_per_s"],
              "one_by_one_over_batching_p50": alone["p50_ms"] / batched["p50_ms"],
              "one_by_one_over_batching_p99": alone["p99_ms"] / batched["p99_ms"]}
    print_table(rows, f"serving, {args.clients} clients, {args.seconds:g} s per mode")
    print_table([{"ratio": name, "value": value} for name, value in ratios.items()], "batching gain")
    return record("serve", args, {"rows": rows, **ratios})
