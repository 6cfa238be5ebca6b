"""Exports: files and shapes, parseable SRT/WebVTT, atomic writes, offline re-formatting."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings

from gent_disagreement_rag import files
from gent_disagreement_rag.files import write_atomic
from gent_disagreement_rag.ingest.reformat import reformat_raw
from gent_disagreement_rag.ingest.stages import write_exports
from gent_disagreement_rag.settings import Settings
from gent_disagreement_rag.text.chunking import (
    chunk_transcript,
)
from gent_disagreement_rag.text.exports import (
    CAPTION_LINE_CHARS,
    CAPTION_MAX_SECONDS,
    Cue,
    caption_cues,
    format_timestamp,
    render_exports,
    to_srt,
    to_vtt,
)
from gent_disagreement_rag.transcript import Transcript, Word
from tests.support.builders import segment
from tests.support.transcripts import FIXTURE_FILES, FIXTURES, load_fixture, transcripts

pytestmark = pytest.mark.fast  # no Postgres, no Prefect, no Whisper, no subprocess (TESTING.md)

PHONE = FIXTURES / "phone_call_463s_2spk_nova3_utterances.json"
SPEAKERS = {"0": "Tom", "1": "Beth"}
SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d{3})"
VTT_TIME = SRT_TIME.replace(",", r"\.")


def seconds(match: tuple[str, ...]) -> float:
    h, m, s, ms = map(int, match)
    return h * 3600 + m * 60 + s + ms / 1000


def parse_captions(text: str, time: str) -> list[tuple[float, float, list[str]]]:
    """(start, end, text lines) of every cue; fails on any malformed block."""
    cues = []
    for block in filter(None, text.strip().split("\n\n")):
        lines = block.split("\n")
        if lines[0] == "WEBVTT":
            continue
        if time == SRT_TIME:
            assert lines.pop(0) == str(len(cues) + 1)
        stamps = re.fullmatch(f"{time} --> {time}", lines[0])
        assert stamps, lines[0]
        groups = stamps.groups()
        cues.append((seconds(groups[:4]), seconds(groups[4:]), lines[1:]))
    return cues


def characters(texts: list[str]) -> str:
    """Every non-space character in order: what captions must keep of the words, however joined."""
    return re.sub(r"\s", "", "".join(texts))


def export_episode(folder: Path, stem: str, raw: dict, transcript: Transcript, chunks: list, title: str,
                   speakers_map: dict[str, str]) -> dict[str, Path]:
    return write_exports(folder, render_exports(stem, raw, transcript, chunks, title, speakers_map))


def assert_well_timed(cues: list[tuple[float, float, list[str]]]) -> None:
    assert cues
    for start, end, lines in cues:
        assert start <= end and 1 <= len(lines) <= 2
    assert all(a[0] <= b[0] and a[1] <= b[0] for a, b in pairwise(cues))


@pytest.fixture
def phone_export(tmp_path: Path) -> tuple[dict[str, Path], Transcript, list]:
    raw = json.loads(PHONE.read_text(encoding="utf-8"))
    transcript = load_fixture(PHONE)
    chunks = chunk_transcript(transcript, SPEAKERS)
    paths = export_episode(tmp_path / "out", "call", raw, transcript, chunks, "Customer call", SPEAKERS)
    return paths, transcript, chunks


def test_export_writes_five_files_and_no_temp_files(phone_export) -> None:
    paths, _, _ = phone_export
    assert {k: p.name for k, p in paths.items()} == {
        "raw": "call.raw.json",
        "chunks": "call.chunks.json",
        "markdown": "call.md",
        "srt": "call.srt",
        "vtt": "call.vtt",
    }
    out_dir = paths["raw"].parent
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in paths.values())
    assert json.loads(paths["raw"].read_text(encoding="utf-8")) == json.loads(PHONE.read_text(encoding="utf-8"))


def test_exports_are_readable_by_others_as_the_umask_allows(tmp_path: Path) -> None:
    """A user's umask 022 makes new files 0644: the exports (served by `gdr serve`, read by other tools and users)
    must be too, though they are staged in a temporary file that mkstemp creates 0600."""
    raw = json.loads(PHONE.read_text(encoding="utf-8"))
    transcript = load_fixture(PHONE)
    chunks = chunk_transcript(transcript, SPEAKERS)
    previous = os.umask(0o022)
    try:
        paths = export_episode(tmp_path / "out", "call", raw, transcript, chunks, "A phone call", SPEAKERS)
        reformatted = reformat_raw(paths["raw"], Settings(_env_file=None), out_dir=tmp_path / "again")
    finally:
        os.umask(previous)
    written = [*paths.values(), *reformatted.values()]
    assert len(written) == 10
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert modes == {name: "0o644" for name in modes}


def test_chunks_json_extends_the_speaker_text_shape(phone_export) -> None:
    paths, _, chunks = phone_export
    data = json.loads(paths["chunks"].read_text(encoding="utf-8"))
    assert len(data) == len(chunks)
    for item, chunk in zip(data, chunks):
        assert item == {
            "speaker": chunk.speaker,
            "text": chunk.text,
            "start": chunk.start,
            "end": chunk.end,
            "position": chunk.position,
            "token_count": chunk.token_count,
        }
    assert {item["speaker"] for item in data} == {"Tom", "Beth"}


def test_markdown_has_a_title_and_one_block_per_turn(phone_export) -> None:
    paths, _, _ = phone_export
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert markdown.startswith("# Customer call\n")
    headers = re.findall(r"^\*\*(Tom|Beth)\*\* \[(\d\d:\d\d:\d\d)\]$", markdown, flags=re.M)
    assert headers[:3] == [("Tom", "00:00:00"), ("Beth", "00:00:08"), ("Tom", "00:00:10")]
    assert all(a[0] != b[0] for a, b in pairwise(headers))
    assert "Hi. Thank you for calling Premier Phone Services." in markdown


def test_srt_and_vtt_parse_with_short_increasing_cues(phone_export) -> None:
    paths, _, _ = phone_export
    srt = paths["srt"].read_text(encoding="utf-8")
    srt_cues = parse_captions(srt, SRT_TIME)
    assert_well_timed(srt_cues)
    assert all(len(line) <= CAPTION_LINE_CHARS for _, _, lines in srt_cues for line in lines)
    # Only a single long word (a spoken 12-digit number here) may outlast the limit.
    assert all(end - start <= CAPTION_MAX_SECONDS or " " not in lines[-1] for start, end, lines in srt_cues)
    assert srt_cues[0][2][0].startswith("Tom: Hi.")

    vtt = paths["vtt"].read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n\n")
    vtt_cues = parse_captions(vtt, VTT_TIME)
    assert [c[:2] for c in vtt_cues] == [c[:2] for c in srt_cues]
    assert all(lines[0].startswith(("<v Tom>", "<v Beth>")) for _, _, lines in vtt_cues)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name.split("_")[0])
def test_captions_of_every_fixture_cover_every_word(path: Path, tmp_path: Path) -> None:
    transcript = load_fixture(path)
    assert characters([c.text for c in caption_cues(transcript)]) == characters([w.display for w in transcript.words])
    paths = export_episode(tmp_path, "ep", {}, transcript, [], path.stem, {})
    assert_well_timed(parse_captions(paths["srt"].read_text(encoding="utf-8"), SRT_TIME))
    assert_well_timed(parse_captions(paths["vtt"].read_text(encoding="utf-8"), VTT_TIME))


@settings(max_examples=40, deadline=None)
@given(transcripts())
def test_random_transcripts_give_valid_captions(transcript: Transcript) -> None:
    cues = caption_cues(transcript)
    assert not cues or cues[0].start == transcript.words[0].start
    assert all(c.start <= c.end for c in cues)
    assert all(a.start <= b.start and a.end <= b.start for a, b in pairwise(cues))
    assert characters([c.text for c in cues]) == characters([w.display for w in transcript.words])


def test_empty_transcript_exports_empty_captions(tmp_path: Path) -> None:
    paths = export_episode(tmp_path, "silence", {}, Transcript("deepgram", "nova-3", 3.0, []), [], "Silence", {})
    assert paths["srt"].read_text(encoding="utf-8") == ""
    assert paths["vtt"].read_text(encoding="utf-8") == "WEBVTT\n"
    assert json.loads(paths["chunks"].read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("value", "sep", "expected"),
    [
        (0.0, ",", "00:00:00,000"),
        (3661.5, ",", "01:01:01,500"),
        (59.9996, ".", "00:01:00.000"),
        (36000.25, ".", "10:00:00.250"),
        (75.4, None, "00:01:15"),
        (-0.001, ",", "00:00:00,000"),
    ],
)
def test_format_timestamp(value: float, sep: str | None, expected: str) -> None:
    assert format_timestamp(value, sep) == expected


def test_atomic_write_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "a.md"
    write_atomic(target, "old")
    write_atomic(target, "new ü")
    assert target.read_text(encoding="utf-8") == "new ü"
    assert [p.name for p in tmp_path.iterdir()] == ["a.md"]


@pytest.mark.parametrize("fail_in", ["fsync", "replace"])
def test_interrupted_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_in: str) -> None:
    target = tmp_path / "a.srt"
    write_atomic(target, "old")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(files.os, fail_in, crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, "new " * 10_000)
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.srt"]


def test_a_set_whose_last_file_cannot_be_written_replaces_none_of_them(tmp_path: Path) -> None:
    first, last = tmp_path / "e.raw.json", tmp_path / "blocked" / "e.vtt"
    write_atomic(first, "old")
    (tmp_path / "blocked").write_text("a file where the last one's folder should be")
    with pytest.raises(OSError):
        files.write_all_atomic({first: "new", last: "new"})
    assert first.read_text() == "old"  # written whole under a temporary name, never renamed into place, removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "e.raw.json"]


def test_reformat_raw_rebuilds_every_file_offline(tmp_path: Path) -> None:
    raw_path = tmp_path / "ep42.raw.json"
    shutil.copyfile(PHONE, raw_path)
    paths = reformat_raw(raw_path, Settings(_env_file=None, chunk_max_tokens=60), SPEAKERS)
    assert all(p.parent == tmp_path and p.exists() for p in paths.values())
    assert paths["chunks"].name == "ep42.chunks.json"
    chunks = json.loads(paths["chunks"].read_text(encoding="utf-8"))
    assert chunks and max(c["token_count"] for c in chunks) <= 60
    assert paths["markdown"].read_text(encoding="utf-8").startswith("# ep42\n")
    assert json.loads(raw_path.read_text(encoding="utf-8")) == json.loads(PHONE.read_text(encoding="utf-8"))


def test_reformat_raw_writes_into_another_directory(tmp_path: Path) -> None:
    paths = reformat_raw(PHONE, Settings(_env_file=None), None, tmp_path / "out")
    assert paths["raw"] == tmp_path / "out" / f"{PHONE.stem}.raw.json"
    assert json.loads(paths["chunks"].read_text(encoding="utf-8"))[0]["speaker"] == "Speaker 0"


def _spoken(*words: tuple[str, float, float], speaker: int = 0) -> list[Word]:
    return [Word(text, start, end, speaker=speaker) for text, start, end in words]


def _cues(words: list[Word]) -> list[tuple[float, float, str, str, bool]]:
    cues = caption_cues(Transcript("deepgram", "nova-3", 60.0, words), {"0": "Ann", "1": "Bo"})
    return [(c.start, c.end, c.speaker, c.text, c.new_speaker) for c in cues]


def test_a_pause_of_1_5_s_starts_a_new_cue_and_a_cue_ends_with_its_last_word() -> None:
    words = _spoken(("one", 0.0, 0.5), ("two", 0.5, 1.0), ("three", 2.5, 3.0), ("four", 3.0, 3.5), ("five", 4.9, 5.2))
    assert _cues(words) == [(0.0, 1.0, "Ann", "one two", True), (2.5, 5.2, "Ann", "three four five", False)]


def test_a_cue_lasts_at_most_7_seconds() -> None:
    words = _spoken(*((f"w{t}", float(t), t + 1.0) for t in range(10)))
    assert _cues(words) == [(0.0, 7.0, "Ann", "w0 w1 w2 w3 w4 w5 w6", True), (7.0, 10.0, "Ann", "w7 w8 w9", False)]


def test_a_cue_holds_two_full_lines_and_only_its_first_cue_carries_the_speakers_name() -> None:
    """"Ann: " counts against the first cue of a turn only: the second holds 4 words of 20 letters (two lines
    of 41 characters), which the name in front would push to three lines."""
    long = [c * 20 for c in "abcd"]
    words = _spoken(("hello", 0.0, 0.5), *((w, 2.5 + i / 2, 3.0 + i / 2) for i, w in enumerate(long)))
    assert _cues(words) == [(0.0, 0.5, "Ann", "hello", True), (2.5, 4.5, "Ann", " ".join(long), False)]
    cues = caption_cues(Transcript("deepgram", "nova-3", 60.0, words), {"0": "Ann"})
    assert to_srt(cues) == (
        "1\n00:00:00,000 --> 00:00:00,500\nAnn: hello\n\n"
        f"2\n00:00:02,500 --> 00:00:04,500\n{long[0]} {long[1]}\n{long[2]} {long[3]}\n"
    )


def test_character_segmented_cues_join_spelled_out_digits() -> None:
    chars = "我们有300元", "一共20个"
    words = _spoken(*((c, i / 5, i / 5 + 0.2) for i, c in enumerate(chars[0])),
                    *((c, 5 + i / 5, 5.2 + i / 5) for i, c in enumerate(chars[1])))
    assert [text for _, _, _, text, _ in _cues(words)] == ["我们有300元", "一共20个"]


def test_cues_keep_within_two_lines_even_for_words_with_tabs() -> None:
    """A tab is 8 columns wide once wrapped, so a short text with tabs can need more than two lines."""
    words = _spoken(*((f"a\tb\tc\td{i}", float(i), i + 0.5) for i in range(4)))
    srt = to_srt(caption_cues(Transcript("deepgram", "nova-3", 60.0, words), {"0": "Ann"}))
    assert all(len(block.split("\n")) - 2 <= 2 for block in srt.strip("\n").split("\n\n"))


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("中" * 30, ["中" * 21, "中" * 9]),  # CJK characters are twice as wide: 21 a line
        ("a中" * 23, ["a中" * 21, "a中" * 2]),  # half CJK: the full 42
        ("aab中中" * 10, ["aab中中" * 8 + "aa", "b中中" + "aab中中"]),  # 40 % CJK: 42
    ],
    ids=["cjk", "half-cjk", "mostly-latin"],
)
def test_caption_lines_hold_half_as_many_characters_for_mostly_cjk_text(text, lines) -> None:
    assert to_srt([Cue(0.0, 2.0, "A", text, False)]) == "1\n00:00:00,000 --> 00:00:02,000\n" + "\n".join(lines) + "\n"


def test_webvtt_names_each_cues_speaker_and_escapes_only_markup() -> None:
    cues = [Cue(1.5, 3.25, "O'Brien & Co", 'don\'t say <b> & "x"', True),
            Cue(3.25, 6.0, "O'Brien & Co", "abcdefghijklmnopqrst abcdefghijklmnopqrst uvwxyz", False)]
    assert to_vtt(cues) == (
        "WEBVTT\n\n"
        "00:00:01.500 --> 00:00:03.250\n<v O'Brien &amp; Co>don't say &lt;b&gt; &amp; \"x\"\n\n"
        "00:00:03.250 --> 00:00:06.000\n<v O'Brien &amp; Co>abcdefghijklmnopqrst abcdefghijklmnopqrst\nuvwxyz\n"
    )


def test_raw_export_is_the_providers_json_compact_and_chunks_are_indented(tmp_path) -> None:
    transcript = Transcript("deepgram", "nova-3", 1.0, _spoken(("café", 0.0, 1.0)))
    files = render_exports("ep", {"text": "café", "n": [1, 2]}, transcript, [segment(0, "Ann", 0.0, 1.0, "café", 2)], "T")
    assert files["raw"] == ("ep.raw.json", '{"text": "café", "n": [1, 2]}\n')
    assert files["chunks"] == ("ep.chunks.json", '[\n  {\n    "speaker": "Ann",\n    "text": "café",\n    "start": 0.0,\n'
                               '    "end": 1.0,\n    "position": 0,\n    "token_count": 2\n  }\n]\n')
