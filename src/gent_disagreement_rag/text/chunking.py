"""Speaker-attributed retrieval chunks from a provider-neutral transcript.

Words are grouped into speaker turns; short back-channel turns ("yeah", "mh-hm") are folded into
the turn they interrupt so they never become chunks of their own; each turn is then cut into
chunks under a token budget, preferring sentence ends, then pauses, then the largest gap between
words. Chunks tile the words exactly (every word once, in order), so a chunk can always be traced
back to its timestamps.

Rules (all parameters live in `ChunkerConfig`, which with CHUNKER_VERSION forms the cache key):
- a word without a speaker label takes the speaker of the word before it (the first labelled one
  at the start); a transcript without labels is one speaker, speakers_map["0"] or "Speaker 0";
- a back-channel is a turn of at most `backchannel_max_words` words lasting at most
  `backchannel_max_seconds`. It joins the previous turn and is glued to the sentence before it;
  at the very start it joins (and is glued to) the next turn. After that, consecutive turns of the
  same speaker are one turn;
- a chunk's speaker is the speaker of most of its words (ties go to the turn's owner); `speakers`
  lists everyone heard in it, so back-channel speakers are kept;
- the budget is `max_tokens` tokens and `max_seconds` of audio (first word's start to last word's end),
  so a citation points at a moment, not at minutes of a monologue;
- a turn that fits the budget is one chunk. Otherwise, within the longest run of words that fits,
  the cut goes after the last sentence end, else after the last pause >= `pause_seconds`, else at
  the largest gap in the second half of the run (the latest, when gaps tie: a plain split between
  words). Cuts before a glued back-channel are avoided unless there is no other place to cut;
- adjacent chunks of the same speaker are merged when the merged chunk still fits the budget;
- a single word longer than the whole budget is a chunk on its own (the only way over budget).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..settings import Settings
from ..transcript import Transcript, Word, ends_with

CHUNKER_VERSION = "1"
DEFAULT_MAX_TOKENS: int = Settings.model_fields["chunk_max_tokens"].default
DEFAULT_MAX_SECONDS: float = Settings.model_fields["chunk_max_seconds"].default

TokenCounter = Callable[[str], int]

_CJK = re.compile(
    "[\u2e80-\u2fdf\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003134f]"
)


@dataclass(frozen=True, slots=True)
class ChunkerConfig:
    """Everything besides the transcript that decides the chunks."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    max_seconds: float = DEFAULT_MAX_SECONDS
    pause_seconds: float = 0.6
    backchannel_max_words: int = 3
    backchannel_max_seconds: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ChunkerConfig:
        """The chunker CHUNK_MAX_TOKENS and CHUNK_MAX_SECONDS ask for (every command builds it here)."""
        return cls(max_tokens=settings.chunk_max_tokens, max_seconds=settings.chunk_max_seconds)

    def cache_key(self) -> dict[str, Any]:
        """Parameters plus CHUNKER_VERSION; the caller adds the token counter's name."""
        return {"chunker_version": CHUNKER_VERSION, **asdict(self)}


@dataclass(frozen=True, slots=True)
class Chunk:
    """A retrieval unit: contiguous words [first_word, last_word] of one dominant speaker."""

    position: int
    speaker: str
    speaker_id: int | None
    speakers: tuple[str, ...]
    start: float
    end: float
    text: str
    token_count: int
    first_word: int
    last_word: int


@dataclass(frozen=True, slots=True)
class Turn:
    """Consecutive words [first_word, last_word] of one speaker, back-channels included."""

    speaker: str
    speaker_id: int | None
    first_word: int
    last_word: int
    text: str


def speaker_name(speaker_id: int | None, speakers_map: dict[str, str]) -> str:
    """Display name; None (an unlabelled transcript) is speaker "0"."""
    key = "0" if speaker_id is None else str(speaker_id)
    return speakers_map.get(key) or f"Speaker {key}"


def is_cjk(char: str) -> bool:
    return char >= "\u2e80" and bool(_CJK.match(char))  # below U+2E80 (Latin and the like), no regex


def is_char_segmented(words: Sequence[Word]) -> bool:
    """True when most words are single CJK characters (e.g. Deepgram's Mandarin base model)."""
    singles = sum(1 for w in words if len(text := w.display.strip()) == 1 and is_cjk(text))
    return singles * 2 > len(words)


def join_words(texts: Iterable[str], *, char_segmented: bool = False) -> str:
    """Words as readable text, deciding the space per boundary.

    No space touches a CJK character, and in a character-segmented transcript two single
    characters join directly too, so spelled-out Latin letters and digits read "covid19", "300".
    """
    out: list[str] = []
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if out and not _glued(out[-1], text, char_segmented):
            out.append(" ")
        out.append(text)
    return "".join(out)


def _glued(previous: str, word: str, char_segmented: bool) -> bool:
    """Whether two stripped, non-empty words join without a space (see join_words)."""
    return is_cjk(previous[-1]) or is_cjk(word[0]) or (char_segmented and len(previous) == 1 and len(word) == 1)


class WordJoiner:
    """`join_words` one word at a time, for text that grows word by word (caption cues: joining the whole
    cue again at every word cost more CPU than the rest of the export)."""

    def __init__(self, char_segmented: bool = False):
        self.text = ""
        self.char_segmented = char_segmented
        self._last_word = ""

    def joined(self, word: str) -> str:
        """The text with `word` appended; the joiner itself is unchanged."""
        word = word.strip()
        if not word or not self.text:
            return self.text or word
        return self.text + ("" if _glued(self._last_word, word, self.char_segmented) else " ") + word

    def add(self, word: str) -> None:
        self.text = self.joined(word)
        self._last_word = word.strip() or self._last_word


def _displays(words: Sequence[Word], first: int, last: int) -> Iterable[str]:
    return (w.display for w in words[first : last + 1])


def _effective_speakers(words: Sequence[Word]) -> list[int | None]:
    first = next((w.speaker for w in words if w.speaker is not None), None)
    ids: list[int | None] = []
    for w in words:
        ids.append(w.speaker if w.speaker is not None else (ids[-1] if ids else first))
    return ids


def _turn_ranges(ids: Sequence[int | None]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for i, sid in enumerate(ids):
        if ranges and ids[i - 1] == sid:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    return ranges


def speaker_turns(transcript: Transcript, speakers_map: dict[str, str] | None = None) -> list[Turn]:
    """Every change of speaker starts a turn (for readable transcripts; chunks fold back-channels)."""
    words = transcript.words
    ids = _effective_speakers(words)
    names = transcript.names(speakers_map)
    segmented = is_char_segmented(words)
    return [
        Turn(speaker_name(ids[a], names), ids[a], a, b, join_words(_displays(words, a, b), char_segmented=segmented))
        for a, b in _turn_ranges(ids)
    ]


@dataclass(slots=True)
class _Group:
    """A turn with the back-channels folded into it; `owned` is False while it holds only back-channels."""

    first: int
    last: int
    owner: int | None
    owned: bool


class _Chunker:
    def __init__(
        self, transcript: Transcript, speakers_map: dict[str, str], config: ChunkerConfig, count: TokenCounter
    ):
        self.words = transcript.words
        self.names = speakers_map
        self.config = config
        self.count = count
        self.char_segmented = is_char_segmented(self.words)
        self.ids = _effective_speakers(self.words)
        self.glued: set[int] = set()  # b in glued: never cut between word b and b + 1, if avoidable

    def text(self, first: int, last: int) -> str:
        return join_words(_displays(self.words, first, last), char_segmented=self.char_segmented)

    def tokens(self, first: int, last: int) -> int:
        return self.count(self.text(first, last))

    def end(self, first: int, last: int) -> float:
        """When words first..last end: the latest end, never before the first word's start."""
        return max(max(w.end for w in self.words[first : last + 1]), self.words[first].start)

    def fits(self, first: int, last: int) -> bool:
        """Words first..last are within the budget (seconds checked first: no text to count)."""
        span = self.end(first, last) - self.words[first].start
        return span <= self.config.max_seconds and self.tokens(first, last) <= self.config.max_tokens

    def gap(self, b: int) -> float:
        return self.words[b + 1].start - self.words[b].end

    def is_backchannel(self, first: int, last: int) -> bool:
        cfg = self.config
        span = self.words[last].end - self.words[first].start
        return last - first + 1 <= cfg.backchannel_max_words and span <= cfg.backchannel_max_seconds

    def groups(self) -> list[_Group]:
        groups: list[_Group] = []
        for first, last in _turn_ranges(self.ids):
            speaker = self.ids[first]
            backchannel = self.is_backchannel(first, last)
            current = groups[-1] if groups else None
            if current is None:
                groups.append(_Group(first, last, speaker, owned=not backchannel))
            elif backchannel:
                self.glued.update(range(first - 1, last))
                current.last = last
            elif not current.owned:
                self.glued.update(range(current.first, first))
                current.last, current.owner, current.owned = last, speaker, True
            elif current.owner == speaker:
                current.last = last
            else:
                groups.append(_Group(first, last, speaker, owned=True))
        return groups

    def longest_fit(self, first: int, last: int) -> int:
        """Last index e in [first, last] with words first..e within budget (at least `first`).

        Galloping then bisecting, so a long monologue costs O(log chunk) counts per chunk, each
        of about one chunk of text.
        """

        def fits(end: int) -> bool:
            return self.fits(first, end)

        lo, step = first, 1
        while lo < last and fits(probe := min(lo + step, last)):
            lo, step = probe, step * 2
        if lo == last:
            return lo
        too_long = min(lo + step, last)
        return lo + bisect_left(range(lo + 1, too_long), True, key=lambda end: not fits(end))

    def cut(self, first: int, fit: int) -> int:
        """Where to end a chunk that starts at `first` and may run to `fit` (see module rules)."""
        bounds = [b for b in range(first, fit + 1) if b not in self.glued] or list(range(first, fit + 1))
        sentence = [b for b in bounds if ends_with(self.words[b].display)]
        if sentence:
            return sentence[-1]
        pauses = [b for b in bounds if self.gap(b) >= self.config.pause_seconds]
        if pauses:
            return pauses[-1]
        late = [b for b in bounds if b >= first + (fit - first) // 2] or bounds
        return max(late, key=lambda b: (round(self.gap(b), 2), b))  # 10 ms: below timestamp precision

    def pack(self, group: _Group) -> list[tuple[int, int]]:
        ranges, first = [], group.first
        while first <= group.last:
            fit = self.longest_fit(first, group.last)
            last = fit if fit == group.last else self.cut(first, fit)
            ranges.append((first, last))
            first = last + 1
        return ranges

    def dominant(self, first: int, last: int, owner: int | None) -> int | None:
        counts = Counter({owner: 0})  # counted first, so the owner wins ties (most_common is stable)
        counts.update(self.ids[first : last + 1])
        return counts.most_common(1)[0][0]

    def chunks(self) -> list[Chunk]:
        merged: list[tuple[int, int, int | None]] = []
        for group in self.groups():
            for first, last in self.pack(group):
                speaker = self.dominant(first, last, group.owner)
                # Both halves are mostly `speaker`, so the merged chunk is too.
                if merged and merged[-1][2] == speaker and self.fits(merged[-1][0], last):
                    merged[-1] = (merged[-1][0], last, speaker)
                    continue
                merged.append((first, last, speaker))
        return [self.chunk(i, *m) for i, m in enumerate(merged)]

    def chunk(self, position: int, first: int, last: int, speaker: int | None) -> Chunk:
        words = self.words[first : last + 1]
        heard = dict.fromkeys(speaker_name(s, self.names) for s in self.ids[first : last + 1])
        text = self.text(first, last)
        return Chunk(
            position=position,
            speaker=speaker_name(speaker, self.names),
            speaker_id=speaker,
            speakers=tuple(heard),
            start=words[0].start,
            end=self.end(first, last),
            text=text,
            token_count=self.count(text),
            first_word=first,
            last_word=last,
        )


def chunk_transcript(
    transcript: Transcript,
    speakers_map: dict[str, str] | None = None,
    *,
    max_tokens: int | None = None,
    config: ChunkerConfig | None = None,
    count_tokens: TokenCounter | None = None,
) -> list[Chunk]:
    """Retrieval chunks tiling the transcript's words; no words gives no chunks.

    `max_tokens` overrides `config.max_tokens`; `count_tokens` defaults to cl100k (the embedding
    models' tokenizer), imported only when needed.
    """
    config = config or ChunkerConfig()
    if max_tokens is not None:
        config = replace(config, max_tokens=max_tokens)
    if not transcript.words:
        return []
    if count_tokens is None:
        from .tokens import count_tokens as cl100k

        count_tokens = cl100k
    return _Chunker(transcript, transcript.names(speakers_map), config, count_tokens).chunks()
