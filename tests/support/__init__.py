"""What tests and benchmarks share: test data builders, the fake Deepgram/OpenAI server, fixture paths."""
