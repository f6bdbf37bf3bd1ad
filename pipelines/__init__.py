"""Pipelines and the ``resulic`` command line; each pipeline reads top to bottom as one chain of operators."""
