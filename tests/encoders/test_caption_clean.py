"""T5 prompts are cleaned as Open-Sora 1.0 cleaned its captions (rule-by-rule reference:
tests/pipeline/test_opensora_parity.py); the switch, the precision default and the other encoders."""

from __future__ import annotations

import pytest
import torch

from sorakit.config import TextEncoderConfig
from sorakit.encoders.caption_clean import clean_caption, clean_for_t5
from sorakit.encoders.text import BUILTIN_MINILM, build_text_encoder
from sorakit.errors import UserError


def test_cleaning_examples() -> None:
    assert clean_for_t5("A Red Circle, moving RIGHT!!") == "a red circle, moving right!!"
    assert clean_for_t5("<b>Two&nbsp;DOGS</b> @bob https://x.com/a") == "two dogs"
    assert clean_for_t5("see   photo.JPG  page 3, free shipping") == "see"
    assert clean_for_t5("") == ""
    # one pass leaves the URL that the HTML entity hid; the second removes it (why upstream ran it twice)
    once = clean_caption("a&amp;lt;b&amp;gt;c https%3A%2F%2Fx.com")
    assert clean_for_t5("a&amp;lt;b&amp;gt;c https%3A%2F%2Fx.com") == clean_caption(once)


def test_t5_cleans_by_default_and_can_be_switched_off(tiny_t5_dir) -> None:
    cfg = TextEncoderConfig(type="t5", path=str(tiny_t5_dir), model_max_length=12)
    assert cfg.clean_caption is True
    enc = build_text_encoder(cfg)
    raw, clean = "A RED Circle <i>moving</i> to the RIGHT @bob", "a red circle moving to the right"
    assert enc.preprocess([raw]) == [clean]
    emb_raw, mask_raw = enc.encode([raw])
    emb_clean, mask_clean = enc.encode([clean])
    assert torch.equal(emb_raw, emb_clean) and torch.equal(mask_raw, mask_clean)

    cfg.clean_caption = False
    plain = build_text_encoder(cfg)
    assert plain.preprocess([raw]) == [raw]
    assert not torch.equal(plain.tokenize([raw])["input_ids"], enc.tokenize([clean])["input_ids"])


def test_t5_runs_in_fp32_unless_asked(tiny_t5_dir) -> None:
    cfg = TextEncoderConfig(type="t5", path=str(tiny_t5_dir))
    assert cfg.dtype == "fp32"
    assert build_text_encoder(cfg, dtype=torch.bfloat16).dtype == torch.float32
    cfg.dtype = "auto"
    assert build_text_encoder(cfg, dtype=torch.bfloat16).dtype == torch.bfloat16
    cfg.dtype = "bf16"
    assert build_text_encoder(cfg).dtype == torch.bfloat16
    cfg.dtype = "fp8"
    with pytest.raises(UserError, match="text_encoder.dtype"):
        build_text_encoder(cfg)


def test_other_encoders_are_not_cleaned() -> None:
    enc = build_text_encoder(TextEncoderConfig(type="minilm", path=BUILTIN_MINILM, model_max_length=16))
    assert enc.preprocess(["A Red <b>Circle</b>"]) == ["A Red <b>Circle</b>"]
