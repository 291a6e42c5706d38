#!/usr/bin/env bash
# Takes one GPU machine, this one or one reached over ssh, from nothing to running
# transinv_jax.main. See --help.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

# shellcheck disable=SC2034  # read by common.sh
PROG=gpu.sh
# shellcheck source=common.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

SUBCOMMANDS='setup run stop fetch status all'

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh SUBCOMMAND [--host=USER@BOX] [options] [-- MAIN_ARGS...]

Runs, on this machine or on --host over ssh,
  VENV/bin/python -m transinv_jax.main --config=CONFIG --workdir=WORKDIR MAIN_ARGS...

Subcommands:
  setup    --host: copy this working tree there with rsync (no .git, no runs/), and --data to
           ~/transinv_data; then make a venv at --venv and pip install -e . "jax[cuda12]"
  run      start the run under nohup, logging to WORKDIR/logs/run.<host>.log. Safe to repeat:
           a live run is left alone, a stopped one resumes from the workdir's checkpoints, a
           finished one does nothing. --follow: print the log until the run ends
  stop     send SIGTERM to the run: it checkpoints and exits 143 (run resumes it)
  fetch    --host: rsync WORKDIR back to --dest (on this machine there is nothing to fetch)
  status   the run's progress.json, the end of its log, and nvidia-smi
  all      setup, run --follow, fetch

Options (--key=value or --key value):
  --host=USER@BOX       ssh destination (default: empty, this machine). Its login shell must be
                        POSIX (bash, zsh, dash)
  --config=FILE[:ARG]   experiment config, relative to the repository (required by run, all)
  --workdir=DIR         relative to the tree (default runs/<config stem>, plus _<ARG> when the
                        config has one)
  --gpu=IDS             CUDA_VISIBLE_DEVICES for the run, e.g. 0 or 0,1 (default: every GPU)
  --mem-fraction=F      XLA_PYTHON_CLIENT_MEM_FRACTION for the run, e.g. .9 (default: JAX's)
  --venv=DIR            the venv (default ~/transinv_venv)
  --jax=REQUIREMENT     what setup installs for JAX (default jax[cuda12])
  --remote-dir=DIR      --host: the tree there (default ~/transinv_jax); locally this checkout
  --data=DIR            dataset folder (TRANSINV_JAX_DATA). --host: setup copies it to
                        ~/transinv_data there, which runs use unless TRANSINV_JAX_DATA is set
  --dest=DIR            fetch: local folder for the workdir (default runs/<workdir's name>)
  --follow              run: print the log until the run ends; exit with its status
  --dry-run             print every command, one per line as "+ command", and run none
  -h, --help            this help

Arguments after -- go to transinv_jax.main unchanged, e.g. -- --config.num_seeds=5

Example:
  launch/gpu.sh all --host=me@gpubox --gpu=0 --config=configs/exp1.py:mnist,vanilla \
      --data=../shared/data -- --config.num_seeds=5
EOF
}

OPT_host='' OPT_config='' OPT_workdir='' OPT_gpu='' OPT_mem_fraction='' OPT_jax='jax[cuda12]'
OPT_data='' OPT_dest=''
# shellcheck disable=SC2088  # expanded by the shell that runs the commands
OPT_remote_dir='~/transinv_jax' OPT_venv='~/transinv_venv'
OPT_follow=0 OPT_dry_run=0

parse_args "host config workdir gpu mem-fraction venv jax remote-dir data dest" "follow dry-run" "$@"
DRY_RUN=$OPT_dry_run

# -- checks, before anything runs

check_subcommand "$SUBCOMMANDS"
case $SUBCOMMAND in
  run | all) require "$OPT_config" --config ;;
  fetch | stop) require "$OPT_config$OPT_workdir" "--config (or --workdir)" ;;
esac
check_required "$SUBCOMMAND"
if [ -n "$OPT_config" ]; then
  check_config "$OPT_config"
fi
WORKDIR=$OPT_workdir
if [ -z "$WORKDIR" ] && [ -n "$OPT_config" ]; then
  WORKDIR=$(default_workdir "$OPT_config")
fi
check_workdir "$WORKDIR"
case $OPT_gpu in
  *[!0-9,]* | ,* | *, | *,,*) die "--gpu must be GPU indices such as 0 or 0,1, not '$OPT_gpu'" ;;
esac
case $OPT_mem_fraction in
  *[!0-9.]* | . | *.*.*) die "--mem-fraction must be a number such as .9, not '$OPT_mem_fraction'" ;;
esac
if [ -n "$OPT_data" ] && [ "$DRY_RUN" = 0 ] && [ ! -d "$OPT_data" ]; then
  die "--data: no such folder: $OPT_data"
fi
if [ "$DRY_RUN" = 0 ] && [ -n "$OPT_host" ]; then
  need_cmd ssh "install an OpenSSH client"
  need_cmd rsync "install rsync"
fi

if [ -n "$OPT_host" ]; then
  OPT_remote_dir=$(home_path "$OPT_remote_dir")
  OPT_venv=$(home_path "$OPT_venv")
  RDIR=$(qpath "$OPT_remote_dir")
else
  RDIR=$(q "$REPO_ROOT")
  # shellcheck disable=SC2088  # these ~ are patterns
  case $OPT_venv in
    /* | '~' | '~/'*) ;;
    *) OPT_venv="$PWD/$OPT_venv" ;;
  esac
fi
RW=$(qpath "$WORKDIR")
VENV=$(qpath "$OPT_venv")

# rsync_path PATH: PATH on the host as rsync takes it (relative paths are relative to home).
# shellcheck disable=SC2088  # these ~ are patterns
rsync_path() {
  case $1 in
    '~') printf '.' ;;
    '~/'*) printf '%s' "${1#??}" ;;
    *) printf '%s' "$1" ;;
  esac
}

# on_host CODE: runs shell CODE on the machine (with ssh, or bash -c here).
on_host() {
  if [ -n "$OPT_host" ]; then
    run_cmd ssh "$OPT_host" "$1"
  else
    run_cmd bash -c "$1"
  fi
}

gpu_setup() {
  local excludes=() pattern pip
  pip="$VENV/bin/python -m pip install -q"
  if [ -n "$OPT_host" ]; then
    for pattern in "${COPY_EXCLUDES[@]}"; do
      excludes+=(--exclude="$pattern")
    done
    on_host "mkdir -p $RDIR"
    run_cmd rsync -a "${excludes[@]}" "$REPO_ROOT/" "$OPT_host:$(rsync_path "$OPT_remote_dir")/"
    if [ -n "$OPT_data" ]; then
      run_cmd rsync -a "${OPT_data%/}/" "$OPT_host:transinv_data/"
    fi
  fi
  on_host "{ [ -x $VENV/bin/pip ] || python3 -m venv $VENV; } && $pip -U pip && cd $RDIR && $pip -e . $(q "$OPT_jax")"
}

gpu_run() {
  local env='' extra data
  if [ -n "$OPT_gpu" ]; then
    env="CUDA_VISIBLE_DEVICES=$OPT_gpu"
  fi
  if [ -n "$OPT_mem_fraction" ]; then
    env="${env:+$env }XLA_PYTHON_CLIENT_MEM_FRACTION=$OPT_mem_fraction"
  fi
  if [ -z "$OPT_host" ] && [ -n "$OPT_data" ]; then
    case $OPT_data in
      /*) data=$OPT_data ;;
      *) data="$PWD/$OPT_data" ;;
    esac
    env="${env:+$env }TRANSINV_JAX_DATA=$(q "$data")"
  fi
  extra=$(quote_words ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
  on_host "$(start_code "$RDIR" "$RW" "$env" "$VENV/bin/python" \
    "$(q "--config=$OPT_config") --workdir=$RW${extra:+ $extra}")"
  if [ "$1" = 1 ]; then
    on_host "$(follow_code "$RDIR" "$RW")"
  fi
}

# shellcheck disable=SC2088  # these ~ are patterns
gpu_fetch() {
  local dest=${OPT_dest:-runs/$(basename "$WORKDIR")} remote
  if [ -z "$OPT_host" ]; then
    case $WORKDIR in
      /* | '~' | '~/'*) note "the run is on this machine: nothing to fetch ($WORKDIR)" ;;
      *) note "the run is on this machine: nothing to fetch ($REPO_ROOT/$WORKDIR)" ;;
    esac
    return 0
  fi
  case $WORKDIR in
    /* | '~' | '~/'*) remote=$(rsync_path "$WORKDIR") ;;
    *) remote="$(rsync_path "$OPT_remote_dir")/$WORKDIR" ;;
  esac
  run_cmd mkdir -p "$dest"
  run_cmd rsync -a "$OPT_host:$remote/" "$dest/"
}

gpu_status() {
  local code=''
  if [ -n "$WORKDIR" ]; then
    code="$(status_code "$RDIR" "$RW") && "
  fi
  on_host "${code}if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total --format=csv; fi"
}

case $SUBCOMMAND in
  setup) gpu_setup ;;
  run) gpu_run "$OPT_follow" ;;
  stop) on_host "$(stop_code "$RDIR" "$RW")" ;;
  fetch) gpu_fetch ;;
  status) gpu_status ;;
  all)
    gpu_setup
    gpu_run 1
    gpu_fetch
    ;;
esac
