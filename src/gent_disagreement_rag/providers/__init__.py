"""Providers: what turns audio into a transcript (transcribers/) and text into vectors (embedders/),
behind two small protocols, plus what the providers and the feed reader share (HTTP errors, audio
length, prices, one-time model loading)."""
