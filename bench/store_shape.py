"""Section 3, old vs new: the store path of commit 5af7cd7 (`store.store_episode`) against the current one
(`storage.segments.store_episode`), in alternating rounds (old, new, old, new, ...).

    uv run python -m bench.store_shape                    # the old commit extracted with `git archive`
    uv run python -m bench.store_shape --old PATH         # or a checkout of it

Each side runs its own checkout's section-3 `store` method (bench/store_throughput.py) in a fresh process
with that checkout first on the path, on the same embedded Postgres and the same episodes (the section's
generator, same seed): 10 episodes x 200 chunks at 384 and 1536 dims. Each round also times this checkout's
raw COPY into the same tables, the reference section 3 divides by. Writes results.json["sections"]["store_shape"].
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
from typing import Any

from bench import parallel
from bench.flow_shape import OLD_COMMIT, ROUNDS, SIDES, extract
from bench.harness import REPO_ROOT, Postgres, load, log

DIMS = (384, 1536)
EPISODES = 10

_CHILD = """
import json, sys
from pathlib import Path

import numpy as np

import gent_disagreement_rag
from bench import store_throughput as section
from bench.harness import Postgres

pg, methods = Postgres(Path(sys.argv[1]), sys.argv[2]), json.loads(sys.argv[3])
rng = np.random.default_rng(7)  # as section 3 draws its episodes
out = {"package": gent_disagreement_rag.__file__}
for dims in (384, 1536):
    episodes = [section.make_episode(rng, section.EPISODE_ROWS, dims) for _ in range(int(sys.argv[4]))]
    out[str(dims)] = {m: section._method(pg, m, dims, episodes) for m in methods}
print(json.dumps(out))
"""


def _child(pg: Postgres, code: Path | None, methods: list[str]) -> dict[str, Any]:
    root = (code or REPO_ROOT).resolve()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(pg.home), pg.admin_url, json.dumps(methods), str(EPISODES)],
                          env=parallel.code_env(dict(os.environ), code), cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the store child in {root} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.splitlines()[-1])
    if not Path(out["package"]).resolve().is_relative_to(root):
        raise RuntimeError(f"a child meant to run {root} imported {out['package']}")
    out["package"] = str(Path(out["package"]).resolve().relative_to(root))
    return out


def run(pg: Postgres, old: Path, *, rounds: int = ROUNDS) -> dict[str, Any]:
    code = {"old": old, "new": None}
    per_round: dict[str, dict[str, list[dict[str, Any]]]] = {side: {str(d): [] for d in DIMS} for side in [*SIDES, "raw COPY"]}
    imports = {}
    for r in range(1, rounds + 1):
        for side in SIDES:
            methods = ["store", "raw COPY"] if side == "new" else ["store"]
            out = _child(pg, code[side], methods)
            imports[side] = out["package"]
            for d in DIMS:
                for method, key in (("store", side), ("raw COPY", "raw COPY")):
                    if method in out[str(d)]:
                        m = out[str(d)][method]
                        per_round[key][str(d)].append({"round": r, "rows_per_second": round(m["rows"] / m["seconds"]),
                                                       "seconds": round(m["seconds"], 2), "load": load()})
            log(f"  store shape round {r}, {side}: " + ", ".join(
                f"{d}d {per_round[side][str(d)][-1]['rows_per_second']:,} rows/s" for d in DIMS))
    median = {key: {d: round(statistics.median(x["rows_per_second"] for x in rows)) for d, rows in by_dims.items()}
              for key, by_dims in per_round.items()}
    return {"old_commit": OLD_COMMIT, "episodes": EPISODES, "rounds": rounds, "imports": imports,
            "per_round": per_round, "median": median,
            "new_vs_old": {d: round(median["new"][d] / median["old"][d], 3) for d in median["new"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, help=f"a checkout of commit {OLD_COMMIT} (default: extracted with git archive)")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    from bench.harness import embedded_postgres
    from bench.report import write_report
    from bench.run_all import CHART, REPORT, RESULTS, bytecode_cache

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gdr-bench-store-") as tmp:
        folder = Path(tmp)
        old = args.old.resolve() if args.old else extract(OLD_COMMIT, folder / "old")
        log(f"store shape: old code in {old}; warming a bytecode cache")
        bytecode_cache(folder)
        with embedded_postgres() as pg:
            out = run(pg, old, rounds=args.rounds)
    out["_meta"] = {"minutes": round((time.perf_counter() - started) / 60, 1), "load_after": load(),
                    "when": time.strftime("%Y-%m-%d %H:%M"), "quick": False}
    results = json.loads(RESULTS.read_text())
    results["sections"]["store_shape"] = out
    RESULTS.write_text(json.dumps(results, indent=1, default=str) + "\n")
    write_report(results, REPORT, CHART)
    log(f"store shape: new / old median rows/s {out['new_vs_old']}")


if __name__ == "__main__":
    main()
