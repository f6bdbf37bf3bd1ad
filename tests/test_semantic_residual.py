"""The residual: only what the reconstruction's caption lacks, compact, empty when they agree."""

from codec.semantic.residual import clean_residual, content_words, residual_prompt, word_residual


def test_word_residual_keeps_what_the_reconstruction_misses_in_order():
    original = "A red wooden door with a white round doorknob and a metal latch."
    recon = "A blurry red door in a wall."
    assert word_residual(original, recon) == "wooden white round doorknob metal latch"


def test_word_residual_is_empty_when_the_captions_agree():
    text = "Two boats on a calm lake under a blue sky."
    assert word_residual(text, text) == ""
    assert word_residual(text, "two boat on the calm lakes, under blue skies") == ""  # plural and case folded


def test_word_residual_is_capped_and_keeps_numbers():
    original = "Five caps: neon yellow, orange, green, pink, blue, purple, grey, black, white, teal, gold, silver, 1999."
    out = word_residual(original, "", max_words=5)
    assert out.split() == ["Five", "caps", "neon", "yellow", "orange"]
    assert "1999" in word_residual("A poster dated 1999.", "A poster.")


def test_stock_phrases_are_not_content():
    assert content_words("The image shows a dog") == ["dog"]


def test_model_answers_are_cleaned():
    assert clean_residual("NONE") == "" and clean_residual("None.") == ""
    assert clean_residual("Sure! Here is a short summary: white lighthouse, three boats") == "white lighthouse, three boats"
    assert clean_residual("I'm sorry, I can't help with that.") == ""
    assert len(clean_residual(" ".join(["word"] * 30), max_words=12).split()) == 12
    prompt = residual_prompt("a red door", "a door", 8)
    assert "a red door" in prompt and "at most 8 words" in prompt
