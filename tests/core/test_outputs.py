"""The output-path check and atomic writes: refused targets, symlinks, inputs, stale
temporaries of killed writes, and a full disk (a real file-size limit in a child process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from qviz.core.errors import QvizError
from qviz.core.files.atomic import atomic_open, write_text_atomic
from qviz.core.files.outputs import check_output, remove_stale_temporaries

ROOT = Path(__file__).resolve().parents[2]


def test_plain_new_and_existing_files_are_fine(tmp_path: Path) -> None:
    assert check_output(tmp_path / "new.json") == tmp_path / "new.json"
    (tmp_path / "old.json").write_text("{}")
    assert check_output(tmp_path / "old.json") == tmp_path / "old.json"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "folder", "is a folder"),
        (lambda d: d / "missing" / "out.json", "does not exist"),
        (lambda d: d / "afile" / "out.json", "is a file, not a folder"),
        (lambda d: d / "fifo", "is a FIFO"),
        (lambda d: d / "readonly.json", "is read-only"),
    ],
    ids=["folder", "missing-parent", "under-a-file", "fifo", "read-only"],
)
def test_refused_targets(tmp_path: Path, make, message: str) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "readonly.json").write_text("{}")
    (tmp_path / "readonly.json").chmod(0o444)
    with pytest.raises(QvizError, match=message):
        check_output(make(tmp_path))


def test_empty_path_and_devices_are_refused() -> None:
    with pytest.raises(QvizError, match="is empty"):
        check_output("")
    with pytest.raises(QvizError, match="is a device"):
        check_output("/dev/null")
    with pytest.raises(QvizError, match="is a device"):
        check_output("/dev/full")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(QvizError, match="not writable"):
            check_output(folder / "out.json")
    finally:
        folder.chmod(0o755)


def test_inputs_are_never_targets(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    data = tmp_path / "data"
    data.mkdir()
    (data / "0.npz").write_bytes(b"x")
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    hard = tmp_path / "hard.onnx"
    os.link(model, hard)
    inputs = [model, data]
    for target in (model, link, hard, tmp_path / "." / "m.onnx"):
        with pytest.raises(QvizError, match="an input; write elsewhere"):
            check_output(target, inputs=inputs)
    with pytest.raises(QvizError, match=r"inside .*an input folder"):
        check_output(data / "stats.qvstats", inputs=inputs)
    assert check_output(tmp_path / "stats.qvstats", inputs=inputs) == tmp_path / "stats.qvstats"


def test_a_symlink_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_text_atomic(link, "new")
    assert link.is_symlink() and real.read_text() == "new"
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "later.json")
    write_text_atomic(dangling, "made")
    assert dangling.is_symlink() and (tmp_path / "later.json").read_text() == "made"


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("stopped")
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def _killed_writer(target: Path) -> None:
    """A child process that starts an atomic write to `target` and is SIGKILLed in it."""
    code = textwrap.dedent(f"""
        import sys, time
        from qviz.core.files.atomic import atomic_open
        with atomic_open({str(target)!r}) as f:
            f.write("partial")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)


def test_a_killed_writes_temporary_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "stats.qvstats"
    target.write_text("previous")
    _killed_writer(target)
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".stats.qvstats.")
    assert target.read_text() == "previous"  # the kill never touched the target
    write_text_atomic(target, "next")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.qvstats"]
    assert target.read_text() == "next"


def test_a_live_writers_temporary_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    mine = tmp_path / f".out.json.{os.getpid()}-abcd1234.tmp"
    mine.write_text("in progress")
    assert remove_stale_temporaries(target) == []
    old = tmp_path / ".out.json.k3j4h5g6.tmp"  # the old name form, without a pid
    old.write_text("left by an older qviz")
    assert remove_stale_temporaries(target) == []  # too recent to be sure
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    assert remove_stale_temporaries(target) == [old]
    assert mine.exists()


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path: Path) -> None:
    """A real write failure: the child may not write files over 64 KiB (RLIMIT_FSIZE)."""
    target = tmp_path / "big.txt"
    target.write_text("previous")
    code = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        from qviz.core.errors import QvizError
        from qviz.core.files.atomic import write_text_atomic
        try:
            write_text_atomic({str(target)!r}, "x" * 200_000)
        except QvizError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.count("\n") == 1
    assert "cannot write" in out.stdout and "the previous file is unchanged" in out.stdout
    assert target.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]
