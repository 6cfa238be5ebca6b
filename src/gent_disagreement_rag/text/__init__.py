"""Text: token counts, speaker-attributed chunks, the quality gate and the export formats, as pure
functions of a Transcript (no I/O besides the tokenizer's vocabulary)."""
