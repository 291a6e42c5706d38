# shellcheck shell=bash
# Helpers shared by launch/tpu_vm.sh and launch/gpu.sh; sourced, never run.
#
# Every command that acts on a machine goes through run_cmd (or capture), which prints it as
# "+ <command>" and runs it unless --dry-run. Words are quoted for a POSIX shell, so a printed line
# can be pasted back into a shell. The quoting uses single quotes rather than `printf %q`: %q puts a
# backslash before every space of an ssh --command string, which makes the dry run unreadable.
#
# Written for bash 3.2 (macOS) and later: no associative arrays, no ${x,,}, and an empty array is
# expanded as ${a[@]+"${a[@]}"} under `set -u`.

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$LAUNCH_DIR/.." && pwd)
PROG=${PROG:-$(basename "$0")}
DRY_RUN=0
SUBCOMMAND=''
# shellcheck disable=SC2034  # used by the scripts that source this file
EXTRA_ARGS=()

# Files of the working tree that are not copied to a machine (the same for tar and rsync).
# shellcheck disable=SC2034  # used by the scripts that source this file
COPY_EXCLUDES=(.git runs __pycache__ '*.egg-info' .venv .pytest_cache build .whl)

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

note() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

# q WORD: WORD quoted for a POSIX shell. Words made only of safe characters stay bare, and
# --flag=value becomes --flag='value' rather than '--flag=value'.
q() {
  local quoted
  case $1 in
    '') printf "''" ;;
    *[!A-Za-z0-9_./:=,@%+-]*)
      case $1 in
        --[a-z]*=*)
          case ${1%%=*} in
            *[!A-Za-z0-9_-]*) ;;
            *)
              printf '%s=%s' "${1%%=*}" "$(q "${1#*=}")"
              return 0
              ;;
          esac
          ;;
      esac
      # The "." keeps trailing newlines through $( ).
      quoted=$(printf '%s.' "$1" | sed "s/'/'\\\\''/g")
      printf "'%s'" "${quoted%.}"
      ;;
    *) printf '%s' "$1" ;;
  esac
}

# qpath PATH: PATH for a shell command line, with a leading ~/ written as "$HOME"/ so that it also
# expands after `--flag=`, and on the machine that runs the line.
# shellcheck disable=SC2016,SC2088  # the $HOME and ~ are for the shell that runs the line
qpath() {
  case $1 in
    '~') printf '"$HOME"' ;;
    '~/'*) printf '"$HOME"/%s' "$(q "${1#??}")" ;;
    *) q "$1" ;;
  esac
}

# home_path PATH: PATH, made relative to ~ when it is relative (ssh starts in the home directory,
# and commands cd elsewhere before using it).
# shellcheck disable=SC2088  # expanded by the shell that runs the commands
home_path() {
  case $1 in
    /* | '~' | '~/'*) printf '%s' "$1" ;;
    *) printf '~/%s' "$1" ;;
  esac
}

quote_words() {
  local out='' word
  for word in "$@"; do
    out="$out${out:+ }$(q "$word")"
  done
  printf '%s' "$out"
}

# trace CMD...: prints "+ CMD" (to stdout in a dry run, where it is the output; else to stderr).
trace() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+ %s\n' "$(quote_words "$@")"
  else
    printf '+ %s\n' "$(quote_words "$@")" >&2
  fi
}

run_cmd() {
  trace "$@"
  if [ "$DRY_RUN" = 1 ]; then
    return 0
  fi
  "$@"
}

# capture VAR CMD...: like run_cmd, and stores CMD's stdout in VAR ('' in a dry run). Returns CMD's
# exit status.
capture() {
  local __var=$1 __out __rc=0
  shift
  trace "$@"
  if [ "$DRY_RUN" = 1 ]; then
    printf -v "$__var" '%s' ''
    return 0
  fi
  __out=$("$@") || __rc=$?
  printf -v "$__var" '%s' "$__out"
  return "$__rc"
}

need_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH; $2 (or use --dry-run to see the commands)"
}

# parse_args "VALUE_FLAGS" "BOOL_FLAGS" ARGS...: sets SUBCOMMAND, EXTRA_ARGS (what follows --) and
# OPT_<flag> for each flag given (dashes become underscores). Value flags take --key=value or
# --key value; boolean flags set 1. --help/-h calls usage and exits 0.
parse_args() {
  local value_flags=" $1 " bool_flags=" $2 " arg key val has_val
  shift 2
  while [ $# -gt 0 ]; do
    arg=$1
    shift
    case $arg in
      --)
        # shellcheck disable=SC2034  # used by the scripts that source this file
        EXTRA_ARGS=("$@")
        return 0
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      --*)
        key=${arg#--}
        has_val=0
        val=''
        case $key in
          *=*)
            has_val=1
            val=${key#*=}
            key=${key%%=*}
            ;;
        esac
        case $key in
          '' | *[!a-z0-9-]*) die "unknown flag: ${arg%%=*} (see --help)" ;;
        esac
        case $value_flags in
          *" $key "*)
            if [ "$has_val" = 0 ]; then
              [ $# -gt 0 ] || die "--$key needs a value"
              val=$1
              shift
            fi
            printf -v "OPT_${key//-/_}" '%s' "$val"
            continue
            ;;
        esac
        case $bool_flags in
          *" $key "*)
            [ "$has_val" = 0 ] || die "--$key takes no value"
            printf -v "OPT_${key//-/_}" '%s' 1
            continue
            ;;
        esac
        die "unknown flag: --$key (see --help)"
        ;;
      -?*) die "unknown flag: $arg (see --help)" ;;
      *)
        [ -z "$SUBCOMMAND" ] ||
          die "unexpected argument: $arg (arguments for transinv_jax.main go after --)"
        SUBCOMMAND=$arg
        ;;
    esac
  done
}

# check_subcommand "SUBCOMMANDS": dies unless SUBCOMMAND is one of them.
check_subcommand() {
  [ -n "$SUBCOMMAND" ] || die "missing subcommand (one of: $1; see --help)"
  case $SUBCOMMAND in
    *[!a-z]*) ;;
    *)
      case " $1 " in
        *" $SUBCOMMAND "*) return 0 ;;
      esac
      ;;
  esac
  die "unknown subcommand: $SUBCOMMAND (one of: $1)"
}

# MISSING collects the required flags that were not given (require), and check_required dies
# naming all of them in one line.
MISSING=''

# require VALUE FLAG: notes FLAG as missing when VALUE is empty.
require() {
  if [ -z "$1" ]; then
    MISSING="$MISSING${MISSING:+, }$2"
  fi
}

# check_required WHAT: dies with "FLAG[, FLAG...] required for WHAT" if any flag is missing.
check_required() {
  case $MISSING in
    '') return 0 ;;
    *,*) die "$MISSING are required for $1" ;;
    *) die "$MISSING is required for $1" ;;
  esac
}

# check_config CONFIG: the config file (before any :argument) exists in this checkout.
check_config() {
  local file=${1%%:*}
  case $file in
    /*) return 0 ;;
  esac
  [ -f "$REPO_ROOT/$file" ] || die "--config: no such file in this checkout: $file"
}

# default_workdir CONFIG: runs/<config stem>, plus _<argument> when the config has one
# (configs/exp1.py:mnist,vanilla -> runs/exp1_mnist_vanilla), so that cells never share a workdir.
default_workdir() {
  local file=${1%%:*} stem arg=''
  stem=$(basename "$file" .py)
  case $1 in
    *:*) arg=${1#*:} ;;
  esac
  arg=$(printf '%s' "$arg" | tr -c 'A-Za-z0-9_.-' '_')
  printf 'runs/%s%s' "$stem" "${arg:+_$arg}"
}

# check_workdir WORKDIR [gs]: a gs:// workdir only where the script passes it to the run as it is
# (second argument "gs": tpu_vm.sh); gpu.sh keeps the workdir on the machine.
check_workdir() {
  case $1 in
    gs://?*/*)
      [ "${2:-}" = gs ] ||
        die "--workdir=$1: $PROG keeps the workdir on the machine; give a path there (or use" \
          "tpu_vm.sh, whose runs write to gs:// directly)"
      ;;
    gs://*) die "--workdir=$1: name a folder in the bucket, e.g. gs://BUCKET/run" ;;
  esac
}

# is_gs WORD: whether WORD (a workdir, maybe quoted by q) is a Cloud Storage folder.
is_gs() {
  case $1 in
    gs://* | "'gs://"*) return 0 ;;
  esac
  return 1
}

check_seconds() {
  case $1 in
    '' | *[!0-9]*) die "$2 must be a whole number of seconds, not '$1'" ;;
  esac
}

# Remote shell code. Each function prints one line of shell code for the machine that runs the job;
# arguments are already-quoted shell words (from q / qpath) unless named otherwise.

# The part of every job's code that sets TRANSINV_JAX_DATA: the dataset copied by `setup --data`,
# unless the environment already names one.
data_env_code() {
  # shellcheck disable=SC2016  # expanded by the shell that runs the job
  printf '%s' 'if [ -z "${TRANSINV_JAX_DATA:-}" ] && [ -d "$HOME"/transinv_data ]; then export TRANSINV_JAX_DATA="$HOME"/transinv_data; fi'
}

# log_dir_code WORKDIR: the folder of the job's files on each host: WORKDIR/logs, or for a gs://
# workdir (which the run writes directly, and where a log cannot be appended to) a local folder,
# ~/transinv_logs/<the workdir's bucket and path, / as _>.
# shellcheck disable=SC2016  # $HOME is for the shell that runs the line
log_dir_code() {
  local name
  if is_gs "$1"; then
    name=$(printf '%s' "$1" | sed "s|^'||; s|'\$||; s|^gs://||" | tr -c 'A-Za-z0-9_.-' '_')
    printf '"$HOME"/transinv_logs/%s' "$(q "$name")"
  else
    printf '%s' "\"\$wd/logs\""
  fi
}

# exists_code FILE: shell code true when FILE (a word using $wd) exists: `test -f`, or
# `gcloud storage ls` for a gs:// workdir (the second argument: WORKDIR).
exists_code() {
  if is_gs "$2"; then
    printf '%s' "gcloud storage ls $1 > /dev/null 2>&1"
  else
    printf '%s' "test -f $1"
  fi
}

# The job's files on each host, as shell variables: wd (the workdir), logs (log_dir_code) and
# log, the prefix of $logs/run.<host>.log (its output, appended), .pid and .rc (its exit status).
files_code() {
  printf '%s' "cd $1 && wd=$2 && logs=$(log_dir_code "$2") && log=\"\$logs/run.\$(hostname)\""
}

# start_code DIR WORKDIR ENV PYTHON MAIN_ARGS: cd DIR; unless this workdir's run is alive on this
# host, start `PYTHON -m transinv_jax.main MAIN_ARGS` under nohup with ENV (assignments, may be
# empty). The pid file names a bash that waits for python, passes SIGTERM on to it (the package
# then checkpoints and exits 143) and writes its exit status to .rc.
start_code() {
  local env=$3 python=$4 main_args=$5 job code
  job="echo \"== \$(date -u) start\"; stop() { kill -TERM \"\$child\" 2>/dev/null; }; trap stop TERM"
  job="$job; $python -m transinv_jax.main $main_args < /dev/null & child=\$!"
  job="$job; wait \"\$child\"; rc=\$?; while kill -0 \"\$child\" 2>/dev/null; do wait \"\$child\"; rc=\$?; done"
  job="$job; echo \"== \$(date -u) exit \$rc\"; echo \"\$rc\" > \"\$TRANSINV_LOG.rc\""
  code="$(files_code "$1" "$2") && mkdir -p \"\$logs\" && $(data_env_code)"
  code="$code && pid=\$(cat \"\$log.pid\" 2>/dev/null || true)"
  code="$code && if [ -n \"\$pid\" ] && grep -qs transinv_jax.main /proc/\"\$pid\"/cmdline"
  code="$code; then echo \"already running on \$(hostname): pid \$pid\""
  code="$code; else rm -f \"\$log.rc\"; ${env:+$env }TRANSINV_LOG=\"\$log\" nohup bash -c $(q "$job")"
  code="$code >> \"\$log.log\" 2>&1 < /dev/null & echo \$! > \"\$log.pid\""
  code="$code && echo \"started on \$(hostname): log \$PWD/\$log.log\"; fi"
  printf '%s' "$code"
}

# follow_code DIR WORKDIR: prints this host's log until its run ends; exits with the run's status.
follow_code() {
  printf '%s' "$(files_code "$1" "$2") && tail -n 50 -f --pid=\"\$(cat \"\$log.pid\")\" \"\$log.log\"; exit \"\$(cat \"\$log.rc\" 2>/dev/null || echo 1)\""
}

# check_code DIR WORKDIR: prints "finished" when WORKDIR/summary.json exists; "failed ..." when the
# run on this host exited non-zero, except with 143 (stopped by SIGTERM: a preemption notice, so
# the run resumes when started again); else "running" (or stopped, to be started again).
check_code() {
  # shellcheck disable=SC2016  # $wd is for the shell that runs the line
  local summary='"$wd/summary.json"'
  printf '%s' "$(files_code "$1" "$2") && rc=\$(cat \"\$log.rc\" 2>/dev/null || true) && if $(exists_code "$summary" "$2"); then echo finished; elif [ -n \"\$rc\" ] && [ \"\$rc\" != 0 ] && [ \"\$rc\" != 143 ]; then echo \"failed with exit status \$rc\"; tail -n 20 \"\$log.log\"; else echo running; fi"
}

# stop_code DIR WORKDIR: sends SIGTERM to this host's run (it checkpoints and exits 143).
stop_code() {
  printf '%s' "$(files_code "$1" "$2") && pid=\$(cat \"\$log.pid\" 2>/dev/null || true) && if [ -n \"\$pid\" ] && grep -qs transinv_jax.main /proc/\"\$pid\"/cmdline; then kill -TERM \"\$pid\" && echo \"stopping on \$(hostname): pid \$pid\"; else echo \"not running on \$(hostname)\"; fi"
}

# status_code DIR WORKDIR: the run's progress.json and the end of its log.
status_code() {
  local cat=cat
  if is_gs "$2"; then
    cat='gcloud storage cat'
  fi
  printf '%s' "$(files_code "$1" "$2") && { $cat \"\$wd/progress.json\" 2>/dev/null || echo 'no progress.json yet'; } && tail -n 5 \"\$log.log\" 2>/dev/null; true"
}
