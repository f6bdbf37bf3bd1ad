"""Semantic residual coding: captions, the residual text between them, and prompt optimisation.

Nothing here runs at decode time: a decoder only reads the residual from the bitstream.
"""
