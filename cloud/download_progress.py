"""How far a starting replica got downloading its model: for ``deploy_app.py status`` and
``/ready``.

Serve calls a replica only once its constructor has returned, so a replica that is still
fetching weights cannot be asked. Instead, while it starts, a thread measures the bytes that
reached the node's disk and publishes them in Ray's key-value store (in the GCS), where any
process on the cluster reads them:

- a cloud source (``s3://``, ``gs://``, ``file://``...): the total from the bucket's listing, the
  bytes in the cache's partial copy (``cloud/storage.py``);
- a Hugging Face id: the total of the files the loaders fetch (the preferred weights format and
  the small files beside it) from the Hub's listing, the bytes in the Hub cache's blobs of the repo;
- a local path, or a model already on the node: nothing to watch.

After the load the record stays, marked finished, so the status can say what was downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger("ray.serve")

KV_NAMESPACE = "rayserve_platform"
KEY_PREFIX = "download/"
PUBLISH_INTERVAL_S = 1.0
# Weight files, by the extension the loaders look for: the first format a repo has is the one
# fetched.
WEIGHT_FORMATS = (".safetensors", ".bin", ".pt", ".pth")
OTHER_WEIGHTS = (
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".onnx_data",
    ".tflite",
    ".gguf",
    ".ot",
    ".npz",
    ".mlmodel",
)


@dataclass(frozen=True)
class Download:
    done: int
    total: int | None  # None: unknown (the listing was not available)
    finished: bool = False
    seconds: float = 0.0

    def describe(self) -> str:
        if self.finished:
            return f"downloaded {_size(self.done)} in {self.seconds:.0f} s"
        if not self.total:
            return f"downloading: {_size(self.done)} so far"
        return (
            f"downloading: {_size(min(self.done, self.total))} of {_size(self.total)} "
            f"({min(100, 100 * self.done // self.total)}%)"
        )


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def progress_key(app: str, model_id: str) -> str:
    return f"{KEY_PREFIX}{app}/{model_id}"


def publish(key: str, download: Download | None) -> None:
    from ray.experimental import internal_kv

    if download is None:
        internal_kv._internal_kv_del(key, namespace=KV_NAMESPACE)
    else:
        internal_kv._internal_kv_put(
            key, json.dumps(asdict(download)), overwrite=True, namespace=KV_NAMESPACE
        )


def read_downloads() -> dict[str, Download]:
    """Every published record, by ``<app>/<model_id>`` (from a process connected to Ray)."""
    from ray.experimental import internal_kv

    downloads = {}
    for key in internal_kv._internal_kv_list(KEY_PREFIX, namespace=KV_NAMESPACE):
        value = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
        if value:  # not deleted meanwhile
            downloads[key.decode()[len(KEY_PREFIX) :]] = Download(**json.loads(value))
    return downloads


class DownloadWatch:
    """Publish ``measure()`` (bytes on disk) against ``total`` every second until the block ends."""

    def __init__(
        self,
        key: str,
        measure: Callable[[], int],
        total: int | None,
        interval_s: float = PUBLISH_INTERVAL_S,
        publish: Callable[[str, Download | None], None] = publish,
    ):
        self.key, self.measure, self.total, self.interval_s, self._publish = (
            key,
            measure,
            total,
            interval_s,
            publish,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"download-watch {key}", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> DownloadWatch:
        self._thread.start()
        return self

    def __exit__(self, error_type, *_) -> None:
        self._stop.set()
        self._thread.join()
        if error_type is not None:  # the start failed: its phase says why, not a stale progress
            self._safely(None)
            return
        self._safely(
            Download(
                self.measure(), self.total, finished=True, seconds=time.monotonic() - self._started
            )
        )

    def _run(self) -> None:
        last = None
        while True:
            done = self.measure()
            if done != last:
                self._safely(Download(done, self.total))
                last = done
            if self._stop.wait(self.interval_s):
                return

    def _safely(self, download: Download | None) -> None:
        try:
            self._publish(self.key, download)
        except Exception:  # progress is a courtesy: never fail or slow a model's start for it
            logger.debug("could not publish download progress", exc_info=True)


def bytes_under(paths: Iterable[Path]) -> int:
    """Bytes of the regular files under ``paths`` (links not followed: a Hub snapshot links to
    blobs)."""
    total = 0
    for root in paths:
        for directory, _, files in os.walk(root):
            for name in files:
                try:
                    stat = os.lstat(os.path.join(directory, name))
                except OSError:  # renamed or removed while walking
                    continue
                if not os.path.islink(os.path.join(directory, name)):
                    total += stat.st_size
    return total


def hub_download_bytes(files: Iterable[tuple[str, int]]) -> int:
    """Bytes the loaders fetch of a Hub repo listing ``(path, size)``: the top-level weights of its
    first format (safetensors before bin...) and the top-level files that are not weights."""
    top = [(path, size) for path, size in files if "/" not in path]
    weights = next(
        (
            [size for path, size in top if path.endswith(ext)]
            for ext in WEIGHT_FORMATS
            if any(path.endswith(ext) for path, _ in top)
        ),
        [],
    )
    small = [size for path, size in top if not path.endswith(WEIGHT_FORMATS + OTHER_WEIGHTS)]
    return sum(weights) + sum(small)
