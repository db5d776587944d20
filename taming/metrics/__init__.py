"""Reconstruction metrics: Inception/Fréchet distance, PSNR/SSIM, codebook usage, and the evaluator that combines them."""
