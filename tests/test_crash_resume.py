"""A run killed (SIGKILL) while storing, while transcribing, or while a stage's cache record is written, and a
full disk while exporting: what was paid for is not paid again, nothing is half-written, a torn cache record is a
miss for its stage only.

The `gdr` CLI runs in a subprocess that is killed for real; Postgres, Prefect and the fake HTTP APIs are real."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest

from gent_disagreement_rag.ingest.context import RunContext
from gent_disagreement_rag.ingest.plan import plan_episodes
from gent_disagreement_rag.ingest.sequence import episode_config
from gent_disagreement_rag.ingest.stages import register_catalogue
from gent_disagreement_rag.storage import segments as segment_store
from gent_disagreement_rag.storage.database import Database
from tests.support.fakeapi import (
    EMBEDDINGS,
    containing,
    fake_embedding,
)
from tests.support.waiting import wait_for
from tests.support.world import GDR, MODEL_ID, World, backends, script_transcript, task_runs


@pytest.mark.slow
def test_sigkill_while_storing_then_resume(world: World) -> None:
    ids = world.catalogue([f"S-{i}" for i in range(6)])
    with Database.from_settings(world.settings) as db:
        segment_store.ensure_model(db, MODEL_ID, "openai", "text-embedding-3-small", 1536)
    with psycopg.connect(world.url) as locker:
        # Holding the model's row blocks each store transaction at its embeddings COPY: segments already
        # copied, nothing committed. The kill lands there.
        locker.execute("SELECT 1 FROM embedding_models WHERE model_id = %s FOR UPDATE", (MODEL_ID,))
        proc = world.spawn("ingest", "-j", "3", name="killed")
        wait_for(lambda: backends(world, "wait_event_type = 'Lock' AND query LIKE 'COPY embeddings%'") == 3
                 or proc.poll() is not None, what="three episodes storing")
        assert proc.poll() is None, world.output("killed")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_for(lambda: backends(world) == 0, what="the killed process's sessions to end")

    assert set(world.statuses().values()) == {"pending"}
    assert world.sql("SELECT count(*) FROM segments") == [(0,)]  # the half-done transactions were rolled back
    world.assert_consistent()
    paid = {e: world.listen_counts()[e] for e in ids}
    assert paid == {"S-0": 1, "S-1": 1, "S-2": 1, "S-3": 0, "S-4": 0, "S-5": 0}

    rerun = world.gdr("ingest", "-j", "3")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert set(world.statuses().values()) == {"processed"}
    world.assert_consistent()
    # Transcriptions and embeddings done before the kill were not paid for again.
    assert world.listen_counts() == {e: 1 for e in ids}
    assert len(world.api.requests_to(EMBEDDINGS)) == 6
    assert world.ledger("transcribe") == world.ledger("embed") == {e: 1 for e in ids}


@pytest.mark.slow
def test_sigkill_while_transcribing_then_resume(world: World) -> None:
    ids = world.catalogue([f"R-{i}" for i in range(6)])
    slow_ids = ids[3:]
    for e in slow_ids:
        world.api.add_audio(world.audio(e), seconds=120)  # answered after 120 * 0.25 = 30 s
    world.api.deepgram_latency = (0.0, 0.25)
    proc = world.spawn("ingest", "-j", "3", name="killed")
    wait_for(lambda: proc.poll() is not None or (
        list(world.statuses().values()).count("processed") == 3 and
        sum(world.listen_counts()[e] for e in slow_ids) == 3), what="three processed, three transcribing")
    assert proc.poll() is None, world.output("killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: backends(world) == 0, what="the killed process's sessions to end")
    assert world.statuses() == {**{e: "processed" for e in ids[:3]}, **{e: "pending" for e in slow_ids}}
    world.assert_consistent()

    world.api.deepgram_latency = (0.0, 0.0)
    rerun = world.gdr("ingest", "-j", "3")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert set(world.statuses().values()) == {"processed"}
    world.assert_consistent()
    # Finished episodes were not touched again; the three cut off mid-request were asked once more.
    assert world.listen_counts() == {**{e: 1 for e in ids[:3]}, **{e: 2 for e in slow_ids}}
    assert len(world.api.requests_to(EMBEDDINGS)) == 6
    assert world.ledger("transcribe") == world.ledger("embed") == {e: 1 for e in ids}


def stage_records(world: World, markers: dict[str, str]) -> dict[tuple[str, str], Path]:
    """The latest Prefect result record in the world's stage cache for each (stage, episode) of the transcribe,
    format, export and embed stages: each record read with Prefect's own deserializer and told apart by what it
    holds (the episode's marker, its export paths, or the fake's vector for its chunk)."""
    from prefect.results import ResultRecord

    kinds = {"TranscriptionResult": "transcribe", "FormattedEpisode": "format", "dict": "export", "EmbeddingBatch": "embed"}
    found: dict[tuple[str, str], Path] = {}
    paths = sorted((world.settings.home / "cache").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    records = {p: ResultRecord.deserialize(p.read_bytes()).result for p in paths}
    chunk_texts = {e: [c.text for c in r.chunks] for r in records.values() if type(r).__name__ == "FormattedEpisode"
                   for e, m in markers.items() if m in repr(r)}
    for path, result in records.items():
        if isinstance(result, list):  # the voices stage's (the speakers' voices): not one of the stages torn here
            continue
        stage = kinds[type(result).__name__]
        for e, marker in markers.items():
            if stage == "embed":
                mine = np.allclose(result.vectors[0], fake_embedding(chunk_texts[e][0], result.vectors.shape[1]), atol=1e-6)
            else:
                mine = (f"/{e}." if stage == "export" else marker) in repr(result)
            if mine:
                found[stage, e] = path
    return found


def last_task_state(name: str) -> str:
    return max(task_runs(name), key=lambda run: run.expected_start_time).state_name


def test_a_torn_stage_cache_record_is_a_miss_and_only_that_stage_runs_again(world: World) -> None:
    # Prefect writes a result record with a plain open("wb") + write: a kill in between leaves a prefix of it.
    torn = {"K-T": "transcribe", "K-F": "format", "K-X": "export", "K-E": "embed"}
    markers = {e: f"marker{i}x" for i, e in enumerate(world.catalogue(list(torn)))}
    for e, marker in markers.items():
        script_transcript(world, e, marker)
    for args in (["ingest"], ["ingest", "--force"]):  # the export's key counts its files: a rerun sets it for good
        done = world.gdr(*args)
        assert done.returncode == 0, done.stdout + done.stderr
    texts = {e: world.sql("SELECT text FROM segments WHERE episode_id = %s ORDER BY position", e) for e in torn}
    records = stage_records(world, markers)
    assert len(records) == 16
    world.api.clear_requests()
    for e, stage in torn.items():
        whole = records[stage, e].read_bytes()
        records[stage, e].write_bytes(whole[: len(whole) // 2])

    rerun = world.gdr("ingest", "--force")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert set(world.statuses().values()) == {"processed"}
    world.assert_consistent()
    log = (world.settings.home / "logs" / "ingest.log").read_text()
    for e, stage in torn.items():  # each torn record named in a warning
        assert f"stage cache record {records[stage, e]} is unreadable" in log, (e, stage)
    # Only the torn stage ran again; the paid ones asked their provider once more, nothing else did.
    assert world.listen_counts() == {"K-T": 1}
    embedded = Counter(e for r in world.api.requests_to(EMBEDDINGS) for e, m in markers.items() if containing(m)(r))
    assert embedded == {"K-E": 1}
    for e, torn_stage in torn.items():
        states = {stage: last_task_state(f"{stage}-{e}") for stage in ("transcribe", "format", "export", "embed")}
        assert states == {s: "Completed" if s == torn_stage else "Cached" for s in states}, (e, states)
    assert stage_records(world, markers) == records  # each torn record written again, whole, in its place
    assert {e: world.sql("SELECT text FROM segments WHERE episode_id = %s ORDER BY position", e) for e in torn} == texts


@pytest.mark.slow
def test_sigkill_while_a_stage_cache_record_is_written_then_resume(world: World) -> None:
    [e] = world.catalogue(["K-0"])
    settings = world.settings
    with RunContext.open(settings) as ctx:
        register_catalogue(ctx)
        [job] = plan_episodes(settings, ctx.db, episode_ids=[e]).jobs
        record = settings.result_storage_path / episode_config(ctx, job).keys(job.audio_sha256).transcribe
    # strace kills `gdr ingest` (SIGKILL) as it enters the first write(2) to the transcription's record: the
    # file is created and empty, as a kill between Prefect's open and write leaves it. (With --seccomp-bpf,
    # strace missed that write.)
    killed = subprocess.run(["strace", "-f", "-o", "/dev/null", "-P", str(record), "-e", "trace=write",
                             "-e", "inject=write:signal=KILL", str(GDR), "ingest"],
                            env=world.env(), cwd=world.tmp, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL or killed.returncode == 128 + signal.SIGKILL, killed
    wait_for(lambda: backends(world) == 0, what="the killed process's sessions to end")
    assert record.stat().st_size == 0
    assert world.statuses() == {e: "pending"} and world.listen_counts() == {e: 1}
    world.assert_consistent()

    rerun = world.gdr("ingest")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"stage cache record {record} is unreadable" in (settings.home / "logs" / "ingest.log").read_text()
    assert world.statuses() == {e: "processed"}
    world.assert_consistent()
    assert world.listen_counts() == {e: 2} and len(world.api.requests_to(EMBEDDINGS)) == 1
    assert world.ledger("transcribe") == {e: 2} and world.ledger("embed") == {e: 1}  # both requests were paid
    from prefect.results import ResultRecord

    assert type(ResultRecord.deserialize(record.read_bytes()).result).__name__ == "TranscriptionResult"


@pytest.fixture
def full_disk(world: World) -> Iterator[Callable[[bool], None]]:
    """TRANSCRIPTS_DIR on a tmpfs of its own (1 MiB); `full(True)` fills it to the last byte with a filler
    file, so the kernel answers the next write with ENOSPC, `full(False)` deletes the filler."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs needs root (.ci/run runs as root)")
    folder = world.transcripts_dir
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)

    def full(on: bool) -> None:
        if not on:
            (folder / "filler").unlink()
            return
        with open(folder / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        assert shutil.disk_usage(folder).free == 0

    try:
        yield full
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_full_disk_while_exporting_fails_the_episode_and_keeps_the_old_version(world: World, full_disk) -> None:
    world.catalogue(["F-0", "F-1"])
    world.write_catalogue([{"episode_id": "F-0", "file_name": "F-0.mp3", "speakers_map": {"0": "Oldname"}}])
    first = world.gdr("ingest")
    assert first.returncode == 0, first.stdout + first.stderr
    old_files = {p.name: p.read_bytes() for p in world.transcripts_dir.iterdir()}
    old_segments = world.sql("SELECT position, speaker, text FROM segments ORDER BY position")
    assert len(old_files) == 5 and "Oldname" in {speaker for _, speaker, _ in old_segments}

    # New speaker names make F-0 stale (re-chunked, exported, embedded, stored again); F-1 is new.
    world.write_catalogue([{"episode_id": e, "file_name": f"{e}.mp3", "speakers_map": {"0": "Newname"}}
                           for e in ("F-0", "F-1")])
    full_disk(True)
    failed = world.gdr("ingest")

    assert failed.returncode == 1, failed.stdout + failed.stderr
    rows = world.rows()
    for e in ("F-0", "F-1"):
        assert rows[e].status == "failed"
        assert rows[e].last_error == (f"OSError: [Errno 28] No space left on device: "
                                      f"'{world.transcripts_dir.resolve() / f'{e}.raw.json'}'"), rows[e].last_error
    files = {p.name: p.read_bytes() for p in world.transcripts_dir.iterdir() if p.name != "filler"}
    assert files == old_files  # the old version whole, nothing of the new, no temporary file left
    assert world.sql("SELECT position, speaker, text FROM segments ORDER BY position") == old_segments
    assert world.sql("SELECT DISTINCT episode_id FROM segments") == [("F-0",)]

    full_disk(False)
    rerun = world.gdr("ingest")

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert world.statuses() == {"F-0": "processed", "F-1": "processed"}
    world.assert_consistent()
    speakers = {speaker for (speaker,) in world.sql("SELECT DISTINCT speaker FROM segments")}
    assert "Newname" in speakers and "Oldname" not in speakers
    assert "Newname" in (world.transcripts_dir / "F-0.md").read_text()
    assert world.listen_counts() == {"F-0": 1, "F-1": 1}  # the transcriptions came from the stage cache
    assert world.ledger("transcribe") == {"F-0": 1, "F-1": 1}
