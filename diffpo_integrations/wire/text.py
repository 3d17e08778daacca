"""Request text that a tokenizer can encode: JSON's ``"\\ud800"`` escapes parse to lone surrogates.

Python keeps a lone surrogate in a ``str``, but it has no UTF-8 form, so every tokenizer (and
every JSON encoder writing UTF-8) fails on it. Refusing it while the body is validated makes it
a 422 that names the field, instead of a 500 deep in the tokenizer.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from diffpo_integrations.core.types import check_utf8

__all__ = ["Text", "check_text"]


def check_text(value: str) -> str:
    """``value`` unchanged when it is encodable as UTF-8.

    Raises:
        InputError: a ``ValueError`` naming the lone surrogate and where it is (never echoing the text).

    Example:
        >>> check_text("caf\\u00e9")
        'café'
        >>> check_text("a\\ud800")
        Traceback (most recent call last):
        ...
        diffpo_integrations.core.errors.InputError: text is not valid UTF-8 text: lone surrogate '\\ud800' at character 1; no tokenizer can encode it: send valid UTF-8 text
    """
    return check_utf8(value, "text", "no tokenizer can encode it: send valid UTF-8 text")


Text = Annotated[str, AfterValidator(check_text)]
"""A ``str`` field that refuses lone surrogates."""
