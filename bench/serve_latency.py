"""`gdr web` and `gdr mcp` on a served corpus (issue 26): the page's search as a browser's GET sees it, and the MCP
server's start and per-call latency through the SDK's own client, each a real `gdr` process on the search
section's synthetic chunks (bench/search_latency.py's `build`). Medians, with the load average beside them.

    uv run python -m bench.run_all --only serve [--quick]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np

from bench.harness import Postgres, load, log, percentile
from bench.search_latency import GUESTS, K, build, query_text

START_RUNS = 5  # `gdr mcp` processes started, for the start-time median


def _settings(url: str, home: Path):
    from gent_disagreement_rag.settings import Settings

    return Settings(_env_file=None, database_url=url, gdr_home=home / "home", audio_dir=home / "audio",
                    episodes_file=home / "episodes.json", transcripts_dir=home / "transcripts")


def _figures(times: list[float]) -> dict[str, Any]:
    return {"median_ms": round(percentile(times, 50) * 1000, 1), "p95_ms": round(percentile(times, 95) * 1000, 1),
            "runs": len(times), "load": load()}


def page(settings: Any, queries: list[str], folder: Path) -> dict[str, Any]:
    """GET /?q=... of a running `gdr web`: the whole answer (search, catalogue, HTML) as the browser receives it."""
    from tests.support.builders import free_port
    from tests.support.servers import gdr_server

    out: dict[str, Any] = {}
    with gdr_server(["web", "--port", str(free_port())], settings, folder / "web.log", "gdr web on ") as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            for q in queries[:5]:  # a served page is warm: MiniLM loaded, pages cached
                client.get("/", params={"q": q}).raise_for_status()
            for name, extra in (("search", {}), ("search + speaker filter", {"speaker": GUESTS[7]})):
                times = []
                for q in queries:
                    t = time.perf_counter()
                    response = client.get("/", params={"q": q, **extra})
                    times.append(time.perf_counter() - t)
                    response.raise_for_status()
                out[name] = _figures(times)
                log(f"    gdr web {name}: median {out[name]['median_ms']} ms, p95 {out[name]['p95_ms']} ms "
                    f"(load {out[name]['load']})")
    return out


def mcp(settings: Any, queries: list[str]) -> dict[str, Any]:
    """`gdr mcp` over stdio: process start to a completed handshake, the first search (loads MiniLM), then each
    tool's calls on a warm server."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    from tests.support.servers import gdr_executable, server_environment

    server = StdioServerParameters(command=str(gdr_executable()), args=["mcp"], env=server_environment(settings))
    starts: list[float] = []
    first_search: list[float] = []
    calls: dict[str, list[float]] = {"search": [], "transcript": [], "episodes": [], "speakers": []}

    async def session(measure_calls: bool) -> None:
        t = time.perf_counter()
        async with Client(server) as client:
            starts.append(time.perf_counter() - t)
            t = time.perf_counter()
            assert not (await client.call_tool("search", {"query": queries[0], "k": K})).is_error
            first_search.append(time.perf_counter() - t)
            if not measure_calls:
                return
            arguments = {"search": [{"query": q, "k": K} for q in queries],
                         "transcript": [{"episode": f"E{i % 50:04d}", "start": 15.0 * (i % 100), "end": 15.0 * (i % 100) + 120}
                                        for i in range(len(queries))],
                         "episodes": [{}] * 20, "speakers": [{}] * 20}
            for tool, each in arguments.items():
                for args in each:
                    t = time.perf_counter()
                    result = await client.call_tool(tool, args)
                    calls[tool].append(time.perf_counter() - t)
                    assert not result.is_error, result.content

    for run in range(START_RUNS):
        anyio.run(session, run == START_RUNS - 1)
    out: dict[str, Any] = {"start": {"median_s": round(percentile(starts, 50), 2), "max_s": round(max(starts), 2),
                                     "runs": len(starts), "load": load()},
                           "first search": {"median_s": round(percentile(first_search, 50), 2), "load": load()}}
    for tool, times in calls.items():
        out[f"call {tool}"] = _figures(times)
    log(f"    gdr mcp: start median {out['start']['median_s']} s, first search {out['first search']['median_s']} s, "
        + ", ".join(f"{tool} median {out[f'call {tool}']['median_ms']} ms" for tool in calls))
    return out


def run(pg: Postgres, *, quick: bool = False) -> dict[str, Any]:
    n = 10_000 if quick else 100_000
    n_queries = 20 if quick else 100
    rng = np.random.default_rng(n + 26)
    log(f"  serve: building {n:,} chunks")
    world = build(pg, n, rng)
    queries = [query_text(world["names"][rng.integers(len(world["names"]))], rng) for _ in range(n_queries)]
    results: dict[str, Any] = {"chunks": n}
    with tempfile.TemporaryDirectory(prefix="gdr-bench-serve-") as tmp:
        folder = Path(tmp)
        settings = _settings(world["url"], folder)
        results["web"] = page(settings, queries, folder)
        results["mcp"] = mcp(settings, queries)
    pg.drop_database(world["url"])
    return results


if __name__ == "__main__":
    from bench.harness import embedded_postgres

    with embedded_postgres() as pg:
        print(run(pg, quick=True))
