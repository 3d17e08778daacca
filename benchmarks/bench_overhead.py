"""Plugin overhead over the raw ``huggingface_hub`` client, against a local server with a fixed delay.

Same as ``diffpo bench overhead``; run ``python benchmarks/bench_overhead.py --help`` for the options.
Prints a table of median milliseconds per call and what each integration adds, plus the time of
64 concurrent ``aalign`` calls against one. Targets: <= 0.5 ms added per call; <= 1.2x.
"""

from __future__ import annotations

import sys

from diffpo_integrations.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "overhead", *sys.argv[1:]]))
