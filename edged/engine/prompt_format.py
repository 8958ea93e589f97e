"""Qwen3.5's chat markup as edged writes it, in one place. The daemon extends a state turn by
turn (a system prompt read once, then an image, then each question forked from it), so it
writes the markup piece by piece rather than through the chat template; thinking stays off,
as the template writes it when ``enable_thinking`` is false."""

from __future__ import annotations

USER_IMAGE = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
"""A user turn opened with one picture (its pixels go to Engine.extend_prompt with it)."""

ANSWER = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
"""Closes the user turn and opens the model's answer, thinking off."""

END_OF_TURN = "<|im_end|>"
"""Ends a turn; the model ends its answers with it."""


def system_turn(text: str) -> str:
    return f"<|im_start|>system\n{text}<|im_end|>\n"


def user_turn(text: str) -> str:
    """A whole user turn of text, ready for the answer (ANSWER) to follow."""
    return f"<|im_start|>user\n{text}"


def rule_question(when: str) -> str:
    """A rule's condition asked of a frame; its P(yes) is read right after ANSWER."""
    return f"{when}? Answer yes or no."


def follow_up(question: str, answer_closed: bool) -> str:
    """The next user turn of a conversation whose last answer ended with its end-of-turn token
    (``answer_closed``) or was cut short by max_tokens, which leaves the turn to close here."""
    return f"{'' if answer_closed else '<|im_end|>'}\n{user_turn(question)}"


def conversation(turns: list[tuple[str, str]], user_turn_open: bool) -> str:
    """Earlier (role, text) turns, user first, ending with the assistant's, written as a state
    holds them after answering: each answer closed by its end-of-turn token. ``user_turn_open``:
    the first user turn is already open (a picture was read into it)."""
    pieces = []
    for index, (role, text) in enumerate(turns):
        if role == "user":
            pieces.append(text if index == 0 and user_turn_open else ("\n" if index else "") + user_turn(text))
        else:
            pieces.append(f"{ANSWER}{text}{END_OF_TURN}")
    return "".join(pieces)
