"""Benchmarks: `repocomplete bench ...` (latency, lsp, context, quality) and micro-benchmarks of single parts.

They print figures (JSON with --json); they never assert. Every figure states the machine it came from.
"""
