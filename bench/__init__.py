"""Reproducible benchmarks (`make bench`); they print tables and never fail on a timing."""
