"""jetstandby's benchmarks, run through ``jetstandby bench ...``.

Each benchmark measures its baseline in the same run, interleaves the variants run by run,
and reports medians and ratios. Timing targets live here, never in tests.
"""
