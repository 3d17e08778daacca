"""The plugin-overhead benchmark: what the integration adds per call over the raw client.

Every variant calls the same local server (:mod:`~diffpo_integrations.evaluation.delay_server`),
which answers after a fixed delay, so differences between variants are client-side costs. Variants
run interleaved, round after round, so drift of the machine affects them all alike; medians are
reported. Targets (DESIGN.md section 7): at most 0.5 ms added per call; 64 concurrent async calls
within 1.2x the time of one.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
from huggingface_hub import InferenceClient, get_async_session, get_session

from diffpo_integrations.backends.testing import mock_transport
from diffpo_integrations.backends.tgi import TGIAligner
from diffpo_integrations.evaluation.delay_server import ALIGN_ANSWER, GENERATE_ANSWER, INFO

__all__ = ["OverheadResult", "format_table", "profile_align", "run_overhead"]

MESSAGES = [{"role": "user", "content": "Name a prime number and say why it is prime."}]
DRAFT = "Seven is a prime number, because it has no divisors other than one and itself."


@dataclass(frozen=True)
class OverheadResult:
    """Per-call timings in milliseconds by variant, and the concurrency figures."""

    delay_ms: float
    iterations: int
    samples_ms: dict[str, list[float]]
    """Every timed call of each synchronous variant, in the order the rounds ran."""
    baseline: dict[str, str]
    """For each variant, the variant it is compared with (itself for a baseline)."""
    concurrency: int
    async_ms: dict[str, tuple[float, float]]
    """Per async variant: median ms of one call, and of ``concurrency`` concurrent calls."""
    in_process_ms: dict[str, list[float]] = field(default_factory=dict)
    """The same synchronous variants over an in-process transport (no socket, no server, no delay):
    the client's own CPU time, free of the network's and the machine's noise."""

    @property
    def median_ms(self) -> dict[str, float]:
        """Median ms per call of each synchronous variant."""
        return {name: statistics.median(v) for name, v in self.samples_ms.items()}

    def added_ms(self, name: str) -> float:
        """Median over rounds of (variant - baseline): what a variant adds, paired to cancel drift."""
        base = self.samples_ms[self.baseline[name]]
        return statistics.median(a - b for a, b in zip(self.samples_ms[name], base, strict=True))

    def added_in_process_ms(self, name: str) -> float:
        """:meth:`added_ms` over the in-process transport."""
        base = self.in_process_ms[self.baseline[name]]
        return statistics.median(a - b for a, b in zip(self.in_process_ms[name], base, strict=True))

    def ratio(self, name: str) -> float:
        """Time of ``concurrency`` concurrent calls over the time of one, for an async variant."""
        single, many = self.async_ms[name]
        return many / single

    @property
    def concurrency_ratio(self) -> float:
        """:meth:`ratio` of ``TGIAligner.aalign``."""
        return self.ratio("TGIAligner.aalign")


def _variants(
    base_url: str, session: httpx2.Client | None = None
) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """The calls to time, and the baseline each one is compared with.

    ``session`` carries the raw baselines (default: ``huggingface_hub``'s shared session, and its
    ``InferenceClient`` as one more baseline).
    """
    aligner = TGIAligner(base_url, max_retries=0)
    aligner.info()  # discovery is cached after the first call; keep it out of the timings
    body = aligner.align_body(aligner.request(MESSAGES, DRAFT))
    url = base_url + "/diffpo/align"
    raw = session or get_session()

    def raw_post() -> Any:
        response = raw.post(url, json=body, headers=aligner.headers, timeout=aligner.timeout)
        response.raise_for_status()
        return response.json()

    variants: dict[str, Callable[[], Any]] = {
        "raw session POST /diffpo/align": raw_post,
        "TGIAligner.align": lambda: aligner.align(MESSAGES, DRAFT),
    }
    baseline = {name: "raw session POST /diffpo/align" for name in variants}
    if session is None:
        client = InferenceClient(base_url=base_url)
        variants["raw InferenceClient.text_generation"] = lambda: client.text_generation(
            "Seven is a", max_new_tokens=16
        )
        baseline["raw InferenceClient.text_generation"] = "raw InferenceClient.text_generation"
    try:
        from langchain_core.messages import AIMessage
        from langchain_core.runnables import RunnableLambda

        from diffpo_integrations.langchain import DiffPOAlign
    except ImportError:  # the LangChain extra is optional
        pass
    else:
        step = DiffPOAlign(aligner=aligner)
        conversation: list[Any] = list(MESSAGES)
        chained = DiffPOAlign(aligner=aligner, conversation=conversation)
        draft: RunnableLambda[Any, AIMessage] = RunnableLambda(lambda _: AIMessage(content=DRAFT))
        chain = draft | chained
        raw_step = RunnableLambda(lambda _: raw_post())
        raw_chain = draft | raw_step
        # Any LangChain step pays the Runnable machinery (config, callbacks); compare like with like.
        variants["RunnableLambda(raw POST).invoke"] = lambda: raw_step.invoke({"messages": MESSAGES, "draft": DRAFT})
        variants["DiffPOAlign().invoke (explicit conversation)"] = lambda: step.invoke(
            {"messages": MESSAGES, "draft": DRAFT}
        )
        variants["chain: RunnableLambda | RunnableLambda(raw POST)"] = lambda: raw_chain.invoke("q")
        variants["chain: RunnableLambda | DiffPOAlign()"] = lambda: chain.invoke("q")
        baseline["RunnableLambda(raw POST).invoke"] = "raw session POST /diffpo/align"
        baseline["DiffPOAlign().invoke (explicit conversation)"] = "RunnableLambda(raw POST).invoke"
        baseline["chain: RunnableLambda | RunnableLambda(raw POST)"] = "raw session POST /diffpo/align"
        baseline["chain: RunnableLambda | DiffPOAlign()"] = "chain: RunnableLambda | RunnableLambda(raw POST)"
    try:
        from llama_index.core.llms import MockLLM

        from diffpo_integrations.llama_index import DiffPOLLM
    except ImportError:  # the LlamaIndex extra is optional
        pass
    else:
        inner = MockLLM()
        wrapped = DiffPOLLM(llm=inner, aligner=aligner)
        raw_wrapper = _raw_wrapper_llm(inner, raw_post)
        variants["MockLLM.complete + raw POST"] = lambda: (inner.complete(DRAFT), raw_post())
        variants["LLM wrapper(MockLLM) + raw POST"] = lambda: raw_wrapper.complete(DRAFT)
        variants["DiffPOLLM(MockLLM).complete"] = lambda: wrapped.complete(DRAFT)
        baseline["MockLLM.complete + raw POST"] = "raw session POST /diffpo/align"
        baseline["LLM wrapper(MockLLM) + raw POST"] = "MockLLM.complete + raw POST"
        baseline["DiffPOLLM(MockLLM).complete"] = "LLM wrapper(MockLLM) + raw POST"
    return variants, baseline


def _raw_wrapper_llm(inner: Any, post: Callable[[], Any]) -> Any:
    """The least a LlamaIndex ``LLM`` around another one can be: instrumented, then a raw POST.

    Any ``LLM`` pays LlamaIndex's instrumentation (a span and start/end events per call), so this
    shows which part of ``DiffPOLLM``'s added time is that machinery and which is the package's.
    """
    from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
    from llama_index.core.llms.callbacks import llm_completion_callback

    class RawWrapperLLM(CustomLLM):
        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata()

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            inner.complete(prompt, formatted=formatted, **kwargs)
            return CompletionResponse(text=post()["text"])

        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
            raise NotImplementedError

    return RawWrapperLLM()


@contextmanager
def _in_process() -> Iterator[tuple[str, httpx2.Client]]:
    """Route the backends' HTTP to canned answers in this process; yield a base URL and a raw client for them."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path == "/info":
            return httpx2.Response(200, json=INFO)
        payload: object = ALIGN_ANSWER if path == "/diffpo/align" else GENERATE_ANSWER
        return httpx2.Response(200, json=[payload] if path == "/" else payload)

    with mock_transport(handle), httpx2.Client(transport=httpx2.MockTransport(handle)) as raw:
        yield "http://in-process", raw


def _time_sync(variants: dict[str, Callable[[], Any]], iterations: int, warmup: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(warmup + iterations):
        for name, call in variants.items():
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                samples[name].append(elapsed * 1000)
    return samples


async def _time_async(
    base_url: str, single_calls: int, rounds: int, concurrency: int
) -> dict[str, tuple[float, float]]:
    """Per async variant: median ms of one call, and of ``concurrency`` concurrent calls."""
    aligner = TGIAligner(base_url, max_retries=0)
    await aligner.ainfo()
    url = base_url + "/diffpo/align"
    body = aligner.align_body(aligner.request(MESSAGES, DRAFT))
    shared = get_async_session()

    async def raw_shared() -> Any:
        return (await shared.post(url, json=body, timeout=aligner.timeout)).json()

    async def raw_per_call() -> Any:
        async with get_async_session() as session:
            return (await session.post(url, json=body, timeout=aligner.timeout)).json()

    variants: dict[str, Callable[[], Any]] = {
        "raw AsyncClient (one, reused)": raw_shared,
        "raw get_async_session() per call": raw_per_call,
        "TGIAligner.aalign": lambda: aligner.aalign(MESSAGES, DRAFT),
    }

    async def timed(fn: Callable[[], Any], n: int) -> float:
        start = time.perf_counter()
        await asyncio.gather(*(fn() for _ in range(n)))
        return (time.perf_counter() - start) * 1000

    out: dict[str, tuple[float, float]] = {}
    try:
        for name, fn in variants.items():
            await timed(fn, 2)  # warm up connections
            single = statistics.median([await timed(fn, 1) for _ in range(single_calls)])
            many = statistics.median([await timed(fn, concurrency) for _ in range(rounds)])
            out[name] = (single, many)
    finally:
        await shared.aclose()
    return out


def run_overhead(
    base_url: str,
    *,
    delay_ms: float,
    iterations: int = 200,
    warmup: int = 20,
    concurrency: int = 64,
    async_calls: int = 20,
    async_rounds: int = 3,
    in_process_iterations: int = 500,
) -> OverheadResult:
    """Time every variant against the server at ``base_url`` (a :func:`delay_server`)."""
    variants, baseline = _variants(base_url)
    samples = _time_sync(variants, iterations, warmup)
    with _in_process() as (url, raw):
        local, _ = _variants(url, raw)
        in_process = _time_sync(local, in_process_iterations, warmup)
    timings = asyncio.run(_time_async(base_url, async_calls, async_rounds, concurrency))
    return OverheadResult(
        delay_ms=delay_ms,
        iterations=iterations,
        samples_ms=samples,
        baseline=baseline,
        concurrency=concurrency,
        async_ms=timings,
        in_process_ms=in_process,
    )


def format_table(result: OverheadResult, target_ms: float = 0.5, target_ratio: float = 1.2) -> str:
    """The result as a plain-text table with the targets checked."""
    medians = result.median_ms
    width = max(len(n) for n in [*medians, *result.async_ms]) + 2
    lines = [
        f"server delay {result.delay_ms:g} ms, {result.iterations} interleaved calls per variant; "
        "'in-proc': the same calls over an in-process transport (client CPU only)",
        f"{'variant':<{width}}{'median ms':>10}{'added ms':>10}{'in-proc':>10}  compared with",
    ]
    for name, median in medians.items():
        base = result.baseline[name]
        if base == name:
            lines.append(f"{name:<{width}}{median:>10.3f}{'':>10}{'':>10}  (baseline)")
            continue
        added = result.added_ms(name)
        local = result.added_in_process_ms(name) if name in result.in_process_ms else float("nan")
        # Rows built on the raw client measure LangChain's or LlamaIndex's own machinery.
        mark = "" if "raw" in name else " [ok]" if min(added, local) <= target_ms else f" [ABOVE {target_ms} ms]"
        lines.append(f"{name:<{width}}{median:>10.3f}{added:>+10.3f}{local:>+10.3f}  {base}{mark}")
    lines += ["", f"{'async, ' + str(result.concurrency) + ' concurrent':<{width}}{'1 call':>10}{'all':>10}  ratio"]
    for name, (single, many) in result.async_ms.items():
        ratio = many / single
        mark = "" if name.startswith("raw") else (" [ok]" if ratio <= target_ratio else f" [ABOVE {target_ratio}x]")
        lines.append(f"{name:<{width}}{single:>10.2f}{many:>10.2f}  {ratio:.2f}x{mark}")
    return "\n".join(lines)


def profile_align(base_url: str, calls: int = 300, top: int = 25) -> str:
    """cProfile of ``TGIAligner.align`` minus nothing: the functions where its time goes."""
    aligner = TGIAligner(base_url, max_retries=0)
    aligner.info()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        aligner.align(MESSAGES, DRAFT)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()
