"""Evaluation measures that need no Ray: the perceptual metrics from their published weights."""
