"""Who speaks when, and what each voice sounds like: ECAPA-TDNN embeddings of the stretches of speech, clustered
with pitch as a second opinion, to the count a speakers_map gives or to an estimated one.

On voices drawn at random from espeak-ng (bench/speaker_draws.py) the old local path collapsed without a map:
it separated voices by pitch alone (diarize.py), up to 4. Here:
- Pitch is a penalty, not a wall: two stretches whose median pitch lies more than PITCH_FREE semitones apart
  lose PITCH_WEIGHT of cosine similarity per semitone beyond it; a hard constraint (speaker_embeddings.py) cannot
  be undone when the pitch tracker errs.
- Without a count, clusters merge while they are more alike than SAME_VOICE.
- Centring the embeddings on the episode (a cheap stand-in for a trained back-end) was tried and dropped: with
  one dominant speaker the mean is that speaker, and the others' clusters fall apart (BENCHMARKS.md section 10).
Stretches of at least MIN_EMBED_SECONDS are clustered by average linkage: to the count when the episode's
speakers_map gives it (no cap below it), else while the closest pair of clusters is more alike than
SAME_VOICE (calibrated on the tuning seed of bench/speaker_draws.py). Shorter stretches ("yeah") take the most
similar cluster. Each voice's library embedding is the mean of its stretch embeddings: that is what another
episode's voices are compared with (storage/voices.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .diarize import span_pitches
from .speaker_embeddings import MODEL_VERSION, SAMPLE_RATE, embed

MODEL = f"ecapa-tdnn-v{MODEL_VERSION}"  # the name voice embeddings are stored under (a new model: a new name)
MIN_EMBED_SECONDS = 0.8
MAX_EMBED_SECONDS = 6.0  # longer stretches are embedded from their middle: the same voice, less compute
PITCH_FREE = 1.0  # semitones of median-pitch difference that cost nothing (one voice's pitch wanders)
PITCH_WEIGHT = 0.03  # similarity lost per semitone beyond PITCH_FREE
SAME_VOICE = 0.5  # raw cosine above which two clusters are one voice when the count is not given


def diarizer_options() -> dict[str, float]:
    """What shapes the labels besides the audio and the model (in the local transcriber's options, hence its cache key)."""
    return {"min_embed_seconds": MIN_EMBED_SECONDS, "max_embed_seconds": MAX_EMBED_SECONDS, "pitch_free": PITCH_FREE,
            "pitch_weight": PITCH_WEIGHT, "same_voice": SAME_VOICE}


@dataclass(frozen=True)
class Diarization:
    labels: list[int]  # a speaker per span, numbered by first appearance
    embeddings: np.ndarray  # (speakers, 192) unit-length mean raw embedding of each speaker (zeros: none long enough)
    seconds: list[float]  # speech time per speaker


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _penalty(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    gap = np.abs(a[:, None] - b[None, :])
    return np.where(np.isnan(gap), 0.0, PITCH_WEIGHT * np.maximum(0.0, gap - PITCH_FREE))


def _cluster(sim: np.ndarray, speakers: int | None) -> np.ndarray:
    """Average-linkage clusters of a similarity matrix: down to `speakers` clusters, or while above SAME_VOICE."""
    n = len(sim)
    sim = sim.astype(np.float64).copy()
    np.fill_diagonal(sim, -np.inf)
    labels, sizes = np.arange(n), np.ones(n)
    for clusters in range(n, 1, -1):
        i, j = np.unravel_index(np.argmax(sim), sim.shape)
        if (speakers is not None and clusters <= speakers) or (speakers is None and sim[i, j] <= SAME_VOICE):
            break
        merged = (sizes[i] * sim[i] + sizes[j] * sim[j]) / (sizes[i] + sizes[j])
        sim[i, :], sim[:, i] = merged, merged
        sim[i, i] = -np.inf
        sim[j, :], sim[:, j] = -np.inf, -np.inf
        sizes[i] += sizes[j]
        labels[labels == j] = i
    return np.unique(labels, return_inverse=True)[1]


def diarize(
    audio: np.ndarray, spans: Sequence[tuple[float, float]], speakers: int | None,
    session: Callable[[], ort.InferenceSession],
) -> Diarization:
    """Speakers of the (start, end) spans (seconds) of 16 kHz `audio`: exactly `speakers` when given (fewer only if
    there are fewer stretches), estimated otherwise."""
    if not spans:
        return Diarization([], np.zeros((0, 192), np.float32), [])
    pitch = span_pitches(audio, SAMPLE_RATE, spans)
    long_enough = [i for i, (s, e) in enumerate(spans) if e - s >= MIN_EMBED_SECONDS]
    if not long_enough:  # nothing to tell voices by: everything is one speaker
        return Diarization([0] * len(spans), np.zeros((1, 192), np.float32), [sum(e - s for s, e in spans)])
    model = session()
    raw = np.stack([embed(_middle(audio, *spans[i]), model) for i in long_enough])
    sim = raw @ raw.T - _penalty(pitch[long_enough], pitch[long_enough])
    labels = _cluster(sim, speakers)
    k = labels.max() + 1
    centroids = _unit(np.stack([raw[labels == c].mean(axis=0) for c in range(k)]))
    centroid_pitch = np.array([np.nanmedian(p) if (~np.isnan(p := pitch[long_enough][labels == c])).any() else np.nan
                               for c in range(k)])
    result = np.empty(len(spans), dtype=int)
    result[long_enough] = labels
    for i, (start, end) in enumerate(spans):
        if end - start < MIN_EMBED_SECONDS:
            piece = audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
            scores = centroids @ embed(piece, model) if len(piece) >= 400 else np.zeros(k)
            result[i] = int(np.argmax(scores - _penalty(pitch[i : i + 1], centroid_pitch)[0]))
    _, first_seen = np.unique(result, return_index=True)
    order = np.argsort(np.argsort(first_seen))  # cluster -> speaker number by first appearance
    numbered = order[result]
    embeddings = np.zeros((k, raw.shape[1]), np.float32)
    for c in range(k):
        embeddings[order[c]] = _unit(raw[labels == c].mean(axis=0))
    seconds = [0.0] * k
    for (start, end), speaker in zip(spans, numbered, strict=True):
        seconds[speaker] += end - start
    return Diarization(numbered.tolist(), embeddings, seconds)


def _middle(audio: np.ndarray, start: float, end: float) -> np.ndarray:
    extra = max(0.0, (end - start) - MAX_EMBED_SECONDS) / 2
    return audio[int((start + extra) * SAMPLE_RATE) : int((end - extra) * SAMPLE_RATE)]


# --- the voice library: what each speaker of a transcript sounds like, and whose voice it is -------------------

# Cosine to a known voice's nearest sample (whose pitch agrees, PITCH_AGREE) from which a speaker gets its name. On
# the tuning seed's sweep (BENCHMARKS.md, "Speakers on voices nobody picked") 0.9 with 1 semitone was the pair that
# named no known voice wrongly and at most 2% of strangers; lower thresholds named more known voices and more
# strangers. A known host heard in two clean 25-second dialogues scores 0.92-0.93.
SAME_PERSON = 0.9
MAX_SPANS_PER_SPEAKER = 12  # a speaker's embedding averages at most this many of their longest stretches


# A name is given only when the speaker's median pitch is within this many semitones of the named sample's: two
# voices that ECAPA finds alike (two espeak-ng voices of one accent; two people of one region) mostly differ in
# pitch, while one voice's median pitch moves little between recordings. With cosine alone, the threshold that named
# no known voice wrongly on the tuning seed still gave a name to 20% of strangers; with pitch, 1%.
PITCH_AGREE = 1.0


@dataclass(frozen=True)
class SpeakerVoice:
    speaker: int
    embedding: np.ndarray  # unit length, raw (uncentred) mean of the speaker's stretch embeddings
    seconds: float  # their speech time in the episode
    pitch: float | None = None  # median pitch (semitones, 12 log2 Hz) of the embedded stretches; None: unvoiced


@dataclass(frozen=True)
class KnownVoice:
    """A named voice's samples (one per episode it was named in): embeddings (n, dim) and median pitches (n,), NaN
    where a sample has none."""

    embeddings: np.ndarray
    pitches: np.ndarray


def _median_pitch(audio: np.ndarray, spans: Sequence[tuple[float, float]]) -> float | None:
    pitches = span_pitches(audio, SAMPLE_RATE, spans)
    return float(np.nanmedian(pitches)) if (~np.isnan(pitches)).any() else None


def speaker_voices(
    audio: np.ndarray, spans: Sequence[tuple[float, float]], speakers: Sequence[int],
    session: Callable[[], ort.InferenceSession],
) -> list[SpeakerVoice]:
    """Each labelled speaker's voice from their stretches of at least MIN_EMBED_SECONDS (the longest
    MAX_SPANS_PER_SPEAKER); a speaker with none long enough gets no voice (too little to recognise)."""
    out = []
    for speaker in sorted(set(speakers)):
        mine = [(e - s, s, e) for (s, e), k in zip(spans, speakers, strict=True) if k == speaker]
        chosen = sorted((m for m in mine if m[0] >= MIN_EMBED_SECONDS), reverse=True)[:MAX_SPANS_PER_SPEAKER]
        # The audio itself must hold the stretch: a transcript's times can run past a shorter file's end.
        pieces = [p for _, s, e in chosen if len(p := _middle(audio, s, e)) >= MIN_EMBED_SECONDS * SAMPLE_RATE]
        if not pieces:
            continue
        model = session()
        vectors = np.stack([embed(piece, model) for piece in pieces])
        pitch = _median_pitch(np.concatenate(pieces), [(0.0, sum(len(p) for p in pieces) / SAMPLE_RATE)])
        out.append(SpeakerVoice(speaker, _unit(vectors.mean(axis=0)), float(sum(m[0] for m in mine)), pitch))
    return out


def likeness(voice: SpeakerVoice, known: KnownVoice, pitch_agree: float = PITCH_AGREE) -> float:
    """Cosine of the voice to the known voice's nearest sample whose pitch agrees (a sample or a voice without a
    pitch agrees); -1 when none does."""
    scores = known.embeddings @ voice.embedding
    if voice.pitch is not None:
        gap = np.abs(known.pitches - voice.pitch)
        scores = np.where(np.isnan(gap) | (gap <= pitch_agree), scores, -1.0)
    return float(np.max(scores))


def name_voices(voices: Sequence[SpeakerVoice], library: dict[str, KnownVoice], threshold: float = SAME_PERSON,
                pitch_agree: float = PITCH_AGREE) -> dict[int, str]:
    """Speaker number -> the name of the known voice most alike (likeness), when at least `threshold`; one name
    per speaker and one speaker per name (the most alike pair first)."""
    pairs = [(likeness(v, known, pitch_agree), v.speaker, name) for v in voices for name, known in library.items()]
    named: dict[int, str] = {}
    for score, speaker, name in sorted(pairs, reverse=True):
        if score < threshold:
            break
        if speaker not in named and name not in named.values():
            named[speaker] = name
    return named
