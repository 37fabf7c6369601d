"""Datasets: categories in MVTec AD layout and the offline benchmarks built from registry packages."""
