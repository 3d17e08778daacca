"""``diffpo bench``: the engine benchmark (``engine``), the plugin-overhead benchmark (``overhead``) and the
gateway-overhead benchmark (``gateway``)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from diffpo_integrations.cli._common import fail

__all__ = ["ENGINE_SCRIPT", "register", "run"]

ENGINE_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_engine.py"
"""The engine benchmark script of a source checkout."""


def register(sub: Any) -> None:
    """Add the ``bench`` subcommand and its ``engine``, ``overhead`` and ``gateway`` forms."""
    parser = sub.add_parser("bench", help="run the benchmarks", description="Benchmarks that print ratios.")
    which = parser.add_subparsers(dest="bench", required=True, metavar="{engine,engines,overhead,gateway}")
    engine = which.add_parser(
        "engine",
        help="decoding speed of the local engine (runs benchmarks/bench_engine.py)",
        description="Runs benchmarks/bench_engine.py; every further argument is passed to it (try: -- --help).",
        add_help=False,
    )
    engine.add_argument("engine_args", nargs=argparse.REMAINDER, help="arguments for bench_engine.py")
    engine.set_defaults(run=run)
    overhead = which.add_parser(
        "overhead",
        help="time added per call by the plugin over the raw huggingface_hub client",
        description=(
            "Start a local server that answers after a fixed delay, then time the raw huggingface_hub client, "
            "TGIAligner, DiffPOAlign (alone and in a chain) and DiffPOLLM against it, and 64 concurrent aalign calls."
        ),
    )
    overhead.add_argument("--delay-ms", type=float, default=20.0, help="server delay per POST (default %(default)s)")
    overhead.add_argument("--iterations", type=int, default=200, help="timed calls per variant (default %(default)s)")
    overhead.add_argument("--warmup", type=int, default=20, help="untimed calls per variant first")
    overhead.add_argument("--concurrency", type=int, default=64, help="concurrent aalign calls (default %(default)s)")
    overhead.add_argument("--async-calls", type=int, default=20, help="timed single async calls per variant")
    overhead.add_argument("--async-rounds", type=int, default=3, help="timed concurrent rounds per async variant")
    overhead.add_argument("--url", help="time against this server instead of starting one (it must have the routes)")
    overhead.add_argument("--profile", action="store_true", help="also print a cProfile of TGIAligner.align")
    overhead.add_argument("--json", type=Path, help="also write the figures here as JSON")
    overhead.set_defaults(run=run)
    _register_gateway(which)
    _register_engines(which)


def _register_gateway(which: Any) -> None:
    gateway = which.add_parser(
        "gateway",
        help="latency added by diffpo gateway over calling the upstream directly (alignment off)",
        description=(
            "Start a local upstream that answers after a fixed delay and diffpo gateway in front of it, then time "
            "one call and 64 concurrent calls straight to the upstream and through the gateway."
        ),
    )
    gateway.add_argument("--delay-ms", type=float, default=20.0, help="upstream delay per call (default %(default)s)")
    gateway.add_argument("--iterations", type=int, default=200, help="timed calls per leg (default %(default)s)")
    gateway.add_argument("--warmup", type=int, default=20, help="untimed calls per leg first")
    gateway.add_argument("--concurrency", type=int, default=64, help="concurrent calls (default %(default)s)")
    gateway.add_argument("--rounds", type=int, default=10, help="timed concurrent rounds per leg (default %(default)s)")
    gateway.add_argument("--json", type=Path, help="also write the figures here as JSON")
    gateway.set_defaults(run=run)


def _register_engines(which: Any) -> None:
    engines = which.add_parser(
        "engines",
        help="diffpo serve against vLLM and llama.cpp on the same MT-bench aligner prompts",
        description=(
            "Start diffpo serve, vLLM and llama.cpp (built by ./scripts/engines.sh; run `./scripts/engines.sh env` "
            "for the variables), align foreign, self and self10 drafts through each, interleaved, then "
            "--concurrency requests at once per engine."
        ),
    )
    engines.add_argument("--engines", default="diffpo serve,vLLM,llama.cpp", help="comma-separated engines")
    engines.add_argument("--questions", type=int, default=8, help="MT-bench questions (default %(default)s)")
    engines.add_argument("--keep", type=int, default=6, help="kept draft tokens (default %(default)s)")
    engines.add_argument("--max-new-tokens", type=int, default=96, help="answer budget (default %(default)s)")
    engines.add_argument("--concurrency", type=int, default=8, help="requests at once (default %(default)s)")
    engines.add_argument("--threads", type=int, help="diffpo serve's torch threads (default: all cores)")
    engines.add_argument("--json", type=Path, help="also write the figures here as JSON")
    engines.set_defaults(run=run)


def _engines(args: argparse.Namespace) -> int:
    from diffpo_integrations.engine.loading import smollm2_gguf_path
    from diffpo_integrations.evaluation.engine_servers import EngineStartError
    from diffpo_integrations.evaluation.engines_bench import format_engines_table, run_engines_bench

    def progress(done: int, total: int) -> None:
        print(f"aligned {done}/{total} cases on every engine", file=sys.stderr)

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    try:
        result = run_engines_bench(
            engines=engines,
            questions=args.questions,
            keep=args.keep,
            max_new_tokens=args.max_new_tokens,
            concurrency=args.concurrency,
            threads=args.threads,
            gguf=smollm2_gguf_path() if "llama.cpp" in engines else None,
            progress=progress,
        )
    except (EngineStartError, ValueError, FileNotFoundError) as exc:
        return fail(str(exc))
    print(format_engines_table(result))
    if args.json:
        args.json.write_text(json.dumps(result.as_json(), indent=2), encoding="utf-8")
    failed = [r for r in result.rows if r.identical is False]
    if failed:
        return fail(
            f"{len(failed)} answers differ from the reference: "
            + ", ".join(f"{r.engine} {r.kind} q{r.question_id}" for r in failed[:5])
        )
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from diffpo_integrations.evaluation.delay_server import delay_server
    from diffpo_integrations.evaluation.gateway_bench import format_gateway_table, gateway_process, run_gateway_bench

    with delay_server(args.delay_ms) as upstream, gateway_process(upstream) as gateway:
        result = run_gateway_bench(
            upstream,
            gateway,
            delay_ms=args.delay_ms,
            iterations=args.iterations,
            warmup=args.warmup,
            concurrency=args.concurrency,
            rounds=args.rounds,
        )
    print(format_gateway_table(result))
    if args.json:
        figures = {**asdict(result), "added_ms": result.added_ms, "concurrency_ratio": result.concurrency_ratio}
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


def _engine(args: argparse.Namespace) -> int:
    # ``diffpo bench engine -- --flag``: argparse keeps the separator; the script must not see it.
    extra = args.engine_args[1:] if args.engine_args[:1] == ["--"] else list(args.engine_args)
    if not ENGINE_SCRIPT.exists():
        return fail(
            f"the engine benchmark runs {ENGINE_SCRIPT} from a source checkout of diffpo-integrations, "
            "and that file is not here"
        )
    # A child process: the script parses its own argv and may call sys.exit.
    return subprocess.call([sys.executable, str(ENGINE_SCRIPT), *extra])


def _overhead(args: argparse.Namespace) -> int:
    from diffpo_integrations.evaluation.delay_server import delay_server
    from diffpo_integrations.evaluation.overhead import format_table, profile_align, run_overhead

    def measure(url: str) -> None:
        result = run_overhead(
            url,
            delay_ms=args.delay_ms,
            iterations=args.iterations,
            warmup=args.warmup,
            concurrency=args.concurrency,
            async_calls=args.async_calls,
            async_rounds=args.async_rounds,
        )
        print(format_table(result))
        if args.profile:
            print("\ncProfile of TGIAligner.align (sorted by own time):")
            print(profile_align(url))
        if args.json:
            figures = {
                "delay_ms": result.delay_ms,
                "iterations": result.iterations,
                "median_ms": result.median_ms,
                "added_ms": {n: result.added_ms(n) for n in result.median_ms if result.baseline[n] != n},
                "baseline": result.baseline,
                "concurrency": result.concurrency,
                "async_ms": {n: {"single": a, "concurrent": b} for n, (a, b) in result.async_ms.items()},
                "concurrency_ratio": {n: result.ratio(n) for n in result.async_ms},
            }
            args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")

    if args.url:
        measure(args.url.rstrip("/"))
    else:
        with delay_server(args.delay_ms) as url:
            measure(url)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``diffpo bench engine|engines|overhead|gateway``."""
    if args.bench == "engine":
        return _engine(args)
    if args.bench == "gateway":
        return _gateway(args)
    if args.bench == "engines":
        return _engines(args)
    return _overhead(args)
