"""Every error path of the API, through the official `openai` client against a real server on loopback.

The server here has no workers (jobs stay queued), an API key and a queue limit of 5, so queue and
pagination behaviour is exact. Each test deletes the jobs it creates.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import urllib.parse
from pathlib import Path

import numpy as np
import openai
import pytest
from openai.types import Video
from PIL import Image

from sorakit.data.video import write_video
from sorakit.serve.store import DB_FILE, JobStore, new_id

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

KEY = "test-key-123"


def _png(hw: tuple[int, int]) -> bytes:
    """A small valid PNG of height x width (its header is all the API reads)."""
    buf = io.BytesIO()
    Image.new("RGB", (hw[1], hw[0]), (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _expect(exc_type: type, call, status: int, code: str | None = None, param: str | None = None) -> str:  # noqa: ANN001
    with pytest.raises(exc_type) as info:
        call()
    exc = info.value
    assert exc.status_code == status
    body = exc.response.json()["error"]  # OpenAI's error shape, every field present
    assert set(body) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["code"] == code, body
    if param is not None:
        assert body["param"] == param, body
    return body["message"]


def _raw(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None, chunks=None):  # noqa: ANN001, ANN201
    """One request with http.client (chunked bodies, odd paths the client would encode)."""
    url = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    if chunks is not None:
        conn.request(method, path, body=chunks, headers=headers, encode_chunked=True)
    else:
        conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def test_api_key(api_only) -> None:
    _expect(
        openai.AuthenticationError, api_only.client(key="wrong-key-123").videos.list, 401, "invalid_api_key"
    )
    status, body = _raw(api_only, "GET", "/v1/videos", headers={"Authorization": ""})
    assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"
    status, _ = _raw(api_only, "GET", "/v1/videos", headers={"Authorization": f"Basic {KEY}"})
    assert status == 401
    assert api_only.get("/metrics", key="wrong-key-123")[0] == 401
    assert api_only.get("/metrics")[0] == 200
    assert api_only.client().videos.list().data == []
    # the page and the health probe are open; the page itself calls the API with the key
    assert api_only.get("/health", key="none")[1]["auth"] is True
    status, page = _raw(api_only, "GET", "/", headers={"Authorization": ""})
    assert status == 200 and b"<video" in page


@pytest.mark.parametrize(
    ("fields", "exc_type", "status", "code", "param", "says"),
    [
        ({"size": "1280x720"}, openai.BadRequestError, 400, "invalid_value", "size", "64x64"),
        ({"seconds": "4"}, openai.BadRequestError, 400, "invalid_value", "seconds", "supports 2"),
        ({"model": "sora-2"}, openai.BadRequestError, 400, "invalid_value", "model", "sorakit-builtin"),
        ({"extra_body": {"sampler": "euler"}}, openai.BadRequestError, 400, "invalid_value", "sampler", "rflow"),
        ({"extra_body": {"steps": 0}}, openai.BadRequestError, 400, "invalid_value", "steps", "between 1 and 500"),
        ({"extra_body": {"guidance": 99}}, openai.BadRequestError, 400, "invalid_value", "guidance", "between 0"),
        ({"extra_body": {"seed": "abc"}}, openai.UnprocessableEntityError, 422, "invalid_type", "seed", "integer"),
        ({"extra_body": {"steps": "2.5"}}, openai.UnprocessableEntityError, 422, "invalid_type", "steps", ""),
        ({"extra_body": {"negative_prompt": "x"}}, openai.BadRequestError, 400, "unknown_parameter", None, "seed"),
        ({"prompt": "x" * 2001}, openai.BadRequestError, 400, "too_long", "prompt", "limit is 2000"),
        ({"prompt": "   "}, openai.BadRequestError, 400, "invalid_value", "prompt", "empty"),
        ({"input_reference": ("ref.png", b"\x89PNG\r\n\x1a\n fake", "image/png")}, openai.BadRequestError, 400,
         "invalid_file", "input_reference", "not a readable image"),
        ({"input_reference": ("ref.png", b"%PDF-1.4", "image/png")}, openai.BadRequestError, 400,
         "invalid_file", "input_reference", "PNG, JPEG or WebP"),
        ({"input_reference": ("wide.png", _png((1, 5000)), "image/png")}, openai.BadRequestError, 400,
         "file_too_large", "input_reference", "1 to 4096 pixels"),
        ({"input_reference": ("a.png", _png((8, 8)), "image/png"), "extra_body": {"mask_strategy": "0,1"}},
         openai.BadRequestError, 400, "invalid_value", "mask_strategy", "reference"),
        ({"input_reference": ("a.png", _png((8, 8)), "image/png"), "extra_body": {"mask_strategy": "0,0,0,0,1,2"}},
         openai.BadRequestError, 400, "invalid_value", "mask_strategy", "edit_ratio must be in [0, 1]"),
        ({"input_reference": ("a.png", _png((8, 8)), "image/png"), "extra_body": {"condition_frames": 17}},
         openai.BadRequestError, 400, "invalid_value", "condition_frames", "between 1 and 16"),
        ({"extra_body": {"mask_strategy": "0"}}, openai.BadRequestError, 400, "invalid_value", "mask_strategy",
         "needs a reference"),
    ],
)  # fmt: skip
def test_create_rejects(api_only, fields, exc_type, status, code, param, says) -> None:  # noqa: ANN001
    kwargs = {"prompt": "a red circle", **fields}
    message = _expect(exc_type, lambda: api_only.client().videos.create(**kwargs), status, code, param)
    assert says in message
    assert api_only.client().videos.list().data == []  # nothing was queued


def test_json_bodies_and_bad_bodies(api_only) -> None:
    body = json.dumps({"prompt": "a red circle", "seed": 5, "steps": 3}).encode()
    status, data = _raw(api_only, "POST", "/v1/videos", body, {"Content-Type": "application/json"})
    video = json.loads(data)
    assert status == 200 and video["status"] == "queued" and video["sorakit"]["seed"] == 5
    assert api_only.client().videos.delete(video["id"]).deleted
    status, data = _raw(api_only, "POST", "/v1/videos", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and json.loads(data)["error"]["code"] == "invalid_json"
    status, data = _raw(api_only, "POST", "/v1/videos", b"[1]", {"Content-Type": "application/json"})
    assert status == 400
    status, data = _raw(api_only, "POST", "/v1/videos", b"prompt", {"Content-Type": "text/plain"})
    assert status == 400 and "content type" in json.loads(data)["error"]["message"]


def test_body_limit(api_only) -> None:
    big = ("big.png", b"\0" * (10 * 2**20 + 1), "image/png")
    create = lambda: api_only.client().videos.create(prompt="a red circle", input_reference=big)  # noqa: E731
    _expect(openai.APIStatusError, create, 413, "body_too_large")
    # a body streamed without Content-Length is cut off at the limit too
    chunks = (b"x" * 2**20 for _ in range(12))
    status, data = _raw(
        api_only, "POST", "/v1/videos", headers={"Content-Type": "application/json"}, chunks=chunks
    )
    assert status == 413 and json.loads(data)["error"]["code"] == "body_too_large"


def test_ids_are_validated(api_only) -> None:
    videos = api_only.client().videos
    _expect(openai.NotFoundError, lambda: videos.retrieve(new_id()), 404, "video_not_found")
    _expect(openai.NotFoundError, lambda: videos.delete(new_id()), 404, "video_not_found")
    _expect(openai.BadRequestError, lambda: videos.retrieve("video_123"), 400, "invalid_id", "video_id")
    (api_only.data_dir / "secret.txt").write_text("secret")
    for path in ["/v1/videos/..%2Fsecret.txt/content", "/v1/videos/%2E%2E/content", "/v1/videos/../secret.txt",
                 "/v1/videos/video_..%2F..%2Fsecret.txt/content", "/v1/videos/" + "a" * 5000]:  # fmt: skip
        status, data = _raw(api_only, "GET", path)
        assert status in (400, 404), path
        assert b"secret" not in data.replace(b"secret.txt", b"")
    _expect(openai.BadRequestError, lambda: videos.list(after="../x"), 400, "invalid_id", "after")
    _expect(openai.NotFoundError, lambda: videos.list(after=new_id()), 404, None, "after")
    _expect(openai.UnprocessableEntityError, lambda: videos.list(limit=0), 422, "invalid_value", "limit")
    _expect(openai.UnprocessableEntityError, lambda: videos.list(order="up"), 422, "invalid_value", "order")


def test_queue_limit_pagination_and_delete(api_only) -> None:
    videos = api_only.client().videos
    made = [videos.create(prompt=f"prompt {i}", extra_body={"seed": i}) for i in range(5)]
    assert [v.sorakit["queue_position"] for v in made] == [1, 2, 3, 4, 5]
    assert all(v.status == "queued" and v.progress == 0 and v.model == "sorakit-builtin" for v in made)
    message = _expect(openai.RateLimitError, lambda: videos.create(prompt="one too many"), 429, "queue_full")
    assert "5 videos waiting" in message
    ids = [v.id for v in made]
    page = videos.list(limit=2)
    assert [v.id for v in page.data] == ids[::-1][:2] and page.has_more
    assert [v.id for v in videos.list(limit=2)] == ids[::-1]  # the client follows last_id / has_more
    assert [v.id for v in videos.list(limit=3, order="asc")] == ids
    assert [v.id for v in videos.list(after=ids[1], order="asc").data] == ids[2:]
    # content does not exist before completion; remix/edit/extend need a completed source
    _expect(openai.NotFoundError, lambda: videos.download_content(ids[0]), 404, "video_not_ready")
    _expect(
        openai.BadRequestError, lambda: videos.download_content(ids[0], variant="gif"), 400, None, "variant"
    )
    _expect(openai.ConflictError, lambda: videos.remix(ids[0], prompt="blue"), 409, "video_not_ready")
    for route in ("edits", "extensions"):  # the client only uploads files here; {"id": ...} goes as JSON
        body = json.dumps(
            {"prompt": "x", "video": {"id": ids[0]}, **({"seconds": "2"} if route == "extensions" else {})}
        ).encode()
        status, data = _raw(
            api_only, "POST", f"/v1/videos/{route}", body, {"Content-Type": "application/json"}
        )
        assert status == 409 and json.loads(data)["error"]["code"] == "video_not_ready"
    _expect(openai.NotFoundError, lambda: videos.remix(new_id(), prompt="blue"), 404, "video_not_found")
    upload = ("clip.mp4", b"\0" * 100, "video/mp4")
    _expect(
        openai.BadRequestError, lambda: videos.edit(prompt="x", video=upload), 400, "invalid_file", "video"
    )
    # a reference job over the queue limit leaves no file behind
    reference = ("a.png", _png((8, 8)), "image/png")
    _expect(
        openai.RateLimitError, lambda: videos.create(prompt="x", input_reference=reference), 429, "queue_full"
    )
    assert not list(api_only.data_dir.glob("videos/*"))  # text-only jobs have no folder until they run
    # deleting frees the queue; deleted ids are gone
    deleted = videos.delete(ids[0])
    assert deleted.deleted and deleted.id == ids[0] and deleted.object == "video.deleted"
    _expect(openai.NotFoundError, lambda: videos.retrieve(ids[0]), 404)
    assert videos.retrieve(ids[1]).sorakit["queue_position"] == 1
    for video_id in ids[1:]:
        videos.delete(video_id)
    assert videos.list().data == []
    metrics = api_only.get("/metrics")[1]
    assert "sorakit_queue_length 0" in metrics and 'sorakit_workers{state="alive"} 0' in metrics


def test_reference_uploads(api_only, tmp_path: Path) -> None:
    client = api_only.client()
    videos = client.videos
    # a data URL in a JSON body: decoded, checked, stored in the job's folder under the server's name
    # (the client uploads only files in these fields: an object goes as JSON, through its generic post)
    png = _png((48, 80))
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    video = client.post(
        "/videos", body={"prompt": "a red circle", "input_reference": {"image_url": url}}, cast_to=Video
    )
    assert video.status == "queued" and video.sorakit["reference"]["kind"] == "image"
    folder = api_only.data_dir / "videos" / video.id
    assert [p.name for p in folder.iterdir()] == ["reference.png"]
    assert (folder / "reference.png").read_bytes() == png
    ref = JobStore(api_only.data_dir / DB_FILE).get(video.id).params["reference"]
    assert (ref["file"], ref["width"], ref["height"]) == ("reference.png", 80, 48)
    videos.delete(video.id)
    assert not folder.exists()
    for bad, param, says in (({"image_url": "data:image/png;base64,@@"}, "input_reference.image_url", "base64"),
                             ({"image_url": "https://example.com/a.png"}, "input_reference.image_url", "does not fetch"),
                             ({"file_id": "file_123"}, "input_reference.file_id", "send the file")):  # fmt: skip
        body = {"prompt": "x", "input_reference": bad}
        assert says in _expect(openai.BadRequestError, lambda: client.post("/videos", body=body, cast_to=Video), 400,  # noqa: B023
                               None, param)  # fmt: skip

    # videos: header-checked (frame count from the container, nothing decoded), limits, routes' rules
    clip = tmp_path / "clip.mp4"
    write_video(clip, np.zeros((8, 16, 16, 3), np.uint8), fps=8)
    mp4 = ("clip.mp4", clip.read_bytes(), "video/mp4")
    long = tmp_path / "long.mp4"
    write_video(long, np.zeros((520, 16, 16, 3), np.uint8), fps=8)
    upload = ("l.mp4", long.read_bytes(), "video/mp4")
    message = _expect(openai.BadRequestError, lambda: videos.create(prompt="x", input_reference=upload), 400,
                      "file_too_large", "input_reference")  # fmt: skip
    assert "over 512 frames" in message
    gif = ("a.gif", b"GIF89a" + b"\0" * 64, "image/gif")
    _expect(
        openai.BadRequestError, lambda: videos.create(prompt="x", input_reference=gif), 400, "invalid_file"
    )
    image = ("a.png", _png((8, 8)), "image/png")
    message = _expect(
        openai.BadRequestError, lambda: videos.edit(prompt="x", video=image), 400, "invalid_file", "video"
    )
    assert "must be video" in message
    _expect(openai.BadRequestError, lambda: videos.extend(prompt="x", seconds="4", video=mp4), 400, "invalid_value",
            "seconds")  # fmt: skip
    short = _expect(openai.BadRequestError, lambda: videos.extend(prompt="x", seconds="2", video=mp4,
                                                                  extra_body={"condition_frames": 9}), 400)  # fmt: skip
    assert "fewer than condition_frames 9" in short
    for route, missing in (("/videos/extensions", "seconds"), ("/videos/edits", "video")):
        body = {"prompt": "x"} if missing == "video" else {"prompt": "x", "video": {"id": new_id()}}
        _expect(openai.BadRequestError, lambda: client.post(route, body=body, cast_to=Video), 400,  # noqa: B023
                "missing_required_parameter", missing)  # fmt: skip
    extended = videos.extend(prompt="more", seconds="2", video=mp4)
    assert extended.status == "queued" and extended.sorakit["reference"]["frames"] == 8
    assert (api_only.data_dir / "videos" / extended.id / "reference.mp4").read_bytes() == mp4[1]
    videos.delete(extended.id)
