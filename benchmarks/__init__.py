"""Benchmarks: training throughput against other LSTM implementations, and serving latency. Ratios, not times."""
