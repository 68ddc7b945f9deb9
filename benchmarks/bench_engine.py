"""End-to-end engine benchmarks: the same code as `nuwa-fast bench` (nuwa_fast/bench.py).

    python3 benchmarks/bench_engine.py --quick            # CI-sized, 30-40 s of CPU, under 2 min on a busy core
    python3 benchmarks/bench_engine.py                    # full tables; JSON in out/bench/ (--save-results: benchmarks/results/)
    python3 benchmarks/bench_engine.py --device cuda      # GPU, time-boxed (--budget-s, 60 s default)

See `python3 benchmarks/bench_engine.py --help` and nuwa_fast/bench.py for the methods.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nuwa_fast.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
