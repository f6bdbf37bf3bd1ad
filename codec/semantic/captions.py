"""Cleaning captions: refusals and boilerplate are detected here and never coded.

A captioning model sometimes answers with a refusal ("I'm sorry, I can't ...": two of the
reference code's published Kodak captions are such refusals) or wraps its answer in chat
boilerplate ("Sure! Here is a description:"). Coding either would spend bits on words that
describe nothing, so a refusal becomes "no caption" and boilerplate is cut off.
"""

from __future__ import annotations

import re

_REFUSAL = re.compile(
    r"^\W*(?:sorry\b(?!-)|i(?:'|’)?m sorry|i am sorry|i apologi[sz]e|unfortunately,? i|as an ai\b|"
    r"i(?: |(?:'|’))(?:can(?:'|’)?t|cannot|can not|am unable to|m unable to|am not able to|won(?:'|’)?t|do not|"
    r"don(?:'|’)?t|will not) "
    r"(?:help|assist|provide|describe|identify|comply|process|view|see|analy[sz]e|access|do that|fulfil))",
    re.IGNORECASE,
)
_REFUSAL_ANYWHERE = re.compile(
    r"\b(?:i(?:'|’)?m sorry,? but i|i (?:can(?:'|’)?t|cannot) (?:help|assist) with|"
    r"(?:can(?:'|’)?t|cannot|unable to) (?:identify|describe) (?:people|the person|individuals|this image))",
    re.IGNORECASE,
)
_LEAD_IN = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely)[!,.]?\s*)?"
    r"(?:(?:here(?:'|’)?s|here is|below is)\s+(?:a|the|my)\s+(?:brief\s+|short\s+|concise\s+|detailed\s+)?"
    r"(?:description|caption|summary)[^:\n]*:\s*)?",
    re.IGNORECASE,
)
_MARKUP = re.compile(r"[*_#`]+")


def is_refusal(text: str) -> bool:
    """True for an answer that declines to describe the image."""
    return bool(_REFUSAL.search(text) or _REFUSAL_ANYWHERE.search(text))


def clean_caption(text: str | None) -> str:
    """A caption worth coding, or "" (refusals, empty answers)."""
    if not text:
        return ""
    text = _MARKUP.sub("", text)
    text = _LEAD_IN.sub("", text, count=1)
    text = " ".join(text.split()).strip().strip("\"“”'")
    if not text or is_refusal(text):
        return ""
    return text
