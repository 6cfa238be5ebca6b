"""Speaker turns from pitch alone: cluster stretches of speech by their pitch.

This separates only voices whose pitch differs clearly (a man and a woman, say); speaker_embeddings.py
tells voices of one pitch apart when the number of speakers is known, and uses these groups as a
constraint. Each stretch of speech gets the median pitch (in semitones) of its voiced frames (YIN), the
medians are clustered with optimal 1-D k-means for k = 2..max_speakers, and the largest k whose clusters are
all clearly apart wins: neighbouring centres at least MIN_SEMITONES and MIN_SEPARATION pooled standard
deviations apart, every cluster holding at least MIN_STRETCHES stretches and MIN_SHARE of them. Otherwise
everything is speaker 0: a wrong split would put one person's words under another's name, which is worse
than no split. So two voices of similar pitch (two men) stay one speaker.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FRAME_SECONDS = 0.04
HOP_SECONDS = 0.01
F0_MIN, F0_MAX = 60.0, 400.0
YIN_THRESHOLD = 0.15  # a frame is voiced when its normalised difference dips below this
SILENCE_POWER = 1e-5  # mean square below -50 dBFS: no pitch
BLOCK_FRAMES = 3000  # pitch is computed 30 s at a time to bound memory
MIN_SEMITONES = 4.0
MIN_SEPARATION = 4.0
MIN_STRETCHES = 3  # per speaker, and
MIN_SHARE = 0.05  # of the stretches with a pitch


def pitch_track(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Pitch in semitones (12 * log2 Hz) of every 10 ms frame, NaN where unvoiced (YIN)."""
    frame, hop = int(FRAME_SECONDS * sample_rate), int(HOP_SECONDS * sample_rate)
    if len(audio) < frame:
        return np.full(0, np.nan)
    lo, hi = int(sample_rate / F0_MAX), int(sample_rate / F0_MIN)
    lags = np.arange(hi + 1)
    frames = np.lib.stride_tricks.sliding_window_view(audio, frame)[::hop]
    out = np.full(len(frames), np.nan)
    for start in range(0, len(frames), BLOCK_FRAMES):
        block = frames[start : start + BLOCK_FRAMES].astype(np.float64)
        autocorr = np.fft.irfft(np.abs(np.fft.rfft(block, n=2 * frame)) ** 2)[:, : hi + 1]
        energy = np.cumsum(np.square(block), axis=1)
        head = energy[:, frame - 1 - lags]  # sum of x[j]^2 for j < frame - lag
        tail = energy[:, -1:] - np.concatenate([np.zeros((len(block), 1)), energy[:, lags[1:] - 1]], axis=1)
        diff = (head + tail - 2.0 * autocorr)[:, 1:] / (frame - lags[1:])  # mean of (x[j] - x[j+lag])^2
        normalised = diff * lags[1:] / np.maximum(np.cumsum(diff, axis=1), 1e-12)
        below = normalised[:, lo - 1 :] < YIN_THRESHOLD
        voiced = below.any(axis=1) & (energy[:, -1] > SILENCE_POWER * frame)
        lag = lo + np.argmax(below, axis=1)
        out[start : start + len(block)] = np.where(voiced, 12 * np.log2(sample_rate / lag), np.nan)
    return out


def span_pitches(audio: np.ndarray, sample_rate: int, spans: Sequence[tuple[float, float]]) -> np.ndarray:
    """The median pitch (semitones) of each (start, end) span in seconds; NaN for a span without voiced frames."""
    track = pitch_track(audio, sample_rate)
    out = np.full(len(spans), np.nan)
    for i, (start, end) in enumerate(spans):
        values = track[int(start / HOP_SECONDS) : int(end / HOP_SECONDS) + 1]
        if (~np.isnan(values)).any():
            out[i] = np.nanmedian(values)
    return out


def _kmeans(x: np.ndarray, k: int) -> np.ndarray:
    """Optimal 1-D k-means (dynamic programming over the sorted values): a quiet speaker with few
    stretches gets a cluster of their own, where Lloyd's iterations would split a talkative one instead."""
    order = np.argsort(x)
    ordered = x[order]
    n = len(x)
    sums = np.concatenate([[0.0], np.cumsum(ordered)])
    squares = np.concatenate([[0.0], np.cumsum(ordered**2)])
    cost = np.full((k + 1, n + 1), np.inf)
    cost[0, 0] = 0.0
    split = np.zeros((k + 1, n + 1), dtype=int)
    for c in range(1, k + 1):
        for end in range(c, n + 1):
            starts = np.arange(c - 1, end)  # the last cluster is ordered[start:end]
            sse = squares[end] - squares[starts] - (sums[end] - sums[starts]) ** 2 / (end - starts)
            total = cost[c - 1, starts] + sse
            best = int(np.argmin(total))
            cost[c, end], split[c, end] = total[best], starts[best]
    labels, end = np.empty(n, dtype=int), n
    for c in range(k, 0, -1):
        start = split[c, end]
        labels[order[start:end]] = c - 1
        end = start
    return labels


def _clearly_apart(x: np.ndarray, labels: np.ndarray, k: int) -> bool:
    """Every cluster big enough, and each at least MIN_SEMITONES and MIN_SEPARATION pooled deviations from the next."""
    clusters = sorted((x[labels == j] for j in range(k)), key=np.mean)
    if min(len(c) for c in clusters) < max(MIN_STRETCHES, MIN_SHARE * len(x)):
        return False
    for low, high in zip(clusters, clusters[1:], strict=False):  # neighbouring pairs
        gap = high.mean() - low.mean()
        spread = np.sqrt((low.var() * len(low) + high.var() * len(high)) / (len(low) + len(high)))
        if gap < MIN_SEMITONES or gap < MIN_SEPARATION * spread:
            return False
    return True


def assign_speakers(
    audio: np.ndarray, sample_rate: int, spans: Sequence[tuple[float, float]], max_speakers: int
) -> list[int]:
    """A speaker number per (start, end) span in seconds, numbered in order of first appearance.

    A span without voiced frames takes the speaker of the span before it (or after it, at the start).
    """
    medians = span_pitches(audio, sample_rate, spans)
    known = np.flatnonzero(~np.isnan(medians))
    best = None
    for k in range(2, min(max_speakers, len(known) // MIN_STRETCHES) + 1):
        labels = _kmeans(medians[known], k)
        if _clearly_apart(medians[known], labels, k):
            best = labels
    if best is None:
        return [0] * len(spans)
    nearest_known = np.maximum.accumulate(np.where(np.isnan(medians), -1, np.arange(len(spans))))
    labels = np.zeros(len(spans), dtype=int)
    labels[known] = best
    labels = labels[np.where(nearest_known < 0, known[0], nearest_known)]
    _, first_seen = np.unique(labels, return_index=True)
    return np.argsort(np.argsort(first_seen))[labels].tolist()
