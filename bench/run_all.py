"""Run the benchmarks and write BENCHMARKS.md (+ bench/speedup.png, bench/results.json).

    uv run python -m bench.run_all                 # everything (`make bench`), ~40 min on 2 cores
    uv run python -m bench.run_all --quick         # every section, smaller, ~3-4 min
    uv run python -m bench.run_all --only search   # one section; the others keep their last results

Sections: parallel, api, store, search, local, fleet (the three engines compared), serve (gdr web and gdr mcp),
scale (a million chunks, ~40 min alone), speakers (diarization on drawn espeak-ng voices). Not tests: nothing here
asserts on time; targets are reported as met or missed. Every section notes the machine's load, which the figures depend on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SECTIONS = ["parallel", "api", "store", "search", "local", "fleet", "serve", "scale", "speakers"]
REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results.json"
CHART = REPO_ROOT / "bench" / "speedup.png"
REPORT = REPO_ROOT / "BENCHMARKS.md"
WARM_IMPORTS = (
    "flows.ingest", "gent_disagreement_rag.cli", "gent_disagreement_rag.search", "gent_disagreement_rag.orchestration.flows",
    "gent_disagreement_rag.providers.embedders.openai", "gent_disagreement_rag.providers.embedders.local_minilm",
    "gent_disagreement_rag.providers.transcribers.deepgram", "gent_disagreement_rag.providers.transcribers.local_whisper",
    "prefect.flow_engine", "prefect.task_engine", "prefect.server.api.server", "prefect.cli", "uvicorn", "asyncpg",
    "tests.support.fakeapi", "bench.parallel", "bench.search_latency", "bench.local_pipeline",
    "bench.serve_latency", "bench.scale", "gent_disagreement_rag.serve.web", "gent_disagreement_rag.serve.mcp_server", "mcp",
)


def bytecode_cache(folder: Path) -> Path:
    """A bytecode cache for this run and its child processes.

    This machine sets PYTHONDONTWRITEBYTECODE=1 and the venv holds no .pyc files, so every new Python
    process compiles every module it imports from source (`import gent_disagreement_rag.cli`: 4.8 s
    instead of ~1 s under load). A user's machine caches bytecode after the first run, so the
    benchmarks do too, in a private folder (PYTHONPYCACHEPREFIX, kept in the temp dir between runs): the
    venv is left untouched.
    """
    prefix = Path(tempfile.gettempdir()) / "gdr-bench-pycache"  # kept between runs: later runs start warm
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
    sys.pycache_prefix = str(prefix)
    sys.dont_write_bytecode = False
    code = "import importlib\nfor m in %r:\n    importlib.import_module(m)" % (WARM_IMPORTS,)
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, capture_output=True)
    return prefix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only this section (repeatable)")
    parser.add_argument("--scale-steps", help="section 9: only these comma-separated steps (bench/scale.py run); "
                        "the others keep their last figures")
    parser.add_argument("--quick", action="store_true", help="smaller runs of every section (development)")
    parser.add_argument("--report-only", action="store_true", help="rewrite BENCHMARKS.md and the chart from bench/results.json")
    args = parser.parse_args()
    if args.report_only:
        from bench.report import write_chart, write_report

        results = json.loads(RESULTS.read_text())
        write_chart(results, CHART)
        write_report(results, REPORT, CHART)
        return
    sections = args.only or SECTIONS
    started = time.perf_counter()
    # Sections not run here (with --only) keep their last results.
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("sections", {})

    with tempfile.TemporaryDirectory(prefix="gdr-bench-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        from bench.harness import load, log, machine

        log(f"bench: sections {', '.join(sections)}{' (quick)' if args.quick else ''}; warming a bytecode cache")
        bytecode_cache(folder)
        results["machine"] = machine()
        results["machine"]["load_at_start"] = load()
        results["machine"]["quick"] = args.quick
        scale_steps = set(args.scale_steps.split(",")) if args.scale_steps else None
        run_sections(sections, folder, results, quick=args.quick, scale_steps=scale_steps)
    results["machine"]["total_minutes"] = round((time.perf_counter() - started) / 60, 1)
    results["machine"]["finished"] = time.strftime("%Y-%m-%d %H:%M")
    RESULTS.write_text(json.dumps(results, indent=1, default=str) + "\n")
    from bench.report import write_chart, write_report

    write_chart(results, CHART)
    write_report(results, REPORT, CHART)
    log(f"bench: done in {results['machine']['total_minutes']} min; wrote {REPORT.name}, {CHART.relative_to(REPO_ROOT)}, "
        f"{RESULTS.relative_to(REPO_ROOT)}")


def run_sections(sections: list[str], folder: Path, results: dict[str, Any], *, quick: bool,
                 scale_steps: set[str] | None = None) -> None:
    from bench import api_efficiency, fleet, parallel, search_latency, store_throughput
    from bench.harness import RemoteFakeAPI, embedded_postgres, load, log, prefect_server

    def record(name: str, value: dict[str, Any], t0: float) -> None:
        value["_meta"] = {"minutes": round((time.perf_counter() - t0) / 60, 1), "load_after": load(),
                          "when": time.strftime("%Y-%m-%d %H:%M"), "quick": quick}
        results["sections"][name] = value
        RESULTS.write_text(json.dumps(results, indent=1, default=str) + "\n")  # partial results survive a crash

    needs_db = any(s in sections for s in ("parallel", "api", "store", "search", "fleet", "serve", "scale"))
    if needs_db:
        with embedded_postgres() as pg:
            results["machine"].update(pg.versions())
            if "fleet" in sections:  # its own world: episodes that sleep, no providers
                t0 = time.perf_counter()
                log("== 7. spreading episodes over machines: three engines")
                record("fleet", fleet.run(pg, folder, quick=quick), t0)
            if any(s in sections for s in ("parallel", "api")):
                with RemoteFakeAPI() as fake:
                    seconds = parallel.durations(8, 1, 3) if quick else parallel.durations()
                    world = parallel.make_world(folder / "world", seconds)
                    fake.add_audio(world["audio"])
                    if "parallel" in sections or "api" in sections:
                        log("bench: starting the Prefect API server (ephemeral mode, on the embedded Postgres)")
                        with prefect_server(pg, "ephemeral") as server:
                            log(f"bench: Prefect API ready in {server.startup_seconds} s")
                            if "parallel" in sections:
                                t0 = time.perf_counter()
                                log("== 1. parallel scaling")
                                record("parallel", parallel.run(pg, fake, world, server, folder, quick=quick), t0)
                            if "api" in sections:
                                t0 = time.perf_counter()
                                log("== 2. API efficiency")
                                record("api", api_efficiency.run(pg, fake, world, server, folder, quick=quick), t0)
            if "store" in sections:
                t0 = time.perf_counter()
                log("== 3. store throughput")
                record("store", store_throughput.run(pg, quick=quick), t0)
            if "search" in sections:
                t0 = time.perf_counter()
                log("== 4. search latency and recall")
                record("search", search_latency.run(pg, quick=quick), t0)
            if "serve" in sections:
                from bench import serve_latency

                t0 = time.perf_counter()
                log("== 8. gdr web and gdr mcp")
                record("serve", serve_latency.run(pg, quick=quick), t0)
            if "scale" in sections:
                from bench import scale

                t0 = time.perf_counter()
                log("== 9. a million chunks")
                record("scale", scale.run(pg, quick=quick, steps=scale_steps,
                                          previous=results["sections"].get("scale")), t0)
    if "local" in sections:
        from bench import local_pipeline

        t0 = time.perf_counter()
        log("== 5. local pipeline (offline Whisper + MiniLM)")
        record("local", local_pipeline.run(quick=quick), t0)
    if "speakers" in sections:
        from bench import speaker_draws

        t0 = time.perf_counter()
        log("== 10. speakers on drawn voices (pitch, ECAPA, shipped)")
        record("speakers", speaker_draws.run(quick=quick), t0)


if __name__ == "__main__":
    main()
