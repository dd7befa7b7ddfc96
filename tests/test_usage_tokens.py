"""Reading token counts: the usage chunk at a stream's tail, estimates without one."""

from __future__ import annotations

import pytest

from sidecar.usage import tokens

from .conftest import sse

CONTENT = sse({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]})
USAGE = sse({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}})
DONE = b"data: [DONE]\n\n"


def test_the_usage_chunk_alone_is_removed_when_stripping() -> None:
    assert tokens.tail_usage(USAGE, strip=True) == (b"", (9, 4), len(USAGE))
    assert tokens.tail_usage(USAGE, strip=False) == (USAGE, (9, 4), len(USAGE))


def test_the_usage_chunk_before_done_in_one_run() -> None:
    run = CONTENT + USAGE + DONE
    assert tokens.tail_usage(run, strip=True) == (CONTENT + DONE, (9, 4), len(USAGE))
    assert tokens.tail_usage(run, strip=False)[0] == run


def test_usage_in_a_chunk_with_choices_is_read_but_never_removed() -> None:
    """Older servers put ``usage`` on the final chunk itself: its text must stay."""
    final = sse(
        {
            "choices": [{"index": 0, "delta": {"content": "end"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1},
        }
    )
    run = final + DONE
    assert tokens.tail_usage(run, strip=True) == (run, (3, 1), len(final))


@pytest.mark.parametrize(
    "event",
    [
        sse({"choices": [], "usage": None}),
        sse({"choices": [], "usage": {"prompt_tokens": -1, "completion_tokens": 2}}),
        sse({"choices": [], "usage": {"prompt_tokens": True, "completion_tokens": 2}}),
        sse({"choices": [], "usage": {"prompt_tokens": 2**40, "completion_tokens": 2}}),
        sse({"choices": [], "usage": {"prompt_tokens": "9", "completion_tokens": 2}}),
        b"data: {not json\n\n",
        b"data: []\n\n",
        b": a comment\n\n",
    ],
)
def test_anything_else_is_no_usage_and_is_relayed_as_is(event: bytes) -> None:
    run = CONTENT + event
    assert tokens.tail_usage(run, strip=True)[:2] == (run, None)


def test_estimates_count_about_four_characters_a_token() -> None:
    payload = {
        "messages": [
            {"role": "system", "content": "x" * 40},
            {"role": "user", "content": [{"type": "text", "text": "y" * 40}, {"type": "image"}]},
        ]
    }
    assert tokens.estimate(tokens.prompt_chars(payload)) == 20
    assert tokens.estimate(tokens.prompt_chars({"prompt": ["ab", "cd"]})) == 1
    assert tokens.estimate(tokens.prompt_chars({"input": "z" * 9})) == 3
    reply = {"choices": [{"message": {"content": "w" * 16}}, {"text": "v" * 4}]}
    assert tokens.estimate(tokens.reply_chars(reply)) == 5
    assert tokens.estimate(0) == 0
    # A stream of 40 events of 100 bytes each: 38 tokens (less the role and stop chunks).
    assert tokens.estimate_stream_completion(4000, 100) == 38
