"""Checkpoint sync by 4 KB block diff (slmlab.serve.sync): counts, identical bytes, crash safety."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from slmlab.errors import SlmlabError
from slmlab.serve.sync import (
    BLOCK_SIZE,
    SyncError,
    SyncResult,
    clean_stale_temps,
    sync_file,
)


def _data(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _flip(data: bytes, *offsets: int) -> bytes:
    out = bytearray(data)
    for off in offsets:
        out[off] ^= 0xFF
    return bytes(out)


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".sync-" in p.name)


def _assert_synced(result: SyncResult, source: Path, target: Path) -> None:
    data = source.read_bytes()
    assert target.read_bytes() == data
    assert result.target == str(target)
    assert result.bytes == len(data)
    assert result.blocks_total == -(-len(data) // BLOCK_SIZE)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert _temps(target.parent) == []


def test_new_target_is_created_and_every_block_counts_changed(tmp_path):
    src = _write(tmp_path / "a.bin", _data(10_000))
    dst = tmp_path / "deep" / "dir" / "ckpt.bin"  # the directory is created too
    r = sync_file(src, dst)
    _assert_synced(r, src, dst)
    assert r.created is True
    assert r.blocks_total == 3  # 4096 + 4096 + 1808
    assert r.blocks_changed == 3


def test_one_byte_in_block_3_and_7_changes_two_blocks(tmp_path):
    old = _data(40 * 1024)
    dst = _write(tmp_path / "ckpt.bin", old)
    src = _write(tmp_path / "new.bin", _flip(old, 3 * BLOCK_SIZE + 17, 7 * BLOCK_SIZE + 4095))
    r = sync_file(src, dst)
    _assert_synced(r, src, dst)
    assert (r.created, r.blocks_total, r.blocks_changed) == (False, 10, 2)
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == r.sha256


def test_grown_file_counts_tail_blocks(tmp_path):
    old = _data(40 * 1024)
    dst = _write(tmp_path / "ckpt.bin", old)
    src = _write(tmp_path / "new.bin", old + _data(5000, seed=1))  # 45960 bytes: 12 blocks
    r = sync_file(src, dst)
    _assert_synced(r, src, dst)
    assert (r.blocks_total, r.blocks_changed) == (12, 2)  # the two blocks past the old end


def test_shrunk_file_counts_partial_last_block(tmp_path):
    old = _data(40 * 1024)
    dst = _write(tmp_path / "ckpt.bin", old)
    src = _write(tmp_path / "new.bin", old[:-5000])  # 35960 bytes: 8 full blocks + 3192
    r = sync_file(src, dst)
    _assert_synced(r, src, dst)
    assert (r.blocks_total, r.blocks_changed) == (9, 1)  # the last block is shorter than the old one


def test_shrink_at_a_block_boundary_truncates_without_changed_blocks(tmp_path):
    old = _data(40 * 1024)
    dst = _write(tmp_path / "ckpt.bin", old)
    src = _write(tmp_path / "new.bin", old[: 8 * BLOCK_SIZE])
    r = sync_file(src, dst)
    _assert_synced(r, src, dst)
    assert (r.bytes, r.blocks_total, r.blocks_changed) == (8 * BLOCK_SIZE, 8, 0)


def test_identical_files_change_no_block_and_leave_the_target_alone(tmp_path):
    data = _data(40 * 1024)
    src, dst = _write(tmp_path / "a.bin", data), _write(tmp_path / "ckpt.bin", data)
    inode = dst.stat().st_ino
    r = sync_file(src, dst)
    _assert_synced(r, src, dst)
    assert (r.created, r.blocks_changed) == (False, 0)
    assert dst.stat().st_ino == inode  # not replaced: nothing to write


def test_empty_source(tmp_path):
    src = _write(tmp_path / "a.bin", b"")
    dst = _write(tmp_path / "ckpt.bin", _data(5000))
    r = sync_file(src, dst)
    _assert_synced(r, src, dst)
    assert (r.bytes, r.blocks_total, r.blocks_changed) == (0, 0, 0)


def test_other_block_sizes(tmp_path):
    old = _data(1000)
    dst = _write(tmp_path / "ckpt.bin", old)
    src = _write(tmp_path / "new.bin", _flip(old, 0, 999))
    r = sync_file(src, dst, block_size=100)
    assert (r.blocks_total, r.blocks_changed) == (10, 2)
    assert dst.read_bytes() == src.read_bytes()


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_mode_kept_for_existing_target_and_umask_for_new(tmp_path):
    dst = _write(tmp_path / "ckpt.bin", _data(5000))
    dst.chmod(0o640)
    src = _write(tmp_path / "new.bin", _data(5000, seed=2))
    sync_file(src, dst)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o640
    old_mask = os.umask(0o027)
    try:
        sync_file(src, tmp_path / "fresh.bin")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE((tmp_path / "fresh.bin").stat().st_mode) == 0o640  # 0o666 & ~0o027


def test_stale_temps_of_the_target_are_cleaned_and_others_kept(tmp_path):
    dst = _write(tmp_path / "ckpt.bin", _data(5000))
    stale = _write(tmp_path / ".ckpt.bin.sync-0123456789abcdef", b"torn")
    other = _write(tmp_path / ".ckpt.bin.sync-x.sync-0123456789abcdef", b"another target's temp")
    unrelated = _write(tmp_path / ".ckpt.bin.sync-notours", b"kept")
    sync_file(_write(tmp_path / "new.bin", _data(5000, seed=3)), dst)
    assert not stale.exists()
    assert other.exists() and unrelated.exists()
    assert clean_stale_temps(tmp_path / "nowhere" / "x.bin") == []


@pytest.mark.parametrize("bad", [0, -1, 1.5, "4096", None, True])
def test_bad_block_size_is_a_value_error_naming_it(tmp_path, bad):
    src = _write(tmp_path / "a.bin", b"x")
    with pytest.raises(ValueError, match="block_size"):
        sync_file(src, tmp_path / "ckpt.bin", block_size=bad)
    assert not (tmp_path / "ckpt.bin").exists()


def test_missing_source_names_the_path(tmp_path):
    missing = tmp_path / "nope.bin"
    with pytest.raises(SyncError, match="nope.bin") as exc:
        sync_file(missing, tmp_path / "ckpt.bin")
    assert isinstance(exc.value, SlmlabError)
    assert not (tmp_path / "ckpt.bin").exists()


def test_same_path_is_refused(tmp_path):
    src = _write(tmp_path / "a.bin", _data(100))
    with pytest.raises(SyncError, match="same file"):
        sync_file(src, src)
    with pytest.raises(SyncError, match="same file"):
        sync_file(src, tmp_path / "sub" / ".." / "a.bin")
    assert src.read_bytes() == _data(100)


def test_target_that_is_a_directory_is_refused(tmp_path):
    src = _write(tmp_path / "a.bin", _data(100))
    (tmp_path / "ckpt.bin").mkdir()
    with pytest.raises(SyncError, match="not a regular file"):
        sync_file(src, tmp_path / "ckpt.bin")


def test_mismatch_after_sync_raises_naming_both_paths(tmp_path, monkeypatch):
    from slmlab.serve import sync

    src = _write(tmp_path / "a.bin", _data(5000))
    dst = tmp_path / "ckpt.bin"
    monkeypatch.setattr(sync, "sha256_file", lambda path: "0" * 64)  # the re-read "sees" other bytes
    with pytest.raises(SyncError, match="does not match") as exc:
        sync.sync_file(src, dst)
    assert str(src) in str(exc.value) and str(dst) in str(exc.value)


def test_source_changed_during_sync_is_refused_and_target_kept(tmp_path, monkeypatch):
    from slmlab.serve import sync

    old = _data(5000)
    src, dst = _write(tmp_path / "a.bin", _data(5000, seed=4)), _write(tmp_path / "ckpt.bin", old)
    real = sync._diff_blocks

    def diff_then_touch(*args, **kwargs):
        out = real(*args, **kwargs)
        with open(src, "ab") as f:  # the trainer writes again while we sync
            f.write(b"more")
        return out

    monkeypatch.setattr(sync, "_diff_blocks", diff_then_touch)
    with pytest.raises(SyncError, match="changed while"):
        sync.sync_file(src, dst)
    assert dst.read_bytes() == old
    assert _temps(tmp_path) == []


_KILL_CHILD = textwrap.dedent(
    """
    import sys
    from slmlab.serve.sync import sync_file
    a, b, target = sys.argv[1:4]
    sync_file(a, target)
    print("ready", flush=True)
    while True:
        sync_file(b, target)
        sync_file(a, target)
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_at_any_moment_leaves_old_or_new_never_torn(tmp_path):
    a = _data(2 * 1024 * 1024, seed=10)
    b = bytearray(a)
    for block in range(0, len(b) // BLOCK_SIZE, 2):  # every other block differs
        b[block * BLOCK_SIZE] ^= 0xFF
    b = bytes(b) + _data(3000, seed=11)  # and the sizes differ
    fa, fb = _write(tmp_path / "a.bin", a), _write(tmp_path / "b.bin", b)
    target = tmp_path / "out" / "ckpt.bin"
    rng, deadline = random.Random(1234), time.monotonic() + 15
    for _ in range(15):
        if time.monotonic() > deadline:
            break
        child = subprocess.Popen(
            [sys.executable, "-c", _KILL_CHILD, str(fa), str(fb), str(target)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            line = child.stdout.readline()
            assert line.strip() == "ready", child.stderr.read()
            time.sleep(rng.uniform(0, 0.05))
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
            child.stderr.close()
        got = target.read_bytes()  # exists: the child's first sync completed
        assert got == a or got == b, f"torn target: {len(got)} bytes"
    r = sync_file(fb, target)  # a sync after the kills finishes and cleans what the kills left
    assert target.read_bytes() == b and r.sha256 == hashlib.sha256(b).hexdigest()
    assert _temps(target.parent) == []
