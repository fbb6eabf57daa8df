"""The track cache's reader side (mosic.data.track_cache): the default source grid and run planning."""

import json
import shutil

import pytest

from mosic.data.track_cache import default_cache_grid, run_epochs


def test_default_grid_rule():
    assert default_cache_grid(16, (0.4, 1.0)) == 19  # 0.7 * 19^2 = 253 points in the average crop
    assert default_cache_grid(16, (1.0, 1.0)) == 16
    assert default_cache_grid(8, (0.2, 0.6)) == 13


def test_run_epochs_cover_any_process_count():
    assert run_epochs(None, 4, 100, 8) == 4
    assert run_epochs(25, None, 100, 8) == 3  # 12 steps an epoch with one process
    for world in (1, 2, 4, 8):  # DistributedSampler's steps per epoch are never fewer
        per_rank = 8 // world
        assert -(-100 // world) // per_rank >= 100 // 8


# ---- untrusted track caches carry checksums (tests/trackers/test_cache.py covers a file with flipped bytes and an edited video)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    from mosic.data.synthetic import SyntheticVideos
    from mosic.trackers.cache import CacheSettings, write_track_cache
    from mosic.trackers.oracle import OracleTracker

    settings = CacheSettings(
        tracker="oracle", weights="none", grid_size=4, num_frames=4, frame_stride=2, start_step=3, track_size=384
    )
    out = tmp_path_factory.mktemp("cache")
    write_track_cache(SyntheticVideos(num_videos=2, num_frames=12, size=32, seed=0), OracleTracker(), out, settings)
    return out


def open_cache(path):
    from mosic.data.synthetic import SyntheticVideos
    from mosic.trackers.cache import TrackCache

    return TrackCache(path, SyntheticVideos(num_videos=2, num_frames=12, size=32, seed=0))


def test_a_swapped_valid_track_file_fails_its_checksum(cache_dir, tmp_path):
    """A well-formed file of another video (so it parses) is caught by the checksum, and the
    message gives both digests and how to repair the cache."""
    from mosic.trackers.cache import StaleCacheError

    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    shutil.copy(copy / "tracks" / "000001.safetensors", copy / "tracks" / "000000.safetensors")
    cache = open_cache(copy)
    with pytest.raises(StaleCacheError, match=r"(?s)000000\.safetensors does not match its checksum.*sha256 [0-9a-f]{16}.*records [0-9a-f]{16}.*mosic track"):
        cache.load(0, 0)
    cache.load(1, 0)  # the untouched video still loads
    (copy / "tracks" / "000001.safetensors").unlink()
    with pytest.raises(StaleCacheError, match=r"000001\.safetensors .* is missing"):
        open_cache(copy).load(1, 0)


def test_a_tampered_manifest_is_reported(cache_dir, tmp_path):
    from mosic.trackers.cache import StaleCacheError

    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    outside = dict(manifest, videos=[{**manifest["videos"][0], "file": "../../etc/passwd"}, manifest["videos"][1]])
    (copy / "manifest.json").write_text(json.dumps(outside))
    with pytest.raises(StaleCacheError, match=r"names the track file '\.\./\.\./etc/passwd', outside the cache folder"):
        open_cache(copy)
    missing = dict(manifest, videos=[{k: v for k, v in manifest["videos"][0].items() if k != "sha256"}, manifest["videos"][1]])
    (copy / "manifest.json").write_text(json.dumps(missing))
    with pytest.raises(StaleCacheError, match=r"video entry 0 needs 'sha256'"):
        open_cache(copy)
    (copy / "manifest.json").write_text(json.dumps(dict(manifest, settings={"tracker": "oracle"})))
    with pytest.raises(StaleCacheError, match=r"'settings' must hold exactly"):
        open_cache(copy)
    (copy / "manifest.json").write_text("[1, 2, 3]")
    with pytest.raises(StaleCacheError, match="not a track cache manifest"):
        open_cache(copy)
