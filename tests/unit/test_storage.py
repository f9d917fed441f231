"""Mirroring a cloud ``model_source`` into the node's cache (``file://`` stands in for s3/gs)."""

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow.fs  # noqa: F401 - imported once here, not in each forked replica below
import pytest

from cloud.storage import download_from_cloud, resolve_model_source


def _model_dir(root: Path) -> Path:
    source = root / "bucket" / "model"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text('{"a": 1}')
    (source / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 256)
    return source


def test_replicas_starting_together_share_one_whole_copy(tmp_path):
    """Four processes, as replicas on one node start: one copies (64 KiB), the others wait on its
    lock and take its copy."""
    source, cache = _model_dir(tmp_path), tmp_path / "cache"
    with ProcessPoolExecutor(4) as pool:
        targets = list(pool.map(download_from_cloud, [f"file://{source}"] * 4, [cache] * 4))
    assert len(set(targets)) == 1
    target = Path(targets[0])
    assert (target / "sub" / "weights.bin").read_bytes() == (
        source / "sub" / "weights.bin"
    ).read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [target.name, target.name + ".lock"]
    )  # no partials


def test_an_unfinished_copy_is_replaced(tmp_path):
    source, cache = _model_dir(tmp_path), tmp_path / "cache"
    target = download_from_cloud(f"file://{source}", cache)
    (target / ".complete").unlink()
    (target / "config.json").write_text("truncated")
    assert download_from_cloud(f"file://{source}", cache) == target
    assert (target / "config.json").read_text() == '{"a": 1}'


def test_a_missing_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_source(f"file://{tmp_path}/nope", tmp_path / "cache")
