"""``diffpo bench engines``: ``diffpo serve`` against vLLM and llama.cpp on the same aligner prompts.

Each MT-bench turn-1 question gets three drafts, as in ``diffpo bench engine``: ``foreign`` (a base
model's answer: Llama-3-Instruct for even questions, Mistral-Instruct for odd ones), ``self`` (the
aligner's own greedy answer, kept prefix included) and ``self10`` (``self`` with about 10 % of its
tokens substituted, inserted after or deleted, seeded). Every engine aligns every draft through the
backend a user would pick for it: :class:`TGIAligner` for ``diffpo serve`` (draft-speculative on
``/diffpo/align``), :class:`OpenAICompatAligner` for vLLM (token-id prompts) and llama.cpp (text
prompts). Calls are interleaved (question by question, draft by draft, the engines in a rotating
order) so that a slow spell of a shared CPU falls on all of them.

vLLM and ``diffpo serve`` read the same float32 weights, so each of their answers is checked
identical to the in-process greedy reference; llama.cpp runs the Q4_1 GGUF with its own kernels,
so its answers are its own greedy continuation and are not compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffpo_integrations.backends import OpenAICompatAligner, TGIAligner
from diffpo_integrations.core.aligner import BaseAligner
from diffpo_integrations.data import MT_BENCH_ANSWERS, mt_bench_answers_path, mt_bench_questions_path
from diffpo_integrations.evaluation.mtbench import read_jsonl

__all__ = [
    "ENGINES",
    "KINDS",
    "EngineBenchResult",
    "EngineCase",
    "EngineRow",
    "build_cases",
    "edit_tokens",
    "format_engines_table",
    "run_engines_bench",
]

ENGINES = ("diffpo serve", "vLLM", "llama.cpp")
KINDS = ("foreign", "self", "self10")
_COMPARED = ("diffpo serve", "vLLM")
"""The engines on the reference's float32 weights."""


@dataclass(frozen=True)
class EngineCase:
    """One aligner request: a question, a draft of one kind, and the reference answer."""

    question_id: int
    kind: str
    messages: list[dict[str, str]]
    draft: str
    reference: str


@dataclass(frozen=True)
class EngineRow:
    """One timed alignment."""

    engine: str
    kind: str
    question_id: int
    seconds: float
    tokens: int
    identical: bool | None
    """Equal to the reference; ``None`` where the weights differ (llama.cpp)."""
    passes: int | None = None
    """Model forward passes the decode took, where the server reports them (``diffpo serve``)."""
    accepted: int | None = None
    """Draft tokens the answer kept from the draft, where reported."""
    decode_s: float | None = None
    """Seconds the server spent decoding, where reported: the rest is HTTP, queueing and the prompt."""


@dataclass
class EngineBenchResult:
    """Everything one run measured, with the machine it ran on."""

    rows: list[EngineRow]
    concurrent: dict[str, dict[str, float]]
    """Per engine: ``requests``, ``seconds`` (wall) and ``tokens_per_s`` of ``concurrency`` requests at once."""
    started_in_s: dict[str, float]
    settings: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per draft kind and engine: answers, median seconds per answer, tokens/s, identical answers."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for kind in KINDS:
            for engine in {r.engine for r in self.rows}:
                rows = [r for r in self.rows if r.kind == kind and r.engine == engine]
                if not rows:
                    continue
                seconds = sum(r.seconds for r in rows)
                out.setdefault(kind, {})[engine] = {
                    "answers": len(rows),
                    "median_s": statistics.median(r.seconds for r in rows),
                    "total_s": seconds,
                    "tokens_per_s": sum(r.tokens for r in rows) / seconds if seconds else 0.0,
                    "identical": sum(1 for r in rows if r.identical),
                }
        return out

    def time_split(self) -> dict[str, dict[str, float]]:
        """Where ``diffpo serve``'s time went, per draft kind, next to vLLM's cost per token.

        ``passes`` and ``accepted`` are totals; ``ms_per_pass`` is server decode time over passes;
        ``outside_s`` is client time not spent decoding (HTTP, queueing, prompt building);
        ``vllm_ms_per_token`` is vLLM's client time over its tokens, one pass per token.
        """
        out: dict[str, dict[str, float]] = {}
        for kind in KINDS:
            rows = [r for r in self.rows if r.kind == kind and r.engine == "diffpo serve" and r.passes]
            if not rows:
                continue
            passes = sum(r.passes or 0 for r in rows)
            decode = sum(r.decode_s or 0.0 for r in rows)
            tokens = sum(r.tokens for r in rows)
            figures = {
                "tokens": float(tokens),
                "passes": float(passes),
                "tokens_per_pass": tokens / passes,
                "accepted": float(sum(r.accepted or 0 for r in rows)),
                "decode_s": decode,
                "outside_s": sum(r.seconds for r in rows) - decode,
                "ms_per_pass": 1000 * decode / passes,
            }
            vllm = [r for r in self.rows if r.kind == kind and r.engine == "vLLM"]
            if vllm and sum(r.tokens for r in vllm):
                figures["vllm_ms_per_token"] = 1000 * sum(r.seconds for r in vllm) / sum(r.tokens for r in vllm)
            out[kind] = figures
        return out

    def speedup(self, kind: str, engine: str) -> float:
        """How many times faster ``diffpo serve`` answered ``kind`` drafts than ``engine`` (total time)."""
        figures = self.summary()[kind]
        return figures[engine]["total_s"] / figures["diffpo serve"]["total_s"]

    def as_json(self) -> dict[str, Any]:
        """The result as plain JSON-ready data, the summary and the ratios included."""
        summary = self.summary()
        ratios = {
            kind: {e: self.speedup(kind, e) for e in summary[kind] if e != "diffpo serve"}
            for kind in summary
            if "diffpo serve" in summary[kind]
        }
        return {**asdict(self), "summary": summary, "speedup": ratios, "time_split": self.time_split()}


def edit_tokens(tokens: Sequence[int], rng: random.Random, vocab: Sequence[int], rate: float = 0.1) -> list[int]:
    """Substitute, insert after, or delete about ``rate`` of the tokens: how a ``self10`` draft is made."""
    out: list[int] = []
    for token in tokens:
        roll = rng.random()
        if roll < rate / 3:
            out.append(rng.choice(vocab))
        elif roll < 2 * rate / 3:
            out += [token, rng.choice(vocab)]
        elif roll >= rate:
            out.append(token)
    return out


def build_cases(reference: BaseAligner, tokenizer: Any, *, questions: int, seed: int = 0) -> list[EngineCase]:
    """The ``foreign``, ``self`` and ``self10`` cases of the first ``questions`` MT-bench questions.

    ``reference`` is an in-process greedy aligner with the benchmark's ``keep_prefix_tokens`` and
    ``max_new_tokens``; its answer to the foreign draft is the ``self`` draft.
    """
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    answers = {src: {r["question_id"]: r for r in read_jsonl(mt_bench_answers_path(src))} for src in MT_BENCH_ANSWERS}
    cases: list[EngineCase] = []
    for index, question in enumerate(read_jsonl(mt_bench_questions_path())[:questions]):
        qid = int(question["question_id"])
        messages = [{"role": "user", "content": str(question["turns"][0])}]
        foreign = str(answers[MT_BENCH_ANSWERS[index % 2]][qid]["choices"][0]["turns"][0])
        own = reference.align(messages, foreign).text
        ids = tokenizer(own, add_special_tokens=False)["input_ids"]
        edited = str(tokenizer.decode(edit_tokens(ids, random.Random(seed * 1000 + index), vocab)))
        for kind, draft in (("foreign", foreign), ("self", own), ("self10", edited)):
            # The self drafts keep the same prefix tokens only if their text tokenizes back the
            # same way, so each case gets its own reference answer.
            expected = own if kind == "foreign" else reference.align(messages, draft).text
            cases.append(EngineCase(qid, kind, messages, draft, expected))
    return cases


def _time_one(engine: str, aligner: BaseAligner, case: EngineCase) -> EngineRow:
    start = time.perf_counter()
    result = aligner.align(case.messages, case.draft)
    seconds = time.perf_counter() - start
    identical = result.text == case.reference if engine in _COMPARED else None
    details = result.details
    passes, accepted, decode_s = (details.get(k) for k in ("forward_passes", "accepted_draft_tokens", "elapsed_s"))
    return EngineRow(
        engine,
        case.kind,
        case.question_id,
        seconds,
        result.generated_tokens,
        identical,
        passes=int(passes) if passes is not None else None,
        accepted=int(accepted) if accepted is not None else None,
        decode_s=float(decode_s) if decode_s is not None else None,
    )


async def _concurrent(aligner: BaseAligner, cases: Sequence[EngineCase], concurrency: int) -> dict[str, float]:
    batch = [cases[i % len(cases)] for i in range(concurrency)]
    start = time.perf_counter()
    results = await asyncio.gather(*(aligner.aalign(c.messages, c.draft) for c in batch))
    seconds = time.perf_counter() - start
    tokens = sum(r.generated_tokens for r in results)
    return {"requests": float(concurrency), "seconds": seconds, "tokens_per_s": tokens / seconds}


def _required(gguf: Path | None) -> Path:
    if gguf is None:
        msg = "llama.cpp needs the GGUF it serves: pass gguf= (the CLI passes the packaged SmolLM2 file)"
        raise ValueError(msg)
    return gguf


@contextlib.contextmanager
def _servers(engines: Sequence[str], threads: int, gguf: Path | None) -> Iterator[dict[str, Any]]:
    from diffpo_integrations.evaluation.engine_servers import diffpo_serve_server, llama_cpp_server, vllm_server

    factories: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] = {
        "diffpo serve": lambda: diffpo_serve_server(num_threads=threads),
        "vLLM": vllm_server,
        "llama.cpp": lambda: llama_cpp_server(_required(gguf)),
    }
    with contextlib.ExitStack() as stack:
        # One at a time: two cold starts side by side on a small CPU would time out each other.
        yield {name: stack.enter_context(factories[name]()) for name in engines}


def _aligners(servers: dict[str, Any], model_dir: str, keep: int, max_new_tokens: int) -> dict[str, BaseAligner]:
    options: dict[str, Any] = {"keep_prefix_tokens": keep, "max_new_tokens": max_new_tokens, "timeout": 600}
    made: dict[str, BaseAligner] = {}
    for name, server in servers.items():
        if name == "diffpo serve":
            made[name] = TGIAligner(server.url, **options)
        else:
            # llama.cpp's server refuses token-id prompts; vLLM takes them (the exact official prompt).
            ids = name == "vLLM"
            made[name] = OpenAICompatAligner(server.url, tokenizer=model_dir, use_token_ids=ids, **options)
    return made


def run_engines_bench(
    *,
    engines: Sequence[str] = ENGINES,
    questions: int = 8,
    keep: int = 6,
    max_new_tokens: int = 96,
    concurrency: int = 8,
    threads: int | None = None,
    seed: int = 0,
    gguf: Path | None = None,
    progress: Any = None,
) -> EngineBenchResult:
    """Start each engine, align every case through each, interleaved, then ``concurrency`` at once per engine.

    ``gguf`` is the file llama.cpp serves (the SmolLM2 GGUF the engines' float32 folder was made from);
    it is needed only when ``engines`` names llama.cpp.

    Raises:
        EngineStartError: an engine is not built (run ``./scripts/engines.sh build``) or does not start.
    """
    from diffpo_integrations.backends.local import LocalAligner
    from diffpo_integrations.evaluation.engine_servers import engines_model_dir

    threads = threads or os.cpu_count() or 1
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown or "diffpo serve" not in engines:
        msg = f"engines must include 'diffpo serve' and come from {list(ENGINES)}; got {list(engines)}"
        raise ValueError(msg)
    if "llama.cpp" in engines:
        _required(gguf)
    model_dir = str(engines_model_dir())
    reference = LocalAligner(model_dir, keep_prefix_tokens=keep, max_new_tokens=max_new_tokens, method="greedy")
    cases = build_cases(reference, reference.engine.loaded.tokenizer, questions=questions, seed=seed)
    load_before = os.getloadavg()
    rows: list[EngineRow] = []
    with _servers(engines, threads, gguf) as servers:
        aligners = _aligners(servers, model_dir, keep, max_new_tokens)
        for aligner in aligners.values():
            aligner.align(cases[0].messages, cases[0].draft)  # warm-up: connections, lazy start-up work
        order = list(aligners)
        for index, case in enumerate(cases):
            for name in order[index % len(order) :] + order[: index % len(order)]:
                rows.append(_time_one(name, aligners[name], case))
            if progress is not None:
                progress(index + 1, len(cases))
        foreign = [c for c in cases if c.kind == "foreign"]
        concurrent = {name: asyncio.run(_concurrent(a, foreign, concurrency)) for name, a in aligners.items()}
        started = {name: server.started_in_s for name, server in servers.items()}
    return EngineBenchResult(
        rows=rows,
        concurrent=concurrent,
        started_in_s=started,
        settings={
            "questions": questions,
            "keep_prefix_tokens": keep,
            "max_new_tokens": max_new_tokens,
            "concurrency": concurrency,
            "threads": threads,
            "seed": seed,
        },
        machine={
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
    )


def format_engines_table(result: EngineBenchResult) -> str:
    """The result as a Markdown table (docs/benchmarks.md's form)."""
    summary = result.summary()
    engines = [e for e in ENGINES if any(e in summary[k] for k in summary)]
    lines = [
        "| draft | engine | answers | median s/answer | tokens/s | diffpo serve speed-up | identical to reference |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        for engine in engines:
            figures = summary.get(kind, {}).get(engine)
            if figures is None:
                continue
            speedup = "1.00x (itself)" if engine == "diffpo serve" else f"{result.speedup(kind, engine):.2f}x"
            identical = f"{figures['identical']:.0f}/{figures['answers']:.0f}" if engine in _COMPARED else "own weights"
            lines.append(
                f"| {kind} | {engine} | {figures['answers']:.0f} | {figures['median_s']:.2f} | "
                f"{figures['tokens_per_s']:.1f} | {speedup} | {identical} |"
            )
    lines += ["", f"| {result.settings['concurrency']} requests at once | wall s | tokens/s |", "|---|---:|---:|"]
    for engine in engines:
        c = result.concurrent[engine]
        lines.append(f"| {engine} | {c['seconds']:.1f} | {c['tokens_per_s']:.1f} |")
    split = result.time_split()
    if split:
        lines += [
            "",
            "| diffpo serve, draft | tokens | passes | tokens/pass | accepted | decode s | outside decode s "
            "| ms/pass | vLLM ms/token |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for kind, f in split.items():
            vllm = f"{f['vllm_ms_per_token']:.1f}" if "vllm_ms_per_token" in f else "-"
            lines.append(
                f"| {kind} | {f['tokens']:.0f} | {f['passes']:.0f} | {f['tokens_per_pass']:.2f} | {f['accepted']:.0f} "
                f"| {f['decode_s']:.2f} | {f['outside_s']:.2f} | {f['ms_per_pass']:.1f} | {vllm} |"
            )
    return "\n".join(lines)
