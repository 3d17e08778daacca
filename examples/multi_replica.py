"""Scale past one server: two aligner replicas behind one ``AlignerPool``, with failover.

1. Loads the model once and starts two embedded servers (``diffpo serve``'s app) on free loopback
   ports, both serving that one loaded model.
2. Builds an ``AlignerPool`` over them: least-outstanding routing, health checks, failover, a
   circuit breaker per replica, and fail-open so a caller always gets an answer.
3. Aligns a real MT-bench draft (question ``turns[0]``, Llama-3-8B-Instruct's answer as the draft),
   twice concurrently, and shows which replica served each.
4. Stops replica A, aligns again: the pool fails over to B. Restarts A on the same port and a
   health check brings it back.

SmolLM2-135M-Instruct stands in for a DiffPO checkpoint: its "aligned" answers show the pipeline
working, not DiffPO's quality. In production the members are URLs of TGI/vLLM replicas:
``AlignerPool(["http://aligner-1:8080", "http://aligner-2:8080"], health_interval=5)``.

Run: ``python examples/multi_replica.py [--question-id 81] [--max-new-tokens 24]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from diffpo_integrations.backends import AlignerPool, TGIAligner
from diffpo_integrations.data import mt_bench_answers_path, mt_bench_questions_path
from diffpo_integrations.server import ServerConfig, create_app
from diffpo_integrations.server.testing import get_default_engine, serve_in_thread

SHARED = Path("/work/shared/data/mt-bench")
STAND_IN = "(aligner: SmolLM2-135M-Instruct standing in for a DiffPO checkpoint)"


def mt_bench(question_id: int) -> tuple[str, str]:
    """Question ``turns[0]`` and Llama-3-8B-Instruct's answer ``choices[0]["turns"][0]`` (the draft)."""
    questions = SHARED / "question.jsonl" if SHARED.exists() else mt_bench_questions_path()
    answers = SHARED / "llama-3-it-vanilla.jsonl" if SHARED.exists() else mt_bench_answers_path("llama-3-it-vanilla")
    question = next(q for q in map(json.loads, questions.open()) if q["question_id"] == question_id)
    answer = next(a for a in map(json.loads, answers.open()) if a["question_id"] == question_id)
    return str(question["turns"][0]), str(answer["choices"][0]["turns"][0])


def show(label: str, pool: AlignerPool) -> None:
    print(
        f"  {label}: "
        + "; ".join(f"{name} {s.state}, ok {s.successes}, failed {s.failures}" for name, s in pool.stats().items())
    )


class Replica:
    """One embedded server that can be stopped and started again on the same port."""

    def __init__(self, app: Any) -> None:
        self.app, self.port, self.url = app, 0, ""
        self._server: AbstractContextManager[str] | None = None

    def start(self) -> str:
        self._server = serve_in_thread(self.app, port=self.port)
        self.url = self._server.__enter__()
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.__exit__(None, None, None)


async def main(question_id: int, max_new_tokens: int) -> None:
    question, draft = mt_bench(question_id)
    messages = [("user", question)]
    engine = get_default_engine()  # loaded once, shared by both replicas
    a, b = (Replica(create_app(engine, ServerConfig(port=0, api_key=None))) for _ in range(2))
    try:
        a.start()
        b.start()
        print(f"replicas: A={a.url}  B={b.url}  {STAND_IN}")
        members = [TGIAligner(r.url, max_new_tokens=max_new_tokens, max_retries=0) for r in (a, b)]
        async with AlignerPool(members, failure_threshold=1, cooldown=1.0, fail_policy="open") as pool:
            print(f"\nQ{question_id}: {question[:100]}\ndraft: {draft[:100]}...")
            for r in await asyncio.gather(pool.aalign(messages, draft), pool.aalign(messages, draft)):
                print(f"  served by {r.endpoint} in {r.latency_s:.2f} s: {r.text[:100]!r}")
            show("stats", pool)

            print("\nstopping replica A ...")
            await asyncio.to_thread(a.stop)
            for r in await asyncio.gather(pool.aalign(messages, draft), pool.aalign(messages, draft)):
                print(f"  served by {r.endpoint} (aligned={r.aligned})")
            show("stats", pool)

            print("\nrestarting replica A on the same port ...")
            await asyncio.to_thread(a.start)
            await asyncio.sleep(pool.cooldown)
            print(f"  health: {await pool.acheck_health()}")
            for r in await asyncio.gather(pool.aalign(messages, draft), pool.aalign(messages, draft)):
                print(f"  served by {r.endpoint} (aligned={r.aligned})")
            show("stats", pool)
    finally:
        a.stop()
        b.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question-id", type=int, default=81)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    asyncio.run(main(args.question_id, args.max_new_tokens))
