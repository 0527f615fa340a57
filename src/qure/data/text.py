"""Query-text construction and caption cleaning as the reference code does it."""

from __future__ import annotations

import re

# Characters LAVIS' ``blip_caption`` processor blanks out before tokenisation.
_BLIP_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")
_MULTI_SPACE = re.compile(r"\s{2,}")


def fashioniq_query_text(captions: list[str] | tuple[str, ...]) -> str:
    """FashionIQ's standard query: ``c0.strip('.?, ').capitalize() + " and " + c1...``.

    One query per triplet, always in this order (CLIP4Cir, SPRC and QuRe evaluation, and
    QuRe training, which does not randomise the order).
    """
    first, second = captions
    return f"{first.strip('.?, ').capitalize()} and {second.strip('.?, ')}"


def blip_caption(text: str, max_words: int = 50) -> str:
    """BLIP's caption cleaning: lower-case, blank ``.!"()*#:;~``, squeeze spaces, strip,
    keep at most ``max_words`` words. The tokenizer truncates further (32 tokens)."""
    text = _BLIP_PUNCTUATION.sub(" ", text.lower())
    text = _MULTI_SPACE.sub(" ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def circo_query_text(caption: str, template: str) -> str:
    """Fill CIRCO's prompt template; the release uses ``a photo of $ that {caption}``."""
    return template.replace("{caption}", caption)
