"""Synthesised speech with known words, voices and turn times (espeak-ng), and the word error rate; shared by
the local-provider tests and bench/local_pipeline.py."""

from __future__ import annotations

import io
import subprocess
import wave
from pathlib import Path

import jiwer

# espeak-ng 1.51 ignores a variant after "en-gb" ("en-gb+f3" is still the male voice); Whisper base
# understands the American female variant best (WER 6 % against 20 % for "en+f3").
VOICES = {0: ("en-us", "50"), 1: ("en-us+f3", "50")}  # (voice, pitch): about 105 Hz and 200 Hz
DIALOGUE = [
    (0, "Welcome back to the show. Today we are talking about why experts disagree."),
    (1, "Thank you for having me. It is a question that matters to all of us."),
    (0, "Can you give us an example?"),
    (1, "Sure. Think about the weather. Two models can look at the same data and give different answers."),
    (0, "So how should people decide who to trust?"),
    (1, "Look at track records, and look for people who admit when they were wrong."),
    (0, "That sounds like good advice for everyone."),
    (1, "It is the best signal we have."),
]
LONG_PAUSE_AFTER = 3  # a 2.5 s silence after this turn, the rest are 0.6 s
Turns = list[tuple[float, float, int]]  # (start, end, voice) in seconds
WORDS_ONLY = jiwer.Compose(
    [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(), jiwer.ReduceToListOfListOfWords()]
)


def word_error_rate(reference: str, hypothesis: str) -> float:
    return jiwer.wer(reference, hypothesis, reference_transform=WORDS_ONLY, hypothesis_transform=WORDS_ONLY)


def speak(text: str, voice: str, pitch: str) -> tuple[bytes, int]:
    """16-bit mono PCM and its sample rate, from espeak-ng."""
    command = ["espeak-ng", "-v", voice, "-p", pitch, "--stdout", text]
    wav = subprocess.run(command, check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        return reader.readframes(reader.getnframes()), rate  # espeak's streamed header overstates the length


def synthesize_dialogue(
    turns: list[tuple[int, str]], out: Path, pauses: list[float], voices: dict[int, tuple[str, str]] = VOICES
) -> Turns:
    """Speak each (voice, text) turn, then its pause, into `out` (WAV, or anything ffmpeg writes)."""
    pcm, truth, rate = bytearray(), [], 22050
    for (voice, text), pause in zip(turns, pauses, strict=True):
        speech, rate = speak(text, *voices[voice])
        start = len(pcm) / 2 / rate
        pcm += speech
        truth.append((start, len(pcm) / 2 / rate, voice))
        pcm += bytes(2 * int(pause * rate))
    wav = out.with_suffix(".wav")
    with wave.open(str(wav), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(bytes(pcm))
    if out != wav:
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-b:a", "64k", str(out)], check=True)
        wav.unlink()
    return truth


def speaker_at(truth: Turns, t: float) -> int:
    """The voice of the turn at (or nearest to) time t."""
    return min(truth, key=lambda turn: max(turn[0] - t, t - turn[1], 0.0))[2]
