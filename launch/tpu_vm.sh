#!/usr/bin/env bash
# Takes a Cloud TPU VM (one host, or every worker of a multi-host slice) from nothing to running
# transinv_jax.main, with `gcloud compute tpus tpu-vm`. See --help.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

# shellcheck disable=SC2034  # read by common.sh
PROG=tpu_vm.sh
# shellcheck source=common.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

SUBCOMMANDS='create setup run stop fetch delete status all'

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh SUBCOMMAND --name=NAME --zone=ZONE [options] [-- MAIN_ARGS...]

Runs the same command on every worker of a Cloud TPU VM or multi-host slice:
  python -m transinv_jax.main --config=CONFIG --workdir=WORKDIR --multihost MAIN_ARGS...

Subcommands:
  create   create the TPU VM (--accelerator; --version, --spot, --project)
  setup    copy this working tree (no .git, no runs/) to every worker, make a venv there and
           pip install -e . "jax[tpu]" (and gcsfs google-cloud-storage for a gs:// --workdir);
           with --data, copy a dataset folder too
  run      start the run on every worker under nohup, logging to WORKDIR/logs/run.<host>.log
           (for a gs:// WORKDIR: ~/transinv_logs/<bucket_path>/run.<host>.log on each worker).
           Safe to repeat: a live run is left alone, a stopped one resumes from the workdir's
           checkpoints, a finished one does nothing. --follow: print the logs until the run ends.
           --watch: every --poll seconds until WORKDIR/summary.json exists on worker 0, delete,
           create and set up the VM again if it is PREEMPTED or TERMINATED, and start the run
           again if it is not running. An exit status other than 0 or 143 (SIGTERM, a
           preemption notice) on worker 0 ends the watch with status 1
  stop     send SIGTERM to the run on every worker: it checkpoints and exits 143 (run resumes)
  fetch    copy WORKDIR from worker 0 (or from its bucket, for a gs:// one) to --dest
  status   the VM's state; with --config or --workdir, worker 0's progress.json and log tail
  delete   delete the TPU VM
  all      create, setup, run --follow (or --watch), fetch; --skip-create for an existing VM

Options (--key=value or --key value):
  --name=NAME           TPU VM name (required)
  --zone=ZONE           e.g. us-central2-b (required)
  --project=PROJECT     Google Cloud project (default: gcloud's configured project)
  --accelerator=TYPE    e.g. v4-8, v4-32, v5litepod-16 (required by create, all, run --watch)
  --version=RUNTIME     TPU software version; default from the accelerator: v6e v2-alpha-tpuv6e,
                        v5p v2-alpha-tpuv5, v5litepod v2-alpha-tpuv5-lite, else tpu-ubuntu2204-base
  --spot                a Spot (preemptible) VM
  --config=FILE[:ARG]   experiment config, relative to the repository (required by run, all)
  --workdir=DIR         on the workers, relative to --remote-dir
                        (default runs/<config stem>, plus _<ARG> when the config has one);
                        or gs://BUCKET/PATH, which every worker's run writes directly (setup
                        then installs gcsfs and google-cloud-storage; the VM's service account
                        needs write access); then no --sync, and the logs stay on the workers
  --sync=gs://BUCKET/P  mirror WORKDIR from worker 0 to this Cloud Storage folder every --poll
                        seconds and when the run ends; a worker without WORKDIR (a recreated VM)
                        first copies it back, so the run resumes instead of starting over.
                        create then gives the VM the cloud-platform scope; its service account
                        needs write access to the bucket
  --data=DIR            setup: copy this local dataset folder to ~/transinv_data on every worker;
                        runs use it as TRANSINV_JAX_DATA unless that is set on the worker
  --dest=DIR            fetch: local folder for the workdir (default runs/<workdir's name>)
  --remote-dir=DIR      the tree on the workers (default ~/transinv_jax)
  --venv=DIR            the venv on the workers (default ~/transinv_venv)
  --follow              run: print the workers' logs until the run ends; exit with its status
  --watch               run, all: keep the run going through preemptions (see run)
  --poll=SECONDS        period of --watch and --sync (default 600)
  --skip-create         all: the VM exists already
  --dry-run             print every command, one per line as "+ command", and run none
  -h, --help            this help

Arguments after -- go to transinv_jax.main unchanged, e.g. -- --config.num_seeds=5

Example:
  launch/tpu_vm.sh all --name=tiv --zone=us-central2-b --accelerator=v4-8 --spot --watch \
      --config=configs/exp1.py --sync=gs://my-bucket/exp1 -- --config.num_seeds=5
EOF
}

OPT_name='' OPT_zone='' OPT_project='' OPT_accelerator='' OPT_version='' OPT_config=''
OPT_workdir='' OPT_sync='' OPT_data='' OPT_dest='' OPT_poll=600
# shellcheck disable=SC2088  # expanded on the workers
OPT_remote_dir='~/transinv_jax' OPT_venv='~/transinv_venv'
OPT_spot=0 OPT_follow=0 OPT_watch=0 OPT_skip_create=0 OPT_dry_run=0

parse_args "name zone project accelerator version config workdir sync data dest remote-dir venv poll" \
  "spot follow watch skip-create dry-run" "$@"
DRY_RUN=$OPT_dry_run

# -- checks, before anything runs

check_subcommand "$SUBCOMMANDS"
case $SUBCOMMAND in
  run | all) require "$OPT_config" --config ;;
  fetch | stop) require "$OPT_config$OPT_workdir" "--config (or --workdir)" ;;
esac
require "$OPT_name" --name
require "$OPT_zone" --zone
if [ "$SUBCOMMAND" = create ] || [ "$OPT_watch" = 1 ] ||
  { [ "$SUBCOMMAND" = all ] && [ "$OPT_skip_create" = 0 ]; }; then
  require "$OPT_accelerator" --accelerator
fi
check_required "$SUBCOMMAND$([ "$OPT_watch" = 0 ] || echo ' --watch')"
if [ -n "$OPT_config" ]; then
  check_config "$OPT_config"
fi
WORKDIR=$OPT_workdir
if [ -z "$WORKDIR" ] && [ -n "$OPT_config" ]; then
  WORKDIR=$(default_workdir "$OPT_config")
fi
check_workdir "$WORKDIR" gs
case $OPT_sync in
  '' | gs://?*) ;;
  *) die "--sync must be a gs:// folder, not '$OPT_sync'" ;;
esac
if [ -n "$OPT_sync" ] && is_gs "$WORKDIR"; then
  die "--sync mirrors a workdir on the workers; --workdir=$WORKDIR is written to the bucket" \
    "directly: leave out --sync"
fi
check_seconds "$OPT_poll" --poll
if [ -n "$OPT_data" ] && [ "$DRY_RUN" = 0 ] && [ ! -d "$OPT_data" ]; then
  die "--data: no such folder: $OPT_data"
fi
VERSION=$OPT_version
if [ -z "$VERSION" ]; then
  case $OPT_accelerator in
    v6e*) VERSION=v2-alpha-tpuv6e ;;
    v5p*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod* | v5e*) VERSION=v2-alpha-tpuv5-lite ;;
    *) VERSION=tpu-ubuntu2204-base ;;
  esac
fi
if [ "$DRY_RUN" = 0 ]; then
  need_cmd gcloud "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
fi

OPT_remote_dir=$(home_path "$OPT_remote_dir")
OPT_venv=$(home_path "$OPT_venv")
RDIR=$(qpath "$OPT_remote_dir")
RW=$(qpath "$WORKDIR")
PY="$(qpath "$OPT_venv")/bin/python"
TPU=(gcloud compute tpus tpu-vm)
LOC=(--zone="$OPT_zone")
if [ -n "$OPT_project" ]; then
  LOC+=(--project="$OPT_project")
fi

# on_workers WORKER CODE: runs shell CODE on worker WORKER (0, 1, ... or all).
on_workers() {
  run_cmd "${TPU[@]}" ssh "$OPT_name" "${LOC[@]}" --worker="$1" --command="$2"
}

# The functions below return non-zero at the first failing command (`|| return`), so that --watch
# can call them in a condition, where `set -e` does not apply.

tpu_create() {
  local extra=()
  if [ "$OPT_spot" = 1 ]; then
    extra+=(--spot)
  fi
  if [ -n "$OPT_sync" ] || is_gs "$WORKDIR"; then
    # The workers' gcloud storage (and a gs:// workdir's run) then act as the VM's service
    # account, as IAM allows it.
    extra+=(--scopes=https://www.googleapis.com/auth/cloud-platform)
  fi
  run_cmd "${TPU[@]}" create "$OPT_name" "${LOC[@]}" --accelerator-type="$OPT_accelerator" \
    --version="$VERSION" ${extra[@]+"${extra[@]}"}
}

tpu_setup() {
  local tree="${TMPDIR:-/tmp}/transinv_jax-$OPT_name.tar.gz" data excludes=() pattern code
  local venv pip
  data="${TMPDIR:-/tmp}/transinv_data-$OPT_name.tar.gz"
  venv=$(qpath "$OPT_venv")
  pip="$venv/bin/python -m pip install -q"
  for pattern in "${COPY_EXCLUDES[@]}"; do
    excludes+=(--exclude="$pattern")
  done
  run_cmd tar -czf "$tree" "${excludes[@]}" -C "$REPO_ROOT" . || return
  run_cmd "${TPU[@]}" scp "$tree" "$OPT_name:transinv_jax.tar.gz" "${LOC[@]}" --worker=all || return
  run_cmd rm -f "$tree" || return
  code="mkdir -p $RDIR && tar -xzf transinv_jax.tar.gz -C $RDIR && rm -f transinv_jax.tar.gz"
  if [ -n "$OPT_data" ]; then
    run_cmd tar -czf "$data" -C "$OPT_data" . || return
    run_cmd "${TPU[@]}" scp "$data" "$OPT_name:transinv_data.tar.gz" "${LOC[@]}" --worker=all ||
      return
    run_cmd rm -f "$data" || return
    code="$code && mkdir -p \"\$HOME\"/transinv_data"
    code="$code && tar -xzf transinv_data.tar.gz -C \"\$HOME\"/transinv_data && rm -f transinv_data.tar.gz"
  fi
  # Ubuntu images may lack the venv module; python3-venv brings it.
  code="$code && { [ -x $venv/bin/pip ] || python3 -m venv $venv || { sudo apt-get update -q"
  code="$code && sudo apt-get install -y -q python3-venv && python3 -m venv $venv; }; }"
  code="$code && $pip -U pip && cd $RDIR && $pip -e . 'jax[tpu]'"
  if is_gs "$WORKDIR"; then
    code="$code gcsfs google-cloud-storage"  # the run writes the bucket itself (see README)
  fi
  on_workers all "$code"
}

main_args() {
  local extra
  extra=$(quote_words ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
  printf '%s' "$(q "--config=$OPT_config") --workdir=$RW --multihost${extra:+ $extra}"
}

# tpu_start FOLLOW: starts the run on every worker (and, with --sync, worker 0's mirror loop).
tpu_start() {
  local code sync loop exclude
  code=$(start_code "$RDIR" "$RW" '' "$PY" "$(main_args)")
  if [ -n "$OPT_sync" ]; then
    sync=$(q "$OPT_sync")
    # Orbax's and transinv_jax's temporary files are left out; they are renamed when complete.
    # So is the mirror loop's pid: restored on a new VM it would name a process of the old one
    # (or a live stranger), and the new VM would think it already mirrors.
    exclude=$(q '--exclude=.*orbax-checkpoint-tmp.*|.*\.tmp[0-9].*|logs/sync\.pid')
    code="cd $RDIR && if [ ! -e $RW ] && gcloud storage ls $sync > /dev/null 2>&1; then mkdir -p $RW && gcloud storage rsync --recursive $sync $RW; fi && $code"
  fi
  on_workers all "$code" || return
  if [ -n "$OPT_sync" ]; then
    loop="while [ ! -s $RW/logs/run.\$(hostname).rc ]; do sleep $OPT_poll; gcloud storage rsync --recursive $exclude $RW $sync; done; gcloud storage rsync --recursive $exclude $RW $sync"
    code="cd $RDIR && pid=\$(cat $RW/logs/sync.pid 2>/dev/null || true) && if [ -n \"\$pid\" ] && kill -0 \"\$pid\" 2>/dev/null; then echo already mirroring; else nohup bash -c $(q "$loop") > $RW/logs/sync.log 2>&1 < /dev/null & echo \$! > $RW/logs/sync.pid; fi"
    on_workers 0 "$code" || return
  fi
  if [ "$1" = 1 ]; then
    on_workers all "$(follow_code "$RDIR" "$RW")" || return
  fi
}

tpu_watch() {
  local state verdict
  while :; do
    state=''
    capture state "${TPU[@]}" describe "$OPT_name" "${LOC[@]}" --format='value(state)' ||
      state=NOT_FOUND
    if [ "$DRY_RUN" = 1 ]; then
      state=READY
    fi
    case $state in
      READY) ;;
      PREEMPTED | TERMINATED | STOPPED | NOT_FOUND)
        note "TPU VM $OPT_name is $state: creating it again"
        if [ "$state" != NOT_FOUND ]; then
          run_cmd "${TPU[@]}" delete "$OPT_name" "${LOC[@]}" --quiet || note "delete failed"
        fi
        if ! { tpu_create && tpu_setup; }; then
          note "could not create and set up $OPT_name; trying again in $OPT_poll s"
          run_cmd sleep "$OPT_poll"
          continue
        fi
        ;;
      *)
        note "TPU VM $OPT_name is ${state:-in no known state}; looking again in $OPT_poll s"
        run_cmd sleep "$OPT_poll"
        continue
        ;;
    esac
    verdict=''
    capture verdict "${TPU[@]}" ssh "$OPT_name" "${LOC[@]}" --worker=0 \
      --command="$(check_code "$RDIR" "$RW")" || verdict=unreachable
    case ${verdict%%$'\n'*} in
      finished)
        note "finished: $WORKDIR/summary.json is on worker 0"
        return 0
        ;;
      failed*)
        printf '%s\n' "$verdict" >&2
        note "the run stopped with an error on a READY VM; not starting it again"
        return 1
        ;;
    esac
    tpu_start 0 || note "could not start the run; trying again in $OPT_poll s"
    if [ "$DRY_RUN" = 1 ]; then
      note "dry run: --watch repeats these commands every $OPT_poll s until summary.json exists;" \
        "when the VM is PREEMPTED or TERMINATED it first deletes, creates and sets it up again"
      return 0
    fi
    run_cmd sleep "$OPT_poll"
  done
}

tpu_fetch() {
  local dest=${OPT_dest:-runs/$(basename "$WORKDIR")} tarball
  if is_gs "$WORKDIR"; then
    run_cmd mkdir -p "$dest"
    run_cmd gcloud storage rsync --recursive "$WORKDIR" "$dest"
    return
  fi
  tarball="${TMPDIR:-/tmp}/transinv_workdir-$OPT_name.tar.gz"
  # tar exits 1 when a file changed while it was read (a live run); that copy is still usable.
  on_workers 0 "cd $RDIR && { tar -czf \"\$HOME\"/transinv_workdir.tar.gz -C $RW . || [ \$? = 1 ]; }"
  run_cmd "${TPU[@]}" scp "$OPT_name:transinv_workdir.tar.gz" "$tarball" "${LOC[@]}" --worker=0
  run_cmd mkdir -p "$dest"
  run_cmd tar -xzf "$tarball" -C "$dest"
  run_cmd rm -f "$tarball"
}

tpu_status() {
  run_cmd "${TPU[@]}" describe "$OPT_name" "${LOC[@]}" \
    --format='table(state,health,acceleratorType,runtimeVersion)'
  if [ -n "$WORKDIR" ]; then
    on_workers 0 "$(status_code "$RDIR" "$RW")"
  fi
}

case $SUBCOMMAND in
  create) tpu_create ;;
  setup) tpu_setup ;;
  run)
    if [ "$OPT_watch" = 1 ]; then
      tpu_watch
    else
      tpu_start "$OPT_follow"
    fi
    ;;
  stop) on_workers all "$(stop_code "$RDIR" "$RW")" ;;
  fetch) tpu_fetch ;;
  status) tpu_status ;;
  delete) run_cmd "${TPU[@]}" delete "$OPT_name" "${LOC[@]}" --quiet ;;
  all)
    if [ "$OPT_skip_create" = 0 ]; then
      tpu_create
    fi
    tpu_setup
    if [ "$OPT_watch" = 1 ]; then
      tpu_watch
    else
      tpu_start 1
    fi
    tpu_fetch
    ;;
esac
