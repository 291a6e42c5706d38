"""One writer per run directory and per stage: lock files, stale locks, and two runs colliding
through the real command (the same command twice; two experiments sharing a stage)."""

import collections
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

import faults
from conftest import REPO_ROOT, subprocess_env
from transinv_jax import locks, workdir


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def _holder(**fields) -> dict:
  now = time.time()
  return {"host": socket.gethostname(), "pid": os.getpid(), "start_time": None,
          "started": now, "heartbeat": now, "what": "a test", "token": "x" * 32, **fields}


def test_a_held_lock_names_its_holder_and_what_to_do(tmp_path):
  first = locks.Lock(tmp_path, "run exp1 in here")
  first.acquire("hint")
  try:
    holder = locks.Lock(tmp_path, "another").try_acquire()
    assert holder["pid"] == os.getpid() and holder["what"] == "run exp1 in here"
    with pytest.raises(locks.Held, match=rf"{tmp_path} is in use by pid {os.getpid()} on host "
                       rf"{socket.gethostname()} \(since .*heartbeat 0 s ago\): run exp1 in "
                       r"here; do this"):
      locks.Lock(tmp_path, "another").acquire("do this")
    with pytest.raises(locks.Held, match="wait for it to end, or use another --workdir"):
      locks.check_free(tmp_path)
  finally:
    first.release()
  assert not (tmp_path / locks.LOCK).exists()
  locks.check_free(tmp_path)  # free again
  assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file left


# Holders are built inside the test: values read at collection (a pid, the clock) would differ
# between xdist workers, which must collect the same tests.
_STALE_HOLDERS = {  # case: (the holder's fields, the reason logged; {pid}: this process's)
    "dead pid": (lambda: dict(pid=_dead_pid()), "its process .* is gone"),
    "reused pid": (lambda: dict(start_time="1"), "pid {pid} now belongs to another process"),
    "silent host": (lambda: dict(host="elsewhere", heartbeat=time.time() - 1000),
                    r"no heartbeat for \d+ s"),
}


@pytest.mark.parametrize("case", sorted(_STALE_HOLDERS))
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, case, caplog):
  make_holder, reason = _STALE_HOLDERS[case]
  holder, reason = make_holder(), reason.format(pid=os.getpid())
  stale = _holder(**holder)
  (tmp_path / locks.LOCK).write_text(json.dumps(stale))
  assert locks.why_stale(stale) is not None
  lock = locks.Lock(tmp_path, "new")
  assert lock.try_acquire() is None
  try:
    assert json.loads((tmp_path / locks.LOCK).read_text())["token"] == lock.token
    assert "taking over the lock of" in caplog.text
    assert any(re.search(reason, r.getMessage()) for r in caplog.records)
  finally:
    lock.release()


def test_a_live_lock_of_another_host_is_respected(tmp_path, monkeypatch):
  monkeypatch.setattr(locks, "STALE_AFTER_S", 5.0)
  live = _holder(host="elsewhere", pid=1, heartbeat=time.time() - 2)
  (tmp_path / locks.LOCK).write_text(json.dumps(live))
  assert locks.why_stale(live) is None
  assert locks.Lock(tmp_path, "new").try_acquire() == live
  live["heartbeat"] = time.time() - 6
  assert "no heartbeat for 6 s" in locks.why_stale(live)


def test_the_heartbeat_moves_and_release_spares_a_lock_taken_over(tmp_path, monkeypatch):
  monkeypatch.setattr(locks, "HEARTBEAT_S", 0.05)
  lock = locks.Lock(tmp_path, "beating")
  lock.acquire("hint")
  first = json.loads((tmp_path / locks.LOCK).read_text())["heartbeat"]
  time.sleep(0.4)
  assert json.loads((tmp_path / locks.LOCK).read_text())["heartbeat"] > first
  (tmp_path / locks.LOCK).write_text(json.dumps(_holder(token="y" * 32)))  # taken over
  time.sleep(0.2)
  lock.release()
  assert json.loads((tmp_path / locks.LOCK).read_text())["token"] == "y" * 32


def test_of_racing_takers_exactly_one_wins(tmp_path):
  barrier, outcomes = threading.Barrier(8), []
  takers = [locks.Lock(tmp_path, f"taker {i}") for i in range(8)]

  def take(lock):
    barrier.wait()
    outcomes.append(lock.try_acquire() is None)

  threads = [threading.Thread(target=take, args=(lock,)) for lock in takers]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert sorted(outcomes) == [False] * 7 + [True]
  for lock in takers:
    lock.release()
  assert not (tmp_path / locks.LOCK).exists()


def test_wait_takes_the_lock_once_it_is_released(tmp_path):
  first = locks.Lock(tmp_path, "first")
  first.acquire("hint")
  seen, second = [], locks.Lock(tmp_path, "second")
  waiter = threading.Thread(target=second.wait, args=(seen.append,), kwargs={"poll_s": 0.05})
  waiter.start()
  time.sleep(0.3)
  assert waiter.is_alive() and [h["what"] for h in seen] == ["first"]
  first.release()
  waiter.join(timeout=10)
  assert not waiter.is_alive()
  assert json.loads((tmp_path / locks.LOCK).read_text())["token"] == second.token
  second.release()


def test_leftovers_of_interrupted_writes_are_removed(tmp_path):
  names = [".results.json.tmp123", ".lock.json." + "a" * 32, ".lock.json.stale." + "b" * 32,
           "results.json", ".hidden", "x.tmp1"]
  for name in names:
    (tmp_path / name).write_text("x")
  (tmp_path / "stages").mkdir()
  (tmp_path / "stages" / ".done.json.tmp9").write_text("x")
  assert workdir.remove_leftovers(tmp_path, skip=("stages",)) == 3
  assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "results.json", "stages",
                                                       "x.tmp1"]
  assert (tmp_path / "stages" / ".done.json.tmp9").exists()


# -- two runs through the command line


def _start(*flags, fault=None, env=None, stderr=subprocess.PIPE):
  return subprocess.Popen(faults.command(*flags, fault=fault), cwd=REPO_ROOT,
                          env=env or subprocess_env(), stdout=subprocess.DEVNULL,
                          stderr=stderr, text=True)


def _wait_for(path: pathlib.Path, proc: subprocess.Popen, timeout=300, text=None):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if path.exists() and (text is None or text in path.read_text()):
      return
    assert proc.poll() is None, f"ended before {path} ({text}): {proc.returncode}"
    time.sleep(0.05)
  raise TimeoutError(path)


def _writes(log: pathlib.Path) -> list[tuple[int, str]]:
  """(pid, path) of every whole-file write and checkpoint save, but progress and lock files
  (rewritten on purpose)."""
  out = []
  for line in log.read_text().splitlines():
    pid, path = line.split(" ", 1)
    name = os.path.basename(path)
    if name not in ("progress.json", locks.LOCK) and not name.startswith(f".{locks.LOCK}"):
      out.append((int(pid), path))
  return out


def _assert_once_and_in_order(log, stage_dir, writer_pid):
  writes = _writes(log)
  assert {pid for pid, _ in writes} == {writer_pid}, "a second process wrote files"
  twice = [p for p, n in collections.Counter(p for _, p in writes).items() if n > 1]
  assert not twice, twice
  metrics, = pathlib.Path(stage_dir).glob("*/metrics.jsonl")
  steps = [max(json.loads(l)["step"]) for l in metrics.read_text().splitlines()]
  assert steps == [5, 10, 15, 20]


def test_the_same_command_twice_stops_the_second_at_once(tmp_path, shared_data_dir):
  del shared_data_dir
  gate, log = tmp_path / "gate", tmp_path / "writes"
  env = subprocess_env(TRANSINV_TEST_GATE=str(gate), TRANSINV_TEST_WRITES=str(log))
  flags = (f"--workdir={tmp_path / 'run'}", f"--jax_cache_dir={tmp_path / 'xla'}")
  first = _start(*flags, fault=("pause", "metrics", 2), env=env)
  _wait_for(pathlib.Path(f"{gate}.reached"), first)   # paused mid-training, holding its locks
  second = _start(*flags, env=env)
  _, err = second.communicate(timeout=120)
  assert second.returncode == 1, err[-2000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith(f"error: {tmp_path / 'run'} is in use by pid {first.pid} on host "
                         f"{socket.gethostname()}"), last
  assert "wait for it to end, or use another --workdir" in last and "Traceback" not in err
  gate.touch()
  _, err = first.communicate(timeout=300)
  assert first.returncode == 0, err[-3000:]
  _assert_once_and_in_order(log, tmp_path / "run" / "stages", first.pid)
  assert not (tmp_path / "run" / locks.LOCK).exists()


def test_runs_sharing_a_stage_wait_for_it_or_refuse(tmp_path, shared_data_dir):
  del shared_data_dir
  gate, log = tmp_path / "gate", tmp_path / "writes"
  env = subprocess_env(TRANSINV_TEST_GATE=str(gate), TRANSINV_TEST_WRITES=str(log))
  shared = (f"--config.stage_dir={tmp_path / 'stages'}", f"--jax_cache_dir={tmp_path / 'xla'}")
  first = _start(f"--workdir={tmp_path / 'a'}", *shared, fault=("pause", "metrics", 2), env=env)
  _wait_for(pathlib.Path(f"{gate}.reached"), first)
  # Another experiment on the same stage (its tests differ), told not to wait: one line.
  refusing = _start(f"--workdir={tmp_path / 'c'}", *shared, "--config.eval.max_items=10",
                    "--on_busy_stage=refuse")
  _, err = refusing.communicate(timeout=120)
  assert refusing.returncode == 1, err[-2000:]
  last = err.strip().splitlines()[-1]
  assert f"stage vanilla_mnist ({tmp_path / 'stages'}" in last, last
  assert f"is being trained by pid {first.pid}" in last and "--on_busy_stage=wait" in last
  # The same, waiting: it says whom it waits for, then uses the stage without training it.
  with open(tmp_path / "waiting.err", "w") as err_file:
    waiting = _start(f"--workdir={tmp_path / 'b'}", *shared, "--config.eval.max_items=10",
                     stderr=err_file)
    _wait_for(tmp_path / "waiting.err", waiting, text=f"waiting for pid {first.pid}")
    gate.touch()
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert waiting.wait(timeout=300) == 0, (tmp_path / "waiting.err").read_text()[-3000:]
  err = (tmp_path / "waiting.err").read_text()
  assert "stage vanilla_mnist: finished earlier, loaded from" in err and "training on" not in err
  saves = [p for pid, p in _writes(log) if "/checkpoints/" in p]
  assert saves and len(saves) == len(set(saves))                 # each step saved once
  assert {pid for pid, p in _writes(log) if "/stages/" in p} == {first.pid}
  metrics, = (tmp_path / "stages").glob("*/metrics.jsonl")
  steps = [max(json.loads(l)["step"]) for l in metrics.read_text().splitlines()]
  assert steps == [5, 10, 15, 20]
  assert (tmp_path / "b" / "summary.json").exists()
  assert not list((tmp_path / "stages").glob(f"*/{locks.LOCK}"))
