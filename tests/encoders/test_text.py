"""Text encoders: the real pip-packaged MiniLM, a tiny T5 built from a config, class labels, hub errors."""

from __future__ import annotations

import logging

import pytest
import torch

from sorakit.config import TextEncoderConfig
from sorakit.encoders.text import (
    BUILTIN_MINILM,
    ClassLabelEncoder,
    MiniLMEncoder,
    T5Encoder,
    build_text_encoder,
)
from sorakit.errors import UserError


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder(model_max_length=32)


def _sentence(emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling over real tokens, L2-normalised: [B, 1, L, C] -> [B, C]."""
    m = mask[:, :, None].float()
    v = (emb[:, 0] * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(v, dim=-1)


def test_minilm_shapes_and_padding(minilm: MiniLMEncoder) -> None:
    emb, mask = minilm.encode(["a cat", "a dog running across a green field"])
    assert emb.shape == (2, 1, 32, 384)
    assert mask.shape == (2, 32)
    assert minilm.output_dim == 384 and minilm.model_max_length == 32
    # [CLS] a cat [SEP] = 4 tokens; the longer prompt has more
    assert mask[0].sum().item() == 4
    assert mask[1].sum().item() > 4
    assert torch.all(mask[0, 4:] == 0)


def test_minilm_is_the_real_pretrained_encoder(minilm: MiniLMEncoder) -> None:
    """Paraphrases land closer than unrelated sentences -- only true for trained weights."""
    emb, mask = minilm.encode(
        [
            "a small cat sleeps on the sofa",
            "a kitten is napping on a couch",
            "the stock market fell sharply today",
        ]
    )
    s = _sentence(emb, mask)
    close = (s[0] @ s[1]).item()
    far = (s[0] @ s[2]).item()
    assert close > 0.5 and far < 0.2, (close, far)


def test_minilm_batch_independent(minilm: MiniLMEncoder) -> None:
    both, _ = minilm.encode(["a cat", "a dog running across a green field"])
    alone, _ = minilm.encode(["a cat"])
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=1e-5)


def test_long_prompt_is_truncated_with_warning(
    minilm: MiniLMEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    long = " ".join(["word"] * 100)
    logger = logging.getLogger("sorakit")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="sorakit"):
            emb, mask = minilm.encode([long, "short"])
    finally:
        logger.removeHandler(caplog.handler)
    assert emb.shape == (2, 1, 32, 384)
    assert mask[0].sum().item() == 32
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_build_minilm_from_config() -> None:
    enc = build_text_encoder(TextEncoderConfig(type="minilm", path=BUILTIN_MINILM, model_max_length=16))
    emb, mask = enc.encode(["hello world"])
    assert emb.shape == (1, 1, 16, 384)


def test_tiny_t5(tiny_t5_dir) -> None:
    enc = build_text_encoder(TextEncoderConfig(type="t5", path=str(tiny_t5_dir), model_max_length=12))
    assert isinstance(enc, T5Encoder)
    emb, mask = enc.encode(["a red circle", "a blue square moving to the right"])
    assert emb.shape == (2, 1, 12, enc.output_dim) and enc.output_dim == 32
    # T5 appends </s>: "a red circle" is at least 2 tokens + eos, padded afterwards
    n0 = int(mask[0].sum())
    assert 2 < n0 < 12 and torch.all(mask[0, n0:] == 0)
    # same computation as calling the transformers model directly on the tokens
    from transformers import T5EncoderModel

    ref_model = T5EncoderModel.from_pretrained(str(tiny_t5_dir))
    tokens = enc.tokenize(["a red circle", "a blue square moving to the right"])
    ref = ref_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
    torch.testing.assert_close(emb[:, 0], ref)


def test_t5_fp16_request_runs_in_fp32(tiny_t5_dir) -> None:
    enc = build_text_encoder(TextEncoderConfig(type="t5", path=str(tiny_t5_dir)), dtype=torch.float16)
    assert enc.dtype == torch.float32


def test_class_labels() -> None:
    enc = build_text_encoder(TextEncoderConfig(type="classes", path="imagenet"))
    assert isinstance(enc, ClassLabelEncoder) and enc.num_classes == 1000
    labels, mask = enc.encode(["207", " 360 "])
    assert labels.tolist() == [207, 360] and mask is None
    assert enc.null(3).tolist() == [1000, 1000, 1000]
    with pytest.raises(UserError, match="out of range"):
        enc.encode(["1000"])
    with pytest.raises(UserError, match="class index"):
        enc.encode(["a golden retriever"])
    assert build_text_encoder(TextEncoderConfig(type="classes", path="ucf101")).num_classes == 101


def test_bad_encoder_inputs(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="unknown text encoder"):
        build_text_encoder(TextEncoderConfig(type="bert"))
    with pytest.raises(UserError, match="no such directory"):
        build_text_encoder(TextEncoderConfig(type="t5", path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        build_text_encoder(TextEncoderConfig(type="t5", path=str(tmp_path / "empty")))
    with pytest.raises(UserError) as info:
        build_text_encoder(TextEncoderConfig(type="t5", path="sorakit-test-nobody/t5-missing"))
    msg = str(info.value)
    assert "\n" not in msg and "huggingface-cli download sorakit-test-nobody/t5-missing" in msg
    assert "--text-encoder" in msg


def test_clip_pooled_single_token(tmp_path) -> None:
    """CLIP text tower built from a small config (with the MiniLM tokenizer): pooled [B, 1, 1, C]."""
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from sorakit.encoders.text import minilm_path

    AutoTokenizer.from_pretrained(str(minilm_path())).save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=16, eos_token_id=102)  # fmt: skip
    CLIPTextModel(config).save_pretrained(str(tmp_path))
    enc = build_text_encoder(TextEncoderConfig(type="clip", path=str(tmp_path), model_max_length=16))
    emb, mask = enc.encode(["a cat", "a dog on a skateboard"])
    assert emb.shape == (2, 1, 1, 32) and mask.shape == (2, 1) and bool(mask.all())
    assert not torch.allclose(emb[0], emb[1])


def test_hub_resolution_offline(tmp_path, monkeypatch) -> None:
    from sorakit.hub import resolve_dir, resolve_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "w.pt").write_bytes(b"x")
    assert resolve_file(str(tmp_path / "w.pt")) == tmp_path / "w.pt"
    assert resolve_dir(str(tmp_path)) == tmp_path
    with pytest.raises(UserError) as info:
        resolve_file("OpenSora-v1-HQ-16x256x256.pth")
    msg = str(info.value)
    assert (
        "huggingface-cli download hpcai-tech/Open-Sora OpenSora-v1-HQ-16x256x256.pth" in msg
        and "--ckpt" in msg
    )
    with pytest.raises(UserError, match="dl.fbaipublicfiles.com"):
        resolve_file("DiT-XL-2-256x256.pt")
    with pytest.raises(UserError, match="huggingface-cli download PixArt-alpha/PixArt-alpha x.pth"):
        resolve_file("PixArt-alpha/PixArt-alpha/x.pth")
    with pytest.raises(UserError, match="no such file"):
        resolve_file(str(tmp_path / "missing.pt"))


def test_t5_directory_in_the_hub_layout(tmp_path) -> None:
    """DeepFloyd/t5-v1_1-xxl ships a sentencepiece `spiece.model` (no tokenizer.json): it must load."""
    import json

    import sentencepiece as spm
    from transformers import T5Config, T5EncoderModel

    corpus = ["a red circle moving to the right", "a blue square bouncing on the floor",
              "a cat playing the piano in a sunny room", "waves crashing on a rocky beach at sunset"] * 20  # fmt: skip
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_prefix=str(tmp_path / "spiece"), vocab_size=40, pad_id=0, eos_id=1,
        unk_id=2, bos_id=-1, model_type="unigram", minloglevel=2,
    )  # fmt: skip
    (tmp_path / "spiece.vocab").unlink()
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0})
    )
    config = T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False)  # fmt: skip
    T5EncoderModel(config).save_pretrained(str(tmp_path))
    enc = build_text_encoder(TextEncoderConfig(type="t5", path=str(tmp_path), model_max_length=10))
    emb, mask = enc.encode(["a red cat"])
    assert emb.shape == (1, 1, 10, 16)
    ids = enc.tokenize(["a red cat"])["input_ids"][0]
    n = int(mask.sum())
    assert ids[n - 1] == 1 and torch.all(ids[n:] == 0)  # </s> then <pad>, as T5 expects


def test_short_component_names_map_to_hub_ids(monkeypatch) -> None:
    from sorakit.hub import resolve_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="huggingface-cli download DeepFloyd/t5-v1_1-xxl"):
        resolve_dir("t5-v1_1-xxl", what="t5 text encoder", flag="--text-encoder")


def test_text_encoders_run_their_float32_linears_on_onednn(tiny_t5_dir, minilm: MiniLMEncoder) -> None:
    """Every nn.Linear of a loaded encoder becomes sorakit's oneDNN `Linear` (same parameters and keys), and the
    embeddings agree with the encoder run through PyTorch's own linears to float32 rounding (summed in another
    order, over 6 layers with their LayerNorms: up to ~1e-4 of a value)."""
    from sorakit.models.layers import Linear, use_onednn

    enc = build_text_encoder(TextEncoderConfig(type="t5", path=str(tiny_t5_dir), model_max_length=12))
    for e in (enc, minilm):
        linears = [m for m in e.model.modules() if isinstance(m, torch.nn.Linear)]
        assert linears and all(type(m) is Linear for m in linears)
        prompts = ["a red circle", "a blue square moving to the right"]
        emb, _ = e.encode(prompts)
        with use_onednn(False):
            ref, _ = e.encode(prompts)
        torch.testing.assert_close(emb, ref, rtol=2e-4, atol=2e-4)
        assert (emb - ref).abs().mean() < 1e-6
