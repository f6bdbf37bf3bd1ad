"""Trainers of the project's own models, one module per trainer: nothing here is imported to encode or decode."""
