"""The side-by-side benchmark behind ``h5feed bench`` (installed as h5feed.benchmarks)."""
