"""Judging against a scripted judge: prompts per category and turn, references, both pairwise orders,
parse failures, API errors, resuming."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from diffpo_integrations.core.errors import ConfigurationError, InputError
from diffpo_integrations.data import judge_prompts_path, mt_bench_reference_path
from diffpo_integrations.evaluation import BaseAnswer, Question, load_answers, load_judge_prompts
from diffpo_integrations.evaluation.judge_client import JudgeClient
from diffpo_integrations.evaluation.judge_summary import summarize_judgments
from diffpo_integrations.evaluation.judge_testing import ScriptedJudge
from diffpo_integrations.evaluation.judging import API_ERROR_OUTPUT, JudgeRun, Match, arun_judge, plan_matches

SINGLE_FIELDS = {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"}
PAIR_FIELDS = {
    "question_id",
    "model_1",
    "model_2",
    "g1_winner",
    "g2_winner",
    "judge",
    "g1_user_prompt",
    "g1_judgment",
    "g2_user_prompt",
    "g2_judgment",
    "turn",
    "tstamp",
}


@pytest.fixture(scope="module")
def one_per_category(questions: list[Question]) -> list[Question]:
    """The first question of each MT-bench category (81 writing, 91 roleplay, 101 reasoning, 111 math ...)."""
    seen: dict[str, Question] = {}
    for q in questions:
        seen.setdefault(q.category, q)
    return list(seen.values())


def answers_of(name: str, questions: list[Question]) -> dict[Any, BaseAnswer]:
    return {
        q.question_id: BaseAnswer(q.question_id, name, [f"<{name} answer {q.question_id}.{t}>" for t in (1, 2)])
        for q in questions
    }


async def judge_run(judge: ScriptedJudge, matches: list[Match], out: Path, **kwargs: Any) -> JudgeRun:
    async with JudgeClient("http://judge", "judge-m", transport=judge.transport(), max_retries=0) as client:
        return await arun_judge(client, matches, out, concurrency=3, progress=False, **kwargs)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def plan(mode: str, questions: list[Question], names: tuple[str, ...], **kwargs: Any) -> list[Match]:
    return plan_matches(
        mode,  # type: ignore[arg-type]
        questions,
        {n: answers_of(n, questions) for n in names},
        load_judge_prompts(judge_prompts_path()),
        references=load_answers(mt_bench_reference_path()),
        **kwargs,
    )


async def test_single_prompt_per_category_and_turn(tmp_path: Path, one_per_category: list[Question]) -> None:
    judge = ScriptedJudge(lambda system, user: "Solid answer. Rating: [[7]]")
    out = tmp_path / "single.jsonl"
    run = await judge_run(judge, plan("single", one_per_category, ("good",)), out)
    assert (run.planned, run.written, run.skipped, run.unparsed, run.errors) == (16, 16, 0, 0, 0)

    refs = load_answers(mt_bench_reference_path())
    prompts = load_judge_prompts(judge_prompts_path())
    rows = {(r["question_id"], r["turn"]): r for r in lines(out)}
    assert len(rows) == 16
    sent = {b["messages"][-1]["content"]: b for b in judge.requests}
    for q in one_per_category:
        math = q.category in ("math", "reasoning", "coding")
        for turn in (1, 2):
            row = rows[(q.question_id, turn)]
            assert set(row) == SINGLE_FIELDS
            name = ("single-math-v1" if math else "single-v1") + ("-multi-turn" if turn == 2 else "")
            assert row["judge"] == ["judge-m", name]
            assert (row["model"], row["score"], row["judgment"]) == ("good", 7, "Solid answer. Rating: [[7]]")
            # The judge received exactly the recorded prompt, with the prompt's own system message.
            body = sent[row["user_prompt"]]
            assert body["messages"][0] == {"role": "system", "content": prompts[name].system_prompt}
            assert (body["temperature"], body["max_tokens"], body["model"]) == (0, 2048, "judge-m")
            text = row["user_prompt"]
            assert q.turns[0] in text
            assert f"<good answer {q.question_id}.1>" in text
            assert (q.turns[1] in text) == (turn == 2)
            assert (f"<good answer {q.question_id}.2>" in text) == (turn == 2)
            if math:
                assert refs[q.question_id].turns[0] in text
                assert (refs[q.question_id].turns[1] in text) == (turn == 2)
            else:
                assert "Reference" not in text


async def test_pairwise_judges_both_orders_and_wins_need_agreement(
    tmp_path: Path, one_per_category: list[Question]
) -> None:
    writing, roleplay, reasoning = one_per_category[:3]

    def reply(system: str, user: str) -> str:
        a = user.index("[The Start of Assistant A's Answer]")
        b = user.index("[The Start of Assistant B's Answer]")
        if str(roleplay.question_id) in user[a:b] or f"{roleplay.question_id}." in user:
            return "Both fine, but the first one reads better. [[A]]"  # position bias: says A in both orders
        if f"{reasoning.question_id}." in user:
            return "Equally good. [[C]]"
        return "[[A]]" if "<aligned" in user[a:b] else "[[B]]"  # prefers the aligned answer wherever it is

    judge = ScriptedJudge(reply)
    out = tmp_path / "pair.jsonl"
    matches = plan("pairwise", [writing, roleplay, reasoning], ("aligned", "draft"), turns=(1,))
    run = await judge_run(judge, matches, out)
    assert (run.written, run.unparsed, run.errors) == (3, 0, 0)
    assert len(judge.requests) == 6  # two games per pair and turn

    rows = {r["question_id"]: r for r in lines(out)}
    w = rows[writing.question_id]
    assert set(w) == PAIR_FIELDS
    assert (w["model_1"], w["model_2"], w["judge"]) == ("aligned", "draft", ["judge-m", "pair-v2"])
    # Game 1 shows model_1 as assistant A, game 2 swaps them.
    assert w["g1_user_prompt"].index(f"<aligned answer {writing.question_id}.1>") < w["g1_user_prompt"].index(
        f"<draft answer {writing.question_id}.1>"
    )
    assert w["g2_user_prompt"].index(f"<draft answer {writing.question_id}.1>") < w["g2_user_prompt"].index(
        f"<aligned answer {writing.question_id}.1>"
    )
    assert (w["g1_winner"], w["g2_winner"]) == ("model_1", "model_1")
    assert (w["g1_judgment"], w["g2_judgment"]) == ("[[A]]", "[[B]]")
    r = rows[roleplay.question_id]
    assert (r["g1_winner"], r["g2_winner"]) == ("model_1", "model_2")  # inconsistent
    assert (rows[reasoning.question_id]["g1_winner"], rows[reasoning.question_id]["g2_winner"]) == ("tie", "tie")
    assert rows[reasoning.question_id]["judge"][1] == "pair-math-v1"
    ref = load_answers(mt_bench_reference_path())[reasoning.question_id].turns[0]
    assert ref in rows[reasoning.question_id]["g1_user_prompt"]
    assert ref in rows[reasoning.question_id]["g2_user_prompt"]

    summary = summarize_judgments(lines(out), mode="pairwise", judge_model="judge-m", pairs=[("aligned", "draft")])
    (p,) = summary["pairwise"]
    assert (p["win"], p["loss"], p["tie"], p["inconsistent"], p["n"]) == (1, 0, 2, 1, 3)
    assert p["win_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert p["win_rate_adjusted"] == pytest.approx(2 / 3, abs=1e-4)
    # Seen from the other side, the same games are a loss.
    (q,) = summarize_judgments(lines(out), mode="pairwise", pairs=[("draft", "aligned")])["pairwise"]
    assert (q["win"], q["loss"], q["tie"]) == (0, 1, 2)


async def test_unparsed_judgments_score_minus_one_and_are_counted(
    tmp_path: Path, one_per_category: list[Question]
) -> None:
    qs = one_per_category[:2]
    judge = ScriptedJudge(lambda s, u: "[[9]]" if f"{qs[0].question_id}.1>" in u and "### User" not in u else "Meh.")
    out = tmp_path / "single.jsonl"
    run = await judge_run(judge, plan("single", qs, ("m",)), out)
    assert (run.written, run.unparsed, run.errors) == (4, 3, 0)
    rows = lines(out)
    assert sorted(r["score"] for r in rows) == [-1, -1, -1, 9]
    assert all(r["judgment"] in ("[[9]]", "Meh.") for r in rows)
    summary = summarize_judgments(rows, mode="single", questions=qs)
    m = summary["models"]["m"]
    assert (m["score"], m["turns"], m["n"], m["unparsed"], m["errors"]) == (9.0, [9.0, None], 1, 3, 0)

    pair_out = tmp_path / "pair.jsonl"
    judge2 = ScriptedJudge(lambda s, u: "I cannot choose.")
    run2 = await judge_run(judge2, plan("pairwise", qs, ("a", "b"), turns=(1,)), pair_out)
    assert (run2.unparsed, run2.errors) == (2, 0)
    assert {(r["g1_winner"], r["g2_winner"]) for r in lines(pair_out)} == {("error", "error")}
    (p,) = summarize_judgments(lines(pair_out), mode="pairwise")["pairwise"]
    assert (p["n"], p["unparsed"], p["errors"], p["win_rate"], p["ci95"]) == (0, 2, 0, None, None)


async def test_api_errors_are_recorded_then_judged_again(tmp_path: Path, one_per_category: list[Question]) -> None:
    qs = one_per_category[:2]
    matches = plan("single", qs, ("m",))
    out = tmp_path / "single.jsonl"
    judge = ScriptedJudge(lambda s, u: "[[6]]", failures=[500])
    run = await judge_run(judge, matches, out)
    assert (run.written, run.errors, run.unparsed) == (4, 1, 0)
    (failed,) = [r for r in lines(out) if "error" in r]
    assert failed["judgment"] == API_ERROR_OUTPUT
    assert failed["score"] == -1
    assert "HTTP 500" in failed["error"]
    assert summarize_judgments(lines(out), mode="single")["models"]["m"]["errors"] == 1

    again = await judge_run(judge, matches, out)
    assert (again.skipped, again.written, again.errors) == (3, 1, 0)
    rows = lines(out)
    assert len(rows) == 4
    assert all(r["score"] == 6 and "error" not in r for r in rows)


async def test_resume_skips_what_is_judged(tmp_path: Path, one_per_category: list[Question]) -> None:
    matches = plan("pairwise", one_per_category[:3], ("a", "b"))
    out = tmp_path / "pair.jsonl"
    judge = ScriptedJudge(lambda s, u: "[[C]]")
    first = await judge_run(judge, matches[:2], out)
    assert first.written == 2
    # A run killed mid-write leaves half a line: it is cut off, and the rest resumes.
    with out.open("a", encoding="utf-8") as f:
        f.write('{"question_id": 91, "model_1": "a"')
    judge.requests.clear()
    second = await judge_run(judge, matches, out)
    assert (second.planned, second.skipped, second.written) == (6, 2, 4)
    assert len(judge.requests) == 8
    rows = lines(out)
    assert len(rows) == 6
    assert len({(r["question_id"], r["turn"]) for r in rows}) == 6
    third = await judge_run(judge, matches, out)
    assert (third.skipped, third.written) == (6, 0)


async def test_bad_credentials_stop_the_run(tmp_path: Path, one_per_category: list[Question]) -> None:
    judge = ScriptedJudge(lambda s, u: "[[5]]", failures=[401] * 4)
    out = tmp_path / "single.jsonl"
    with pytest.raises(ConfigurationError, match="answered 401"):
        await judge_run(judge, plan("single", one_per_category[:1], ("m",)), out)
    assert out.read_text(encoding="utf-8") == ""


def test_plan_checks_answers_references_and_pairs(one_per_category: list[Question]) -> None:
    qs = one_per_category
    prompts = load_judge_prompts(judge_prompts_path())
    good = answers_of("good", qs)
    partial = {k: v for k, v in good.items() if k != qs[2].question_id}
    with pytest.raises(InputError, match=rf"model 'p' has no answer to 1 of the 8 questions \({qs[2].question_id}\)"):
        plan_matches("single", qs, {"p": partial}, prompts, references=load_answers(mt_bench_reference_path()))
    with pytest.raises(InputError, match=r"question 101 \(reasoning\) is judged against a reference answer"):
        plan_matches("single", qs, {"good": good}, prompts, references={})
    with pytest.raises(InputError, match="pairwise judging needs two answer files"):
        plan_matches("pairwise", qs, {"good": good}, prompts, references=load_answers(mt_bench_reference_path()))
    with pytest.raises(InputError, match="pairs must join two different models"):
        plan_matches(
            "pairwise",
            qs,
            {"good": good},
            prompts,
            references=load_answers(mt_bench_reference_path()),
            pairs=[("good", "x")],
        )
    # Without math questions no reference is needed; one-turn questions get no turn 2.
    one_turn = [Question(1, "writing", ["only"])]
    matches = plan_matches("single", one_turn, {"m": {1: BaseAnswer(1, "m", ["x"])}}, prompts)
    assert [(m.turn, m.prompt.name) for m in matches] == [(1, "single-v1")]
