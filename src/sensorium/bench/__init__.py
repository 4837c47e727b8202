"""Benchmarks of eP-ALM's efficiency: every figure a ratio against its baseline, measured in the same process.

``python -m sensorium.bench SUITE`` with SUITE one of generation, training, encode, gpu, serve, adapters, floor,
compile, ladder (the GPU session: comparisons and decode benchmarks in one go).
"""
