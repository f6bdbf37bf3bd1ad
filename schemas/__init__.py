"""Formats: the bitstream spec (bitstream_v1.md) and, with the archive pipeline, the Arrow schema."""
