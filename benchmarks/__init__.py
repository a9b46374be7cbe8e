"""Reproducible benchmarks; each writes JSON, markdown and a PNG under benchmarks/results/."""
