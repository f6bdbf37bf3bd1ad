"""Refusals and boilerplate are caught before any caption is coded."""

import pytest

from codec.semantic.captions import clean_caption, is_refusal

REFUSALS = [
    "I'm sorry, I can't help with identifying people in images.",
    "I’m sorry, but I cannot assist with that request.",
    "Sorry, I can't describe this image.",
    "I am unable to provide a description of this photo.",
    "As an AI, I cannot identify the person shown.",
    "Unfortunately, I cannot view images.",
    "The photo shows a man. I'm sorry, but I can't identify people from their faces.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_detected_and_never_kept(text):
    assert is_refusal(text)
    assert clean_caption(text) == ""


@pytest.mark.parametrize("text", [
    "A stone building features red shutters on all windows.",
    "Sorry-looking wilted flowers in a cracked vase.",  # "sorry" as a word, not a refusal
    "A sign reads 'I can't stop' in red letters.",
])  # fmt: skip
def test_ordinary_captions_pass(text):
    assert not is_refusal(text)
    assert clean_caption(text) == text


def test_chat_boilerplate_and_markup_are_cut():
    assert clean_caption("Sure! Here is a brief description of the image: **A red door** in a white wall.") == (
        "A red door in a white wall."
    )
    assert clean_caption('  "A parrot on a branch."\n') == "A parrot on a branch."
    assert clean_caption(None) == "" and clean_caption("   ") == ""
