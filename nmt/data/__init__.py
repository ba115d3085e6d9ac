"""Data: SentencePiece vocabularies, parallel text, the prepared memory-mapped store, batching
and the dataset catalog."""
