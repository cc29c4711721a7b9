"""Test helper: a process that imports torch and sorakit once, then runs each `sorakit` command it is sent
in a forked child -- a real process that a test can SIGKILL -- without paying the import time again.

Protocol (one JSON object per line): the test writes ``{"argv": [...], "log": PATH, "env": {...}}``; the
runner forks, answers ``{"pid": N}``, and once the child is gone ``{"pid": N, "status": S}`` (``os.waitpid``
status: a SIGKILLed child has ``os.WIFSIGNALED(S)``). The parent never runs a torch operation, so the fork
copies no thread pool."""

from __future__ import annotations

import json
import os
import sys

# the heavy imports, done once before any fork (torch._dynamo alone takes seconds; the optimizer pulls it in)
import safetensors.torch  # noqa: F401
import torch._dynamo  # noqa: F401
import torch.distributed.checkpoint.state_dict  # noqa: F401

import sorakit.data.cache  # noqa: F401
import sorakit.diffusion  # noqa: F401
import sorakit.models  # noqa: F401
import sorakit.pipelines.text_to_video  # noqa: F401
import sorakit.training.trainer  # noqa: F401
from sorakit.cli.main import main


def _child(request: dict) -> None:
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(request.get("env", {}))
    code = 1
    try:
        code = main(request["argv"])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "status": status}), flush=True)


if __name__ == "__main__":
    serve()
