"""tidegate's benchmarks: `make bench` (`python -m bench.run`) measures, on the sandbox stack, how
fast a bad canary is caught, how many deployments one worker carries, what a deployment costs and
what the orchestration itself costs, and writes docs/benchmarks.md with its plot.

Benchmarks report figures; they assert nothing about timings (tests/test_bench_smoke.py runs a
tiny version of each to keep them working).
"""
