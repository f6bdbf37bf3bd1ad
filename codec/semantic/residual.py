"""The semantic residual: what the original's caption says that the reconstruction's lacks.

The paper asks a language model for it (:func:`residual_prompt` builds that request, for any
text model the caption backends can reach). Without one, :func:`word_residual` gives a
deterministic answer: the original caption's content words, in their order, minus those the
reconstruction's caption already has (compared by a crude stem), capped at ``max_words``.
"""

from __future__ import annotations

import re

from codec.semantic.captions import clean_caption

# Words that carry no content a decoder could draw (articles, pronouns, auxiliaries, prepositions
# of no spatial meaning, and captioning's own stock phrases).
STOP_WORDS = frozenset("""
a an the this that these those it its it's is are was were be been being has have had having do does did
and or but nor so yet of to for from by with as at than then there here their they them he she his her him
we our you your i my me which who whom whose what when where while into onto upon about also very too just
some any each every all both either neither other such own same few more most much many can could would
should will shall may might must not no image picture photo photograph shows showing depicts depicting
features featuring displays displaying appears appear seen visible scene view captured close-up closeup
""".split())  # fmt: skip

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+(?:[.,]\d+)?")
NONE_ANSWERS = {"none", "nothing", "n/a", "no difference", "no differences", "identical", "same"}


def _stem(word: str) -> str:
    """Plural folding, enough to match "skies"/"sky", "boxes"/"box", "lakes"/"lake"."""
    w = word.lower().strip("'-")
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith("es") and w[-3] in "sxz" or w.endswith(("ches", "shes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def content_words(caption: str) -> list[str]:
    return [w for w in _WORD.findall(caption) if w.lower() not in STOP_WORDS]


def word_residual(original: str, reconstruction: str, max_words: int = 12) -> str:
    """Deterministic fallback: the original's content words the reconstruction's caption lacks."""
    have = {_stem(w) for w in content_words(reconstruction)}
    out: list[str] = []
    seen: set[str] = set()
    for w in content_words(original):
        s = _stem(w)
        if s in have or s in seen:
            continue
        seen.add(s)
        out.append(w)
        if len(out) == max_words:
            break
    return " ".join(out)


def residual_prompt(original: str, reconstruction: str, max_words: int = 12) -> str:
    """The request for a text model (the paper's procedure): answer only the missing content."""
    return (
        "Two descriptions of the same photo follow: one of the original, one of a blurry low-quality copy.\n"
        f"Original: {original}\nCopy: {reconstruction}\n"
        f"In at most {max_words} words, list the visual details the original description has that the copy's "
        "lacks or gets wrong (objects, colours, text, counts). No sentences, no explanation. "
        "If they agree, answer NONE."
    )


def clean_residual(answer: str, max_words: int = 12) -> str:
    """A text model's answer as a residual: boilerplate and refusals dropped, NONE -> ""."""
    text = clean_caption(answer)
    if text.lower().strip(" .!") in NONE_ANSWERS:
        return ""
    return " ".join(text.split()[:max_words]).rstrip(",;")
