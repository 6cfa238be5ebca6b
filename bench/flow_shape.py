"""Section 1, flow shape: the `ingest` flow before the restructure (commit 5af7cd7: async `episode_pipeline`
subflows fanned out with asyncio.gather under a Semaphore, the stages on a 128-thread pool) against the
current one (a sync `episode` task mapped over a ThreadPoolTaskRunner, each running a sync subflow of sync
stage tasks), on the same world, in alternating rounds (old, new, old, new, ...).

    uv run python -m bench.flow_shape                    # the old commit extracted with `git archive`
    uv run python -m bench.flow_shape --old PATH         # or a checkout of it

Each side runs its own checkout's section-1 child (`bench.parallel --child`; the old one calls
`asyncio.run(ingest(...))`) in a fresh process with that checkout first on the path, against the one fake
API, embedded Postgres and ephemeral Prefect server started here: 16 episodes at 4 and 16 workers with the
section-1 latency model, and the zero-latency overhead per episode (the flow minus that side's own bare
sequence, one episode at a time, wall and CPU). Before measuring, a dry child of each side prints the files
its package and its `ingest` flow come from. Writes results.json["sections"]["flow_shape"] and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import parallel
from bench.harness import REPO_ROOT, Postgres, PrefectServer, RemoteFakeAPI, load, log

OLD_COMMIT = "5af7cd7"
WORKERS = [4, 16]
ROUNDS = 3
ADOPT_MARGIN = 0.02  # the issue: keep the new shape unless it loses more than this much efficiency at 4 workers
SIDES = ("old", "new")
SCALING_FIELDS = ("wall", "ideal", "efficiency", "cpu_flow", "cpu_server", "cpu_postgres", "first_request_after",
                  "peak_listen_concurrency", "load_before")
OVERHEAD_FIELDS = ("per_episode_flow", "per_episode_bare", "per_episode_overhead", "per_episode_overhead_cpu",
                   "flow_cpu", "bare_cpu")

_WHERE = """
import inspect, json
import gent_disagreement_rag, flows.ingest
flow = flows.ingest.ingest.fn
print(json.dumps({"package": gent_disagreement_rag.__file__, "flows.ingest": flows.ingest.__file__,
                  "ingest flow": inspect.getsourcefile(flow), "ingest is async": inspect.iscoroutinefunction(flow)}))
"""


def extract(commit: str, folder: Path) -> Path:
    """The tree of `commit` of this repository, in `folder` (no worktree: nothing in .git changes)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def where(code: Path | None, env: dict[str, str]) -> dict[str, Any]:
    """What a child of this side imports: the package's and the flow's files (also warms its bytecode)."""
    root = (code or REPO_ROOT).resolve()
    done = subprocess.run([sys.executable, "-c", _WHERE], env=parallel.code_env(env, code), cwd=root,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the dry import in {root} failed:\n{done.stderr[-3000:]}")
    found = json.loads(done.stdout.splitlines()[-1])
    strays = [f for f in found.values() if isinstance(f, str) and not Path(f).resolve().is_relative_to(root)]
    if strays:
        raise RuntimeError(f"a child meant to run {root} imports {strays}")
    return {k: str(Path(f).resolve().relative_to(root)) if isinstance(f, str) else f for k, f in found.items()}


def _median(rows: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in rows if r.get(field) is not None]
    return round(statistics.median(values), 3) if values else None


def run(pg: Postgres, fake: RemoteFakeAPI, world: dict[str, Any], server: PrefectServer, folder: Path, old: Path,
        *, rounds: int = ROUNDS, workers: list[int] = WORKERS) -> dict[str, Any]:
    code = {"old": old, "new": None}
    env = parallel.child_env(world, fake.fields, server.api_url, "", folder)
    out: dict[str, Any] = {
        "old_commit": OLD_COMMIT, "episodes": len(world["audio"]), "workers": workers, "rounds": rounds,
        "imports": {side: where(code[side], env) for side in SIDES},
        "per_round": {side: {"scaling": {str(w): [] for w in workers}, "overhead": []} for side in SIDES},
    }
    for side in SIDES:
        log(f"  flow shape: {side} imports {out['imports'][side]}")
    for r in range(1, rounds + 1):
        for w in workers:
            for side in SIDES:
                row = parallel.scaling(pg, fake, world, server, folder, [w], code=code[side])[0]
                if not row["ok"]:
                    raise RuntimeError(f"flow shape: the {side} flow failed at {w} workers: {row['message']}")
                out["per_round"][side]["scaling"][str(w)].append(
                    {"round": r, **{f: row[f] for f in SCALING_FIELDS}, "load_after": load()})
                log(f"  flow shape round {r}, {side}, {w} workers: efficiency {row['efficiency']:.3f}")
        for side in SIDES:
            o = parallel.overhead(pg, fake, world, server, folder, code=code[side])
            out["per_round"][side]["overhead"].append({"round": r, **{f: o[f] for f in OVERHEAD_FIELDS}, "load": o["load"]})
            log(f"  flow shape round {r}, {side}, zero latency: {o['per_episode_overhead']:.3f} s wall, "
                f"{o['per_episode_overhead_cpu']:.3f} s CPU per episode over bare")
    out["median"] = {
        side: {
            "scaling": {w: {f: _median(rows, f) for f in SCALING_FIELDS} for w, rows in out["per_round"][side]["scaling"].items()},
            "overhead": {f: _median(out["per_round"][side]["overhead"], f) for f in OVERHEAD_FIELDS},
        }
        for side in SIDES
    }
    first = str(workers[0])
    delta = out["median"]["new"]["scaling"][first]["efficiency"] - out["median"]["old"]["scaling"][first]["efficiency"]
    out["efficiency_delta"] = {"workers": workers[0], "new_minus_old": round(delta, 3), "margin": ADOPT_MARGIN,
                               "adopt_new": delta >= -ADOPT_MARGIN}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, help=f"a checkout of commit {OLD_COMMIT} (default: extracted with git archive)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--workers", type=int, action="append", help=f"repeatable (default: {WORKERS})")
    args = parser.parse_args()
    from bench.harness import embedded_postgres, prefect_server
    from bench.report import write_chart, write_report
    from bench.run_all import CHART, REPORT, RESULTS, bytecode_cache

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gdr-bench-shape-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)
        old = args.old.resolve() if args.old else extract(OLD_COMMIT, folder / "old")
        log(f"flow shape: old code in {old}; warming a bytecode cache")
        bytecode_cache(folder)
        with embedded_postgres() as pg, RemoteFakeAPI() as fake:
            world = parallel.make_world(folder / "world", parallel.durations())
            fake.add_audio(world["audio"])
            with prefect_server(pg, "ephemeral") as server:
                log(f"flow shape: Prefect API ready in {server.startup_seconds} s")
                out = run(pg, fake, world, server, folder, old, rounds=args.rounds, workers=args.workers or WORKERS)
    out["_meta"] = {"minutes": round((time.perf_counter() - started) / 60, 1), "load_after": load(),
                    "when": time.strftime("%Y-%m-%d %H:%M"), "quick": False}
    results = json.loads(RESULTS.read_text())
    results["sections"]["flow_shape"] = out
    RESULTS.write_text(json.dumps(results, indent=1, default=str) + "\n")
    write_chart(results, CHART)
    write_report(results, REPORT, CHART)
    d = out["efficiency_delta"]
    log(f"flow shape: new - old efficiency at {d['workers']} workers {d['new_minus_old']:+.3f} "
        f"({'within' if d['adopt_new'] else 'beyond'} the {ADOPT_MARGIN} margin)")


if __name__ == "__main__":
    main()
