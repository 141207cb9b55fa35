"""Checkpoints become visible atomically: a kill mid-write never leaves one that resume would take."""

import json
import signal
import subprocess
import sys
import time

import pytest

from rlinf.train.checkpoint import CheckpointWriter, list_checkpoints, resolve_resume_dir

WRITER = """
import sys, torch
from rlinf.train.checkpoint import CheckpointWriter
w = CheckpointWriter(sys.argv[1], keep=0)
w.save(int(sys.argv[2]), {"big": torch.zeros(int(sys.argv[3]), dtype=torch.uint8)})
"""


def test_save_then_list_and_resume_auto_pick_the_newest(tmp_path):
    w = CheckpointWriter(str(tmp_path), keep=2)
    for step in (2, 4, 6):
        w.save(step, {"step": step})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 6]  # keep=2 pruned step 2
    assert resolve_resume_dir("auto", str(tmp_path)).name == "global_step_6"
    assert (
        json.loads((tmp_path / "checkpoints" / "global_step_6" / "meta.json").read_text())["step"]
        == 6
    )
    assert resolve_resume_dir(None, str(tmp_path)) is None
    assert resolve_resume_dir("auto", str(tmp_path / "elsewhere")) is None


def test_incomplete_and_tmp_directories_are_ignored(tmp_path):
    CheckpointWriter(str(tmp_path)).save(2, {})
    (tmp_path / "checkpoints" / "global_step_8.tmp").mkdir()
    (tmp_path / "checkpoints" / "global_step_9").mkdir()  # no meta.json: never completed
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    with pytest.raises(
        FileNotFoundError, match="runner.resume_dir: .*global_step_9 is not a complete checkpoint"
    ):
        resolve_resume_dir(str(tmp_path / "checkpoints" / "global_step_9"), str(tmp_path))


def test_sigkill_during_a_write_leaves_nothing_resume_would_pick(tmp_path):
    CheckpointWriter(str(tmp_path)).save(2, {"ok": 1})
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "4", str(1_500_000_000)])
    part = tmp_path / "checkpoints" / "global_step_4.tmp" / "rank_0.pt"
    deadline = time.monotonic() + 60
    while not part.exists():  # the writer is inside torch.save of 1.5 GB
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "checkpoints" / "global_step_4").exists()
    assert resolve_resume_dir("auto", str(tmp_path)).name == "global_step_2"
    # the next save clears the debris
    CheckpointWriter(str(tmp_path)).save(6, {})
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))
