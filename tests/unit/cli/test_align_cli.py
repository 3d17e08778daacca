"""``diffpo align``: one draft in, the aligned answer and its metadata out."""

from __future__ import annotations

import json

import pytest

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.backends.testing import mock_tgi
from diffpo_integrations.cli import main

QUESTION = "Give me one tip for writing tests."
DRAFT = "Assert behaviour that could fail, such as exact outputs and error messages."


def _expected() -> str:
    with mock_tgi():
        return TGIAligner("http://mock-tgi").align([("user", QUESTION)], DRAFT).text


def test_json_output_is_the_align_result(capsys: pytest.CaptureFixture[str]) -> None:
    expected = _expected()
    with mock_tgi() as server:
        status = main(["align", "-q", QUESTION, "-d", DRAFT, "--url", "http://mock-tgi", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0
    assert out["text"] == expected
    assert out["draft"] == DRAFT
    assert out["aligned"] is True
    assert out["endpoint"] == "http://mock-tgi"
    body = json.loads(next(r for r in server.requests if r.url.path == "/diffpo/align").content)
    assert body["messages"] == [{"role": "user", "content": QUESTION}]
    assert body["keep_prefix_tokens"] == 6
    assert body["max_new_tokens"] == 256


def test_side_by_side_output_and_options(capsys: pytest.CaptureFixture[str], tmp_path: pytest.TempPathFactory) -> None:
    draft_file = tmp_path / "draft.txt"  # type: ignore[operator]
    draft_file.write_text(DRAFT, encoding="utf-8")
    with mock_tgi() as server:
        status = main(
            [
                "align",
                "-q",
                QUESTION,
                "--draft-file",
                str(draft_file),
                "--url",
                "http://mock-tgi",
                "--system",
                "Be brief.",
                "--keep-prefix-tokens",
                "3",
                "--max-new-tokens",
                "7",
            ]
        )
    out = capsys.readouterr().out
    assert status == 0
    assert out.splitlines()[0].startswith("DRAFT")
    assert "| ALIGNED" in out.splitlines()[0]
    assert "finish: eos_token" in out
    body = json.loads(next(r for r in server.requests if r.url.path == "/diffpo/align").content)
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert (body["keep_prefix_tokens"], body["max_new_tokens"]) == (3, 7)


def test_stream_prints_the_same_text(capsys: pytest.CaptureFixture[str]) -> None:
    expected = _expected()
    with mock_tgi():
        status = main(["align", "-q", QUESTION, "-d", DRAFT, "--url", "http://mock-tgi", "--stream"])
    assert status == 0
    assert capsys.readouterr().out == expected + "\n"


def test_aligner_errors_exit_1_with_the_typed_error(capsys: pytest.CaptureFixture[str]) -> None:
    with mock_tgi(failures=[422]):
        status = main(["align", "-q", QUESTION, "-d", DRAFT, "--url", "http://mock-tgi"])
    assert status == 1
    assert capsys.readouterr().err == "diffpo: error: ServerValidationError: mock failure 422\n"


def test_empty_draft_is_an_input_error(capsys: pytest.CaptureFixture[str]) -> None:
    with mock_tgi():
        status = main(["align", "-q", QUESTION, "-d", "   ", "--url", "http://mock-tgi"])
    assert status == 1
    err = capsys.readouterr().err
    assert err.startswith("diffpo: error: InputError: the draft is empty or whitespace")


def test_side_by_side_marks_an_answer_that_ran_out_of_budget_in_a_loop() -> None:
    from diffpo_integrations.cli.align import side_by_side
    from diffpo_integrations.core.types import AlignResult

    loop = AlignResult(text="Intro. " + "Lava and Lava, " * 12, draft=DRAFT, finish_reason="length")
    long = AlignResult(text=DRAFT, draft=DRAFT, finish_reason="length")
    assert "finish: length (repeating)," in side_by_side(loop)
    assert "finish: length," in side_by_side(long)
    assert "repeating" not in side_by_side(long)
