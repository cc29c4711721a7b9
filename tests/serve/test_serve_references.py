"""Reference inputs through the server with the official `openai` client: image-to-video and extension from
`input_reference`, `videos.extend`, `videos.edit`, `videos.remix`. References are shapes-world frames and
clips; the checks compare the output frames with them (the built-in model holds a hard-conditioned frame up
to its VAE's reconstruction error, about 1 grey level, while an unconditioned video is ~20 levels away).
"""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from openai.types import Video
from serve_helpers import CLOSE, PROMPT, STEPS, clip, completed, diff, frames_of, image, mp4_bytes, png_bytes

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")


def test_image_to_video_from_an_uploaded_image(served) -> None:
    videos = served.client().videos
    png = png_bytes(image())
    video = videos.create(prompt=PROMPT, input_reference=("first.png", png, "image/png"),
                          extra_body={"seed": 3, "steps": STEPS})  # fmt: skip
    stored = served.data_dir / "videos" / video.id / "reference.png"
    assert stored.read_bytes() == png  # kept with the job, under a name the server chose
    video = completed(served, video)
    ref = video.sorakit["reference"]
    assert ref["kind"] == "image" and ref["frames"] == 1 and ref["origin"] == "upload"
    assert video.sorakit["mask_strategy"] is None and video.sorakit["condition_frames"] == 4
    out = frames_of(served, video.id)
    plain = frames_of(
        served, completed(served, videos.create(prompt=PROMPT, extra_body={"seed": 3, "steps": STEPS})).id
    )
    assert diff(out[0], image()) < CLOSE < diff(plain[0], image())
    # the same as a base64 data URL in a JSON body (OpenAI's `image_url` form)
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    body = json.dumps({"prompt": PROMPT, "input_reference": {"image_url": url}, "seed": 3, "steps": STEPS})
    request = urllib.request.Request(
        served.url + "/v1/videos", body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as response:
        second = json.load(response)
    assert np.array_equal(frames_of(served, completed(served, videos.retrieve(second["id"])).id), out)


def test_extension_from_an_uploaded_video_and_from_a_completed_one(served, tmp_path: Path) -> None:
    videos = served.client().videos
    data, source = mp4_bytes(clip(), tmp_path)
    extended = completed(served, videos.extend(prompt=PROMPT, seconds="2", video=("clip.mp4", data, "video/mp4"),
                                               extra_body={"seed": 4, "steps": STEPS}))  # fmt: skip
    out = frames_of(served, extended.id)
    # the clip's last 4 frames, not its first 4 (the circle is 30 px further left there)
    assert diff(out[:4], source[-4:]) < CLOSE < diff(out[:4], source[:4])
    assert extended.sorakit["reference"]["kind"] == "video" and extended.sorakit["reference"]["frames"] == 16
    # input_reference with a video is the same extension; condition_frames changes K
    by_create = completed(served, videos.create(prompt=PROMPT, input_reference=("clip.mp4", data, "video/mp4"),
                                                extra_body={"seed": 4, "steps": STEPS, "condition_frames": 2}))  # fmt: skip
    out2 = frames_of(served, by_create.id)
    assert diff(out2[:2], source[-2:]) < CLOSE and by_create.sorakit["condition_frames"] == 2
    # a completed video by id: its last 4 frames begin the new clip
    # (the client uploads only files in `video`: an id goes as JSON, through its generic post)
    body = {"prompt": PROMPT, "seconds": "2", "video": {"id": extended.id}, "steps": STEPS}
    again = completed(served, served.client().post("/videos/extensions", body=body, cast_to=Video))
    assert again.sorakit["reference"]["origin"] == extended.id
    assert diff(frames_of(served, again.id)[:4], out[-4:]) < CLOSE


def test_edit_and_remix(served, tmp_path: Path) -> None:
    videos = served.client().videos
    data, source = mp4_bytes(clip(), tmp_path)
    # a hard hold of every frame gives the uploaded clip back: the upload is what the job used
    held = completed(served, videos.edit(prompt="a blue circle", video=("clip.mp4", data, "video/mp4"),
                                         extra_body={"steps": STEPS, "mask_strategy": "0,0,0,0,16,0"}))  # fmt: skip
    assert diff(frames_of(served, held.id), source) < CLOSE
    body = {"prompt": "a blue circle moving to the right", "video": {"id": held.id}, "steps": STEPS}
    edited = completed(served, served.client().post("/videos/edits", body=body, cast_to=Video))
    assert edited.sorakit["mask_strategy"] == "0,0,0,0,16,0.5" and edited.remixed_from_video_id is None

    original = completed(
        served, videos.create(prompt=PROMPT, extra_body={"seed": 21, "steps": 6, "guidance": 3.0})
    )
    remix = videos.remix(original.id, prompt="a blue circle moving to the right")
    assert remix.remixed_from_video_id == original.id and remix.status == "queued"
    remix = completed(served, remix)
    # the remix keeps the original's settings unless the request changes them
    assert (remix.sorakit["seed"], remix.sorakit["steps"], remix.sorakit["guidance"]) == (21, 6, 3.0)
    assert remix.sorakit["reference"]["origin"] == original.id and remix.prompt.startswith("a blue circle")
    unrelated = completed(served, videos.create(prompt="a blue circle moving to the right",
                                                extra_body={"seed": 21, "steps": 6, "guidance": 3.0}))  # fmt: skip
    src = frames_of(served, original.id)
    assert diff(frames_of(served, remix.id), src) < diff(frames_of(served, unrelated.id), src)
    # the remix's files stand alone: deleting the original does not break it
    videos.delete(original.id)
    assert (served.data_dir / "videos" / remix.id / "reference.mp4").is_file()
    assert len(videos.download_content(remix.id).content) > 0
