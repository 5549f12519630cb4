"""A local PDPJ look-alike for development, tests and benchmarks (a leaf: only the foundation)."""
