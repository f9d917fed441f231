"""Download progress: what the loaders fetch of a Hub repo, bytes on disk, and the watch that
publishes them."""

import os
import threading
import time

from cloud.download_progress import Download, DownloadWatch, bytes_under, hub_download_bytes
from cloud.storage import download_watch


def test_the_first_weights_format_and_the_small_files_count():
    listing = [
        ("config.json", 700),
        ("tokenizer.json", 2_000),
        ("model-00001-of-00002.safetensors", 5_000),
        ("model-00002-of-00002.safetensors", 3_000),
        ("pytorch_model.bin", 8_000),
        ("model.onnx", 9_000),
        ("original/consolidated.00.pth", 16_000),
        ("onnx/model.onnx", 9_000),
    ]
    assert hub_download_bytes(listing) == 700 + 2_000 + 5_000 + 3_000
    assert hub_download_bytes([("config.json", 10), ("pytorch_model.bin", 100)]) == 110


def test_bytes_on_disk_count_files_once_and_not_through_links(tmp_path):
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / "a").write_bytes(b"x" * 300)
    (tmp_path / "blobs" / "b.incomplete").write_bytes(b"x" * 50)  # a file still arriving counts
    (tmp_path / "snapshots").mkdir()
    os.symlink(tmp_path / "blobs" / "a", tmp_path / "snapshots" / "model.safetensors")
    assert bytes_under([tmp_path]) == 350
    assert bytes_under([tmp_path / "missing"]) == 0


def test_the_watch_publishes_growth_while_the_files_arrive_then_the_finished_total(tmp_path):
    published: list[tuple[str, Download | None]] = []
    started, grown = threading.Event(), threading.Event()

    def record(key, download):
        published.append((key, download))
        started.set()
        if download and download.done >= 200:
            grown.set()

    weights = tmp_path / "weights"
    with DownloadWatch(
        "platform.m/m", lambda: bytes_under([tmp_path]), 400, interval_s=0.01, publish=record
    ):
        assert started.wait(5)
        weights.write_bytes(b"x" * 200)
        assert grown.wait(5)
        weights.write_bytes(b"x" * 400)
    dones = [d.done for _, d in published]
    assert dones[0] == 0 and 200 in dones and dones == sorted(dones)
    assert all(not d.finished and d.total == 400 for _, d in published[:-1])
    key, last = published[-1]
    assert (
        key == "platform.m/m"
        and last.finished
        and last.done == 400
        and last.describe().startswith("downloaded")
    )


def test_a_failed_start_leaves_no_progress_behind(tmp_path):
    published = []
    try:
        with DownloadWatch(
            "k", lambda: 0, None, interval_s=0.01, publish=lambda k, d: published.append(d)
        ):
            time.sleep(0.05)
            raise OSError("no such model")
    except OSError:
        pass
    assert published[-1] is None


def test_a_publisher_that_fails_does_not_fail_the_start():
    def broken(key, download):
        raise ConnectionError("GCS away")

    with DownloadWatch("k", lambda: 1, 2, interval_s=0.01, publish=broken):
        time.sleep(0.03)


def test_local_paths_are_not_watched_and_cloud_copies_are_with_their_listing(tmp_path):
    assert not isinstance(download_watch(str(tmp_path), "k"), DownloadWatch)
    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text("{}")
    watch = download_watch(f"file://{source}", "k", cache_dir=tmp_path / "cache")
    assert isinstance(watch, DownloadWatch) and watch.total == 2
