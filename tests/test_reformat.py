"""`gdr format`: rebuilds the exports of a stored raw response into an out-dir, says what is wrong with its input,
and its chunks run from their first word's start to their last word's end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.builders import deepgram_fixture
from tests.support.cli import run


def compact(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("name", ["phone_call_463s_2spk_nova3_utterances.json", "nasa_eva_170s_3spk_nova2_utterances.json"])
def test_gdr_format_chunks_run_from_their_first_words_start_to_their_last_words_end(tmp_path: Path, name: str) -> None:
    """The chunks tile the raw response's words; each chunk's words are found by their text alone."""
    from typer.testing import CliRunner

    from gent_disagreement_rag.cli import app

    raw = json.loads(deepgram_fixture(name).read_text())
    (tmp_path / "ep.raw.json").write_text(json.dumps(raw))
    result = CliRunner().invoke(app, ["format", str(tmp_path / "ep.raw.json"), "--max-tokens", "60"])
    assert result.exit_code == 0, result.output
    chunks = json.loads((tmp_path / "ep.chunks.json").read_text())
    words = raw["results"]["channels"][0]["alternatives"][0]["words"]
    cursor = 0
    for chunk in chunks:
        first, text = cursor, ""
        while text != compact(chunk["text"]):
            assert cursor < len(words) and compact(chunk["text"]).startswith(text), (chunk, text)
            text += compact(words[cursor].get("punctuated_word") or words[cursor]["word"])
            cursor += 1
        assert (chunk["start"], chunk["end"]) == (words[first]["start"], words[cursor - 1]["end"]), chunk
    assert cursor == len(words) and len(chunks) > 5


def test_gdr_format_writes_into_the_out_dir_and_says_what_is_wrong_with_its_input(tmp_path: Path) -> None:
    """The chunking of `gdr format` is tested in test_regressions.py (Deepgram) and test_providers_local.py (Whisper);
    here the rest of the command."""
    raw = tmp_path / "ep.raw.json"
    shutil.copyfile(deepgram_fixture("nasa_eva_170s_3spk_nova2_utterances.json"), raw)
    out = tmp_path / "out"
    done = run(["gdr", "format", str(raw), "-o", str(out), "--speakers-map", '{"0": "Ann"}'], tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ep.chunks.json", "ep.md", "ep.raw.json", "ep.srt", "ep.vtt"]
    chunks = json.loads((out / "ep.chunks.json").read_text())
    assert done.stdout.startswith(f"{len(chunks)} chunks from {raw}") and len(chunks) > 1
    assert "Ann" in {c["speaker"] for c in chunks} and not (tmp_path / "ep.chunks.json").exists()

    (tmp_path / "bad.raw.json").write_text('{"results": ')
    for args, message in [
        ([str(tmp_path / "nothing.raw.json")], f"{tmp_path / 'nothing.raw.json'}: no such file"),
        ([str(tmp_path / "bad.raw.json")], f"{tmp_path / 'bad.raw.json'}: not valid JSON: Expecting value at line 1"),
        ([str(raw), "--speakers-map", "{0: Ann}"], "--speakers-map: not valid JSON: Expecting property name enclosed "
                                                   "in double quotes"),
        ([str(raw), "--speakers-map", '["Ann"]'], '--speakers-map: expected an object of names, like {"0": "Ann", '
                                                  '"1": "Bob"}'),
        ([str(raw), "--speakers-map", '{"speaker_1": "Ann"}'], "--speakers-map: key 'speaker_1' is not a speaker "
                                                               "number: keys are the transcriber's speaker numbers, "
                                                               'like {"0": "Ann", "1": "Bob"}'),
    ]:
        failed = run(["gdr", "format", *args], tmp_path)
        assert (failed.returncode, failed.stdout) == (1, ""), args
        assert " ".join(failed.stderr.split()) == f"error: {message}", args
