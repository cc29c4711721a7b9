"""`sorakit data caption`: a chat-completions server on 127.0.0.1 (ok, empty, failing, rate-limited,
refusing), a tiny randomly initialised LLaVA built from a transformers config, and resuming."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest

from sorakit.cli.main import main
from sorakit.data.video import read_video
from sorakit.tools.caption import (
    CaptionError,
    clean_caption,
    load_frames,
    parse_retry_after,
    run_caption,
    sample_frame_indices,
)


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def clip_csv(tmp_path: Path, video: Path, ranges: list[tuple[int, int]], name: str = "clips.csv") -> Path:
    p = tmp_path / name
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "start_frame", "end_frame", "label"])
        for k, (s, e) in enumerate(ranges):
            w.writerow([str(video), s, e, k])
    return p


def test_frame_sampling(media):
    assert sample_frame_indices(10) == [2, 5, 8]
    assert sample_frame_indices(1) == [0, 0, 0]
    path, _, n, _ = media["a"]
    frames = load_frames({"path": str(path), "start_frame": "40", "end_frame": "60"}, path)
    expected = read_video(path, indices=[44, 50, 56])  # 20/50/80% of the 20-frame clip [40, 60)
    assert len(frames) == 3 and all(np.array_equal(f, e) for f, e in zip(frames, expected))
    whole = load_frames({"path": str(path)}, path)
    assert all(np.array_equal(f, e) for f, e in zip(whole, read_video(path, indices=sample_frame_indices(n))))
    with pytest.raises(CaptionError, match="cannot read"):
        load_frames({"path": "x"}, media["bad"][1])


def test_clean_caption_and_retry_after():
    assert clean_caption("  A cat\n on a  mat. ") == "A cat on a mat."
    for bad in ("", "   \n", None):
        with pytest.raises(CaptionError, match="empty"):
            clean_caption(bad)
    with pytest.raises(CaptionError, match="refused"):
        clean_caption("I'm sorry, but I can't help with that.")
    assert (
        parse_retry_after("3") == 3.0 and parse_retry_after("x") is None and parse_retry_after(None) is None
    )
    assert (
        50
        < parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60)))
        <= 61
    )


def test_api_caption_failures_and_resume(media, tmp_path, monkeypatch, chat_server):
    path = media["a"][0]
    clips = clip_csv(tmp_path, path, [(0, 18), (18, 40), (40, 60), (60, 76), (0, 76)])
    out = tmp_path / "captions.csv"
    script = [
        "A square glides to the right.",  # row 0
        "   ",  # row 1: empty caption -> failure
        ("status", 500, {}),
        ("status", 500, {}),
        ("status", 500, {}),  # row 2: fails 3 times -> failure
        ("status", 429, {"Retry-After": "1"}),  # row 3: rate limited once, then fine
        "Stripes drift slowly.",
        ("refusal", "I can't describe this."),  # row 4: refused -> failure
    ]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    args = [
        "data",
        "caption",
        str(clips),
        "-o",
        str(out),
        "--workers",
        "1",
        "--batch-size",
        "2",
        "--max-retries",
        "2",
        "--retry-backoff",
        "0.01",
        "--model",
        "tiny-vlm",
    ]
    with chat_server(script) as server:
        assert main([*args, "--base-url", server.url]) == 0
    reqs = server.requests
    assert len(reqs) == 8
    for r in reqs:
        assert (
            r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer sk-test" and r["model"] == "tiny-vlm"
        )
        parts = r["messages"][0]["content"]
        images = [p for p in parts if p["type"] == "image_url"]
        assert len(images) == 3 and all(
            p["image_url"]["url"].startswith("data:image/jpeg;base64,") for p in images
        )
    assert server.times[6] - server.times[5] >= 0.95  # Retry-After: 1 was honoured
    rows = read(out)
    assert [(r["start_frame"], r["end_frame"], r["label"], r["text"]) for r in rows] == [
        ("0", "18", "0", "A square glides to the right."),
        ("60", "76", "3", "Stripes drift slowly."),
    ]
    failures = {r["label"]: r["error"] for r in read(tmp_path / "captions.failures.csv")}
    assert set(failures) == {"1", "2", "4"}
    assert failures["1"] == "empty caption"
    assert "HTTP 500" in failures["2"] and "3 attempts" in failures["2"]
    assert failures["4"].startswith("refused")

    # resume: only the three failed rows are asked again; the output ends complete, in input order
    with chat_server([], default="Fine now.") as server:
        assert main([*args, "--base-url", server.url]) == 0
    assert len(server.requests) == 3
    rows = read(out)
    assert [r["label"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [r["text"] for r in rows] == [
        "A square glides to the right.",
        "Fine now.",
        "Fine now.",
        "Stripes drift slowly.",
        "Fine now.",
    ]
    assert not (tmp_path / "captions.failures.csv").exists()


def test_api_bad_key_stops_and_missing_key_is_a_user_error(media, tmp_path, monkeypatch, capsys, chat_server):
    clips = clip_csv(tmp_path, media["a"][0], [(0, 18)])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert main(["data", "caption", str(clips), "-o", str(tmp_path / "o.csv")]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err
    with chat_server([("status", 401, {})]) as server:
        code = main(["data", "caption", str(clips), "-o", str(tmp_path / "o.csv"), "--base-url", server.url])
    assert code == 2 and "HTTP 401" in capsys.readouterr().err
    assert main(["data", "caption", str(clips), "-o", "x.csv", "--frame-points", "0.5,2"]) == 2


class FrameMeanBackend:
    """A stand-in model: the caption is computed from the frames, so a caption can be traced to its clip."""

    def __init__(self, interrupt_on_call: int | None = None):
        self.calls = 0
        self.clips = 0
        self.interrupt_on_call = interrupt_on_call

    def caption(self, batch):
        self.calls += 1
        if self.calls == self.interrupt_on_call:
            raise KeyboardInterrupt
        self.clips += len(batch)
        return [describe(frames) for frames in batch]


def describe(frames) -> str:
    return "frames " + " ".join(f"{f.mean():.2f}" for f in frames)


def test_interrupted_run_resumes_without_redoing_or_losing_rows(media, tmp_path):
    path = media["a"][0]
    ranges = [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50), (50, 60), (60, 70)]
    rows = [
        {"path": str(path), "start_frame": str(s), "end_frame": str(e), "label": str(k)}
        for k, (s, e) in enumerate(ranges)
    ]
    paths = [path] * len(rows)
    out, fail = tmp_path / "out.csv", tmp_path / "out.failures.csv"
    first = FrameMeanBackend(interrupt_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        run_caption(rows, paths, first, out, fail, batch_size=2, workers=1, progress=False)
    done = read(out)
    assert len(done) == 4  # two batches of two were written before the interruption
    second = FrameMeanBackend()
    stats = run_caption(rows, paths, second, out, fail, batch_size=2, workers=2, progress=False)
    assert second.clips == 3 and stats.captioned == 3 and stats.skipped == 4
    final = read(out)
    assert [r["label"] for r in final] == [str(k) for k in range(len(ranges))]
    for r, p in zip(final, paths):
        assert r["text"] == describe(load_frames(r, p))  # each caption belongs to its own clip
    # a third run has nothing left to do
    third = FrameMeanBackend()
    run_caption(rows, paths, third, out, fail, batch_size=2, progress=False)
    assert third.calls == 0 and read(out) == final


# ------------------------------------------------------------------------------ tiny local LLaVA
WORDS = "a the cat dog runs walks on grass street red blue green sky person car fast slow square".split()


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    """A randomly initialised LLaVA (tiny CLIP vision tower + tiny Llama) saved with its processor."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<image>": 4}
    for w in [*WORDS, "USER:", "ASSISTANT:"]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=4,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    # only words can come out, so a caption is never empty by chance
    model.generation_config.suppress_tokens = [0, 1, 2, 3, 4, vocab["USER:"], vocab["ASSISTANT:"]]
    chat = (
        "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
        "{% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=chat,
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
    )
    d = tmp_path_factory.mktemp("tiny_llava")
    model.save_pretrained(d)
    processor.save_pretrained(d)
    return d


def test_local_vlm_gets_all_frames(tiny_llava, media, tmp_path):
    from sorakit.tools.caption import LocalVLM

    backend = LocalVLM(tiny_llava, prompt="describe the square", max_new_tokens=6)
    prompt = backend.build_prompt(3)
    assert prompt.count("<image>") == 3 and prompt.rstrip().endswith("ASSISTANT:")
    seen: list[tuple[int, ...]] = []
    backend.model.model.vision_tower.register_forward_hook(
        lambda m, args, out: seen.append(tuple(args[0].shape))
    )
    path = media["a"][0]
    rows = [
        {"path": str(path), "start_frame": str(s), "end_frame": str(e)}
        for s, e in [(0, 18), (18, 40), (40, 60)]
    ]
    out = tmp_path / "cap.csv"
    stats = run_caption(rows, [path] * 3, backend, out, tmp_path / "f.csv", batch_size=2, progress=False)
    assert stats.captioned == 3
    # batches of 2 and 1 clips, 3 frames each: every frame went through the vision tower
    assert [s[0] for s in seen] == [6, 3] and all(s[1:] == (3, 32, 32) for s in seen)
    for r in read(out):
        words = r["text"].split()
        assert 1 <= len(words) <= 6 and set(words) <= set(WORDS)


def test_local_vlm_cli(tiny_llava, media, tmp_path):
    clips = clip_csv(tmp_path, media["a"][0], [(0, 18), (18, 40)])
    out = tmp_path / "cap.csv"
    assert (
        main(
            [
                "data",
                "caption",
                str(clips),
                "-o",
                str(out),
                "--model-dir",
                str(tiny_llava),
                "--max-new-tokens",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = read(out)
    assert [r["label"] for r in rows] == ["0", "1"] and all(r["text"].strip() for r in rows)
    assert main(["data", "caption", str(clips), "-o", str(out), "--model-dir", str(tmp_path)]) == 2


def test_keep_existing_and_no_retry_failed(media, tmp_path):
    path = media["a"][0]
    rows = [
        {"path": str(path), "start_frame": "0", "end_frame": "10", "text": "kept as is"},
        {"path": str(path), "start_frame": "10", "end_frame": "20", "text": ""},
        {"path": str(media["bad"][1]), "text": ""},
    ]
    paths = [path, path, media["bad"][1]]
    out, fail = tmp_path / "o.csv", tmp_path / "o.failures.csv"
    backend = FrameMeanBackend()
    stats = run_caption(rows, paths, backend, out, fail, keep_existing=True, progress=False)
    assert backend.clips == 1 and (stats.captioned, stats.skipped, stats.failed) == (1, 1, 1)
    assert [r["text"] for r in read(out)] == ["kept as is", describe(load_frames(rows[1], path))]
    assert [Path(r["path"]).name for r in read(fail)] == ["notes.mp4"] and read(fail)[0]["error"]
    again = FrameMeanBackend()
    stats = run_caption(rows, paths, again, out, fail, keep_existing=True, retry_failed=False, progress=False)
    assert again.calls == 0 and stats.failed == 1 and len(read(fail)) == 1  # the failure is kept, not retried


def test_run_that_captions_nothing_exits_nonzero(media, tmp_path, monkeypatch, capsys, chat_server):
    """A dead/erroring server: every clip fails -> exit 1 and one error line; one success -> exit 0."""
    clips = clip_csv(tmp_path, media["a"][0], [(0, 18), (18, 40)])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    args = [
        "data",
        "caption",
        str(clips),
        "-o",
        str(tmp_path / "o.csv"),
        "--max-retries",
        "0",
        "--workers",
        "1",
    ]
    with chat_server([], default=("status", 500, {})) as server:
        assert main([*args, "--base-url", server.url]) == 1
    err = capsys.readouterr().err
    assert "sorakit: error: no clip was captioned, all 2 failed" in err and "Traceback" not in err
    assert len(read(tmp_path / "o.failures.csv")) == 2
    with chat_server(["One clip fine."], default=("status", 500, {})) as server:
        assert main([*args, "--base-url", server.url]) == 0  # partial success is still a success


def test_caption_help_shows_single_percent(capsys):
    with pytest.raises(SystemExit):
        main(["data", "caption", "--help"])
    out = capsys.readouterr().out
    assert "20/50/80% of the clip" in " ".join(out.split()) and "%%" not in out
