"""An unusable data directory is found before anything starts: ``BarStore.check_usable`` names
the problem and what to do, and every ``ktrdr data`` command exits 2 with that message
without starting a gateway or a farm (a file where the folder should be; a read-only folder,
here a real read-only bind mount)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import psutil
import pytest
from typer.testing import CliRunner

from ktrdr.cli import app
from ktrdr.data.store import BarStore, StoreUnusableError

COMMANDS = [
    ["data", "load", "AAPL", "1d", "--sim"],
    ["data", "load", "AAPL", "1d", "--mode", "local"],
    ["data", "backfill", "AAPL", "MSFT", "-t", "1d", "--sim"],
    ["data", "show", "AAPL", "1d"],
    ["data", "gaps", "AAPL", "1d", "--sim"],
    ["data", "migrate"],
    ["data", "query", "SELECT 1"],
]


def test_check_usable_names_the_problem(tmp_path):
    afile = tmp_path / "data"
    afile.write_text("I am a file")
    with pytest.raises(StoreUnusableError, match="is a file, not a folder"):
        BarStore(afile).check_usable()
    with pytest.raises(StoreUnusableError, match="cannot be created: .* is a file"):
        BarStore(afile / "inside").check_usable(writable=False)
    (tmp_path / "ok" / "source=ib").mkdir(parents=True)
    (tmp_path / "ok" / "_symbol_cache").write_text("")
    with pytest.raises(StoreUnusableError, match="symbol cache folder"):
        BarStore(tmp_path / "ok").check_usable()
    BarStore(tmp_path / "not-yet").check_usable()  # a folder that can be created is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "ok"]  # nothing made
    with pytest.raises(StoreUnusableError, match="no filesystem|cannot open"):
        BarStore("nosuchscheme://x/y").check_usable()


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[1:3]))
def test_a_file_for_a_data_directory_is_exit_2_before_anything_starts(tmp_path, monkeypatch,
                                                                       args):
    afile = tmp_path / "data"
    afile.write_text("I am a file")
    monkeypatch.setenv("KTRDR_DATA_DIR", str(afile))
    monkeypatch.delenv("IB_GATEWAY", raising=False)
    children = set(psutil.Process().children(recursive=True))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "is a file, not a folder" in result.output and str(afile) in result.output
    assert "Traceback" not in result.output and "simulated IB Gateway" not in result.output
    assert set(psutil.Process().children(recursive=True)) == children  # no farm worker
    assert afile.read_text() == "I am a file"


def _read_only_mount_works(path) -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$1" "$1"', "sh",
                            str(path)], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_a_read_only_folder_is_exit_2_before_anything_starts(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    command = [sys.executable, "-m", "ktrdr.cli", "data", "backfill", "AAPL", "-t", "1d",
               "--sim", "--data-dir", str(data)]
    env = {**os.environ, "IB_GATEWAY": ""}
    if _read_only_mount_works(data):  # a real read-only filesystem (EROFS), in its own mount
        command = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$1" "$1" && shift && '
                   'exec "$@"', "sh", str(data), *command]
    elif os.geteuid() != 0:  # permissions are enough for anyone but root
        data.chmod(0o555)
    else:
        pytest.skip("no way to make a read-only folder here (root without mount rights)")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    finally:
        data.chmod(0o755)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not writable (read-only)" in done.stderr and str(data) in done.stderr
    assert "simulated IB Gateway" not in done.stderr and "Traceback" not in done.stderr
    assert list(data.iterdir()) == []
