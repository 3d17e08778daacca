"""Request parameters to the engine's :class:`~diffpo_integrations.engine.SamplingParams`, with TGI's checks.

TGI's rule: a request samples when ``do_sample`` is true or any warper is set (``temperature``
other than 1, ``top_k``, ``top_p``, ``typical_p``); penalties alone keep it greedy. OpenAI's
routes sample when ``temperature`` is above 0 or ``top_p`` below 1 is sent; with neither, or with
``temperature: 0``, decoding is greedy, the server's default. A seed is drawn when none is sent
and reported back (TGI's ``details.seed``). ``/diffpo/align`` never samples.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from diffpo_integrations.server.errors import validation_error
from diffpo_integrations.server.schemas import GenerateParameters
from diffpo_integrations.wire.openai import ChatBody, CompletionBody

if TYPE_CHECKING:
    from diffpo_integrations.engine.sampling import SamplingParams

__all__ = ["MAX_BEST_OF", "MAX_TOP_N_TOKENS", "openai_sampling", "tgi_sampling"]

MAX_BEST_OF = 2
"""TGI's default ``--max-best-of``."""
MAX_TOP_N_TOKENS = 5
"""TGI's default ``--max-top-n-tokens`` (also the limit of OpenAI's ``top_logprobs`` and ``logprobs`` here)."""


def _new_seed() -> int:
    return random.getrandbits(63)


def _params(**kwargs: object) -> SamplingParams:
    from diffpo_integrations.engine.sampling import SamplingParams

    return SamplingParams(**kwargs)  # type: ignore[arg-type]


def tgi_sampling(p: GenerateParameters) -> SamplingParams | None:
    """TGI's validation of the sampling parameters, then the engine settings (``None``: plain greedy).

    Raises:
        ApiError: 422 with TGI's message, naming the parameter.
    """
    checks = [
        ("temperature", p.temperature is not None and p.temperature <= 0, "`temperature` must be strictly positive"),
        (
            "repetition_penalty",
            p.repetition_penalty is not None and p.repetition_penalty <= 0,
            "`repetition_penalty` must be strictly positive",
        ),
        (
            "frequency_penalty",
            p.frequency_penalty is not None and not -2.0 <= p.frequency_penalty <= 2.0,
            "`frequency_penalty` must be >= -2.0 and <= 2.0",
        ),
        ("top_p", p.top_p is not None and not 0.0 < p.top_p < 1.0, "`top_p` must be > 0.0 and < 1.0"),
        ("typical_p", p.typical_p is not None and not 0.0 < p.typical_p < 1.0, "`typical_p` must be > 0.0 and < 1.0"),
        ("top_k", p.top_k is not None and p.top_k <= 0, "`top_k` must be strictly positive"),
    ]
    for name, failed, message in checks:
        if failed:
            raise validation_error(message, name)
    warped = p.temperature not in (None, 1.0) or any(v is not None for v in (p.top_k, p.top_p, p.typical_p))
    do_sample = p.do_sample or warped
    penalised = p.repetition_penalty not in (None, 1.0) or p.frequency_penalty not in (None, 0.0)
    if not do_sample and not penalised:
        return None
    return _params(
        do_sample=do_sample,
        temperature=p.temperature or 1.0,
        top_k=p.top_k,
        top_p=p.top_p,
        typical_p=p.typical_p,
        repetition_penalty=p.repetition_penalty,
        frequency_penalty=p.frequency_penalty or 0.0,
        seed=p.seed if p.seed is not None else _new_seed(),
    )


def openai_sampling(body: ChatBody | CompletionBody) -> SamplingParams | None:
    """OpenAI's sampling fields (and vLLM's ``top_k``, ``repetition_penalty``) to engine settings.

    Raises:
        ApiError: 422 naming the parameter.
    """
    checks = [
        ("temperature", body.temperature is not None and not 0.0 <= body.temperature <= 2.0, "must be >= 0 and <= 2"),
        ("top_p", body.top_p is not None and not 0.0 < body.top_p <= 1.0, "must be > 0 and <= 1"),
        ("top_k", body.top_k is not None and body.top_k != -1 and body.top_k < 1, "must be -1 (off) or >= 1"),
        (
            "presence_penalty",
            body.presence_penalty is not None and not -2.0 <= body.presence_penalty <= 2.0,
            "must be >= -2 and <= 2",
        ),
        (
            "frequency_penalty",
            body.frequency_penalty is not None and not -2.0 <= body.frequency_penalty <= 2.0,
            "must be >= -2 and <= 2",
        ),
        (
            "repetition_penalty",
            body.repetition_penalty is not None and body.repetition_penalty <= 0,
            "must be strictly positive",
        ),
    ]
    for name, failed, message in checks:
        if failed:
            raise validation_error(f"`{name}` {message}", name)
    top_k = body.top_k if body.top_k not in (None, -1) else None
    greedy = body.temperature == 0 or (body.temperature is None and body.top_p in (None, 1.0) and top_k is None)
    penalised = (
        body.presence_penalty not in (None, 0.0)
        or body.frequency_penalty not in (None, 0.0)
        or body.repetition_penalty not in (None, 1.0)
    )
    if greedy and not penalised:
        return None
    return _params(
        do_sample=not greedy,
        temperature=body.temperature or 1.0,
        top_k=top_k,
        top_p=body.top_p,
        repetition_penalty=body.repetition_penalty,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        seed=body.seed if body.seed is not None else _new_seed(),
    )
