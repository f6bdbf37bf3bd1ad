"""Evaluation measures that need no Ray: PSNR, MS-SSIM, texture ratio and BD-rate, the classical
baselines, and the perceptual metrics from their published weights. Nothing here runs to
encode or decode."""
