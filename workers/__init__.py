"""Embedding workers: the CLIP encoder, image decoding, ingestion and the queue loop."""
