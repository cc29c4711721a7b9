"""Caption cleaning for T5, rule for rule what Open-Sora 1.0 (and PixArt-alpha, and DeepFloyd IF before
them) applied to every caption before tokenising, in training and at inference.

    clean_caption("A Red Circle, moving RIGHT!!")       -> "a red circle, moving right!!"
    clean_for_t5('<b>Two&nbsp;DOGS</b> @bob https://x.com/a')  -> "two dogs"

The official T5-conditioned weights only ever saw cleaned captions, so :class:`sorakit.encoders.text.T5Encoder`
runs :func:`clean_for_t5` (the cleaning twice, as upstream does) by default; ``text_encoder.clean_caption
= false`` turns it off. Other encoders (CLIP, MiniLM) keep their own conventions and are not cleaned.

The rules are a table of ``(pattern, replacement)`` steps applied in order, with three non-regex steps
(URL unquoting + lower-casing, HTML to text with BeautifulSoup, mojibake / entity repair with ftfy) at the
places upstream has them. Each step is kept even where it looks redundant (``&quot;`` after the HTML parser,
``.strip()`` results that upstream discards): the point is identical output, not tidiness.
"""

from __future__ import annotations

import html
import re
import urllib.parse

# characters that become a space (runs of them): ***SALE***, #tag, [x], {y}, a|b, a/b, a\b
_BAD_PUNCT = re.compile(r"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\/\*]{1,}")
_URL_TAIL = r"[a-zA-Z0-9.\-]+[.](?:com|co|ru|net|org|edu|gov|it)[\w/-]*\b\/?(?!@)"
_DASHES = (
    r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0"
    r"\uFE31\uFE32\uFE58\uFE63\uFF0D]+"
)
_UNDERSCORE_OR_DASH = re.compile(r"(?:\-|\_)")

# (pattern, replacement), applied in order after the HTML step
_AFTER_HTML: list[tuple[str, str]] = [
    (r"@[\w\d]+\b", ""),  # @nickname
    # CJK strokes, katakana extensions, enclosed CJK, CJK compatibility, ideographs (ext. A, hexagrams, main)
    (r"[\u31c0-\u31ef]+", ""),
    (r"[\u31f0-\u31ff]+", ""),
    (r"[\u3200-\u32ff]+", ""),
    (r"[\u3300-\u33ff]+", ""),
    (r"[\u3400-\u4dbf]+", ""),
    (r"[\u4dc0-\u4dff]+", ""),
    (r"[\u4e00-\u9fff]+", ""),
    (_DASHES, "-"),  # every kind of dash -> "-"
    (r"[`´«»“”¨]", '"'),  # quotes to one standard
    (r"[‘’]", "'"),
    (r"&quot;?", ""),
    (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # IP addresses
    (r"\d:\d\d\s+$", ""),  # article ids
    (r"\\n", " "),  # a literal backslash-n
    (r"#\d{1,3}\b", ""),  # "#123"
    (r"#\d{5,}\b", ""),  # "#12345..."
    (r"\b\d{6,}\b", ""),  # "123456..."
    (r"[\S]+\.(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)", ""),  # file names
    (r"[\"\']{2,}", r'"'),  # """quoted"""
    (r"[\.]{2,}", r" "),  # ellipses
    (_BAD_PUNCT.pattern, r" "),
    (r"\s+\.\s+", r" "),  # " . "
]

# applied after ftfy's repair
_AFTER_FTFY: list[tuple[str, str]] = [
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),  # jc6640
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),  # jc6640vc
    (r"\b\d+[a-zA-Z]+\d+\b", ""),  # 6640vc231
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (r"\b(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)(\simage[s]?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", r" "),  # j2d1a2a...
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # 1920x1080 (Latin x, Cyrillic х, ×)
    (r"\b\s+\:\s+", r": "),
    (r"(\D[,\./])\b", r"\1 "),  # a space after punctuation glued to the next word
    (r"\s+", " "),
    (r"^[\"\']([\w\W]+)[\"\']$", r"\1"),  # surrounding quotes
    (r"^[\'\_,\-\:;]", r""),
    (r"[\'\_,\-\:\-\+]$", r""),
    (r"^\.\S+$", ""),
]


def _repair(text: str) -> str:
    """ftfy's mojibake repair, then HTML entities decoded twice (``&amp;nbsp;`` -> ``&nbsp;`` -> nbsp)."""
    import ftfy

    text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def clean_caption(caption: str) -> str:
    """One pass of Open-Sora 1.0's T5 caption cleaning (lower-case, no URLs/HTML/@names/CJK/ids/file
    names, normalised dashes and quotes, collapsed whitespace). Needs ``ftfy`` and ``beautifulsoup4``."""
    from bs4 import BeautifulSoup

    text = urllib.parse.unquote_plus(str(caption)).strip().lower()
    text = re.sub("<person>", "person", text)
    text = re.sub(r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|" + _URL_TAIL + "))", "", text)
    text = re.sub(r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|" + _URL_TAIL + "))", "", text)
    text = BeautifulSoup(text, features="html.parser").text
    for pattern, repl in _AFTER_HTML:
        text = re.sub(pattern, repl, text)
    # this-is-my-cute-cat / this_is_my_cute_cat: only when there are more than 3 such separators
    if len(_UNDERSCORE_OR_DASH.findall(text)) > 3:
        text = _UNDERSCORE_OR_DASH.sub(" ", text)
    text = _repair(text)
    for pattern, repl in _AFTER_FTFY:
        text = re.sub(pattern, repl, text)
    return text.strip()


def clean_for_t5(caption: str) -> str:
    """What upstream's T5 encoder feeds its tokenizer: :func:`clean_caption` applied twice (the second
    pass catches what the first one uncovers, e.g. a URL behind an HTML entity)."""
    return clean_caption(clean_caption(caption))
