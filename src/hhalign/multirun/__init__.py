"""Commands over several runs: ``sweep`` (a grid of settings sharing stages), ``compare`` (runs side by side)
and ``seeds`` (one config at several seeds, aggregated)."""
