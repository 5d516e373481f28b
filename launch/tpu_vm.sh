#!/usr/bin/env bash
# t5video on Cloud TPU VMs and pod slices, through gcloud.
#
#   bash launch/tpu_vm.sh [GLOBAL FLAGS] COMMAND [FLAGS]
#
# Commands: create, setup, run, resume, logs, stop, status, delete.
# `bash launch/tpu_vm.sh COMMAND --help` explains each one; docs/tpu.md walks
# through a whole run. `--dry-run` prints the exact commands (one per line,
# shell-quoted, ready to paste) instead of running them.
set -euo pipefail

PROG="tpu_vm.sh"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Global settings (flags before COMMAND; the environment gives defaults).
DRY_RUN=0
PROJECT="${T5VIDEO_TPU_PROJECT:-}"
INTERNAL_IP=0

# Where things live on every worker, relative to the login user's home.
REMOTE_DIR_DEFAULT="t5video"
# shellcheck disable=SC2016  # $HOME is expanded by the worker's shell, not here
LOG_DIR='$HOME/t5video-logs'
TARBALL_REMOTE="t5video-src.tar.gz"

# =============================================================================
# helpers
# =============================================================================

die() {
  echo "$PROG${CMD:+ $CMD}: error: $*" >&2
  echo "(run: bash launch/tpu_vm.sh ${CMD:+$CMD }--help)" >&2
  exit 2
}

note() {
  echo "[$PROG] $*" >&2
}

# shq WORD: WORD quoted for a POSIX shell; plain words stay bare.
shq() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=,@%+^-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# shjoin WORD...: the words as one shell command line.
shjoin() {
  local out=() a
  for a in "$@"; do
    out+=("$(shq "$a")")
  done
  local IFS=' '
  printf '%s' "${out[*]}"
}

# execute CMD...: runs a command, or prints it under --dry-run.
execute() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(shjoin "$@")"
  else
    note "+ $(shjoin "$@")"
    "$@"
  fi
}

# gcloud_cmd ARGS...: `gcloud ARGS... [--project=P]`, run or printed.
gcloud_cmd() {
  if [[ -n $PROJECT ]]; then
    execute gcloud "$@" "--project=$PROJECT"
  else
    execute gcloud "$@"
  fi
}

# value "$@": called with the parser's remaining arguments (FLAG VALUE ...);
# prints VALUE, or fails when it is missing.
value() {
  if (($# < 2)) || [[ -z $2 || $2 == --* ]]; then
    die "$1 needs a value"
  fi
  printf '%s' "$2"
}

check_name() {
  [[ -n $1 ]] || die "--name is required (or set T5VIDEO_TPU_NAME)"
  [[ $1 =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    die "--name '$1': lower-case letters, digits and '-', starting with a letter (at most 63)"
}

check_zone() {
  [[ -n $1 ]] || die "--zone is required (or set T5VIDEO_TPU_ZONE), e.g. us-central2-b"
  [[ $1 =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$1' is not a zone name like us-central2-b"
}

check_remote_dir() {
  [[ $1 =~ ^[A-Za-z0-9_.][A-Za-z0-9_./-]*$ && $1 != *..* ]] ||
    die "--dir '$1': a path relative to the workers' home directory (letters, digits, _ . / -)"
}

check_log_name() {
  [[ $1 =~ ^[A-Za-z0-9_.-]+$ ]] || die "--log-name '$1': letters, digits, _ . - only"
}

# The runtime image for an accelerator family when --version is not given.
default_runtime() {
  case "$1" in
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) echo "" ;;
  esac
}

# The exact jax pin of pyproject.toml (the TPU install uses `jax[tpu]==<pin>`).
jax_pin() {
  local pin
  pin="$(sed -n 's/^[[:space:]]*"jax==\([^"]*\)",*[[:space:]]*$/\1/p' "$ROOT/pyproject.toml")"
  [[ $pin =~ ^[0-9]+(\.[0-9]+)+$ ]] || die "$ROOT/pyproject.toml: no exact \"jax==X.Y.Z\" pin in [project] dependencies"
  printf '%s' "$pin"
}

# ssh_all NAME ZONE WORKER REMOTE_COMMAND: one shell command on the workers.
ssh_cmd() {
  local name=$1 zone=$2 worker=$3 command=$4
  local args=(compute tpus tpu-vm ssh "$name" "--zone=$zone" "--worker=$worker")
  ((INTERNAL_IP)) && args+=(--internal-ip)
  args+=(--command "$command")
  gcloud_cmd "${args[@]}"
}

# =============================================================================
# usage
# =============================================================================

usage_main() {
  cat <<'EOF'
usage: bash launch/tpu_vm.sh [--dry-run] [--project ID] [--internal-ip] COMMAND [FLAGS]

Cloud TPU VMs and pod slices for t5video (every command is a gcloud call).

Commands:
  create    create a TPU VM or pod slice (on-demand, --spot, --preemptible, --queued)
  setup     copy this repository (or clone --repo) to every worker and install the
            pinned package with jax[tpu]==<pyproject's jax pin> into a venv
  run       start one `t5video train` on all workers (--worker=all), detached,
            workdir on gs://, a log file per worker
  resume    the same as run: the trainer resumes from the workdir's latest checkpoint
  logs      stream a worker's log, or fetch the per-worker log files
  stop      SIGTERM the trainer on all workers (it writes a checkpoint and exits)
  status    describe the TPU VM (or the queued resource)
  delete    delete the TPU VM (or the queued resource and its VM)

Global flags (before COMMAND):
  --dry-run        print the exact commands instead of running them
  --project ID     GCP project for every gcloud call (default: $T5VIDEO_TPU_PROJECT,
                   else gcloud's configured project)
  --internal-ip    VMs without external IPs: create with --internal-ips, ssh/scp with
                   --internal-ip
  -h, --help       this text

--name and --zone default to $T5VIDEO_TPU_NAME and $T5VIDEO_TPU_ZONE.
Run `bash launch/tpu_vm.sh COMMAND --help` for a command's flags; docs/tpu.md has a walk-through.
EOF
}

usage_create() {
  cat <<'EOF'
usage: bash launch/tpu_vm.sh create --name NAME --zone ZONE --accelerator-type TYPE
                                    [--version RUNTIME] [--spot | --preemptible]
                                    [--queued] [--reserved] [--network NET]
                                    [--subnetwork SUBNET] [--service-account EMAIL]
                                    [--check CONFIG.py[:ARG] [--config.KEY=VALUE ...]]

Creates a TPU VM (a single host such as v4-8, v5litepod-8) or a pod slice (several
hosts such as v4-32, v5litepod-64): one VM per worker, all reached with --worker=all.

  --name NAME             the TPU (and, with --queued, the queued resource) name
  --zone ZONE             e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-b (v6e)
  --accelerator-type T    v4-8, v4-32, v5litepod-8, v5litepod-16, v5p-8, v6e-8, ...
  --version RUNTIME       TPU software image (default by family: v2/v3/v4
                          tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
                          v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --spot                  spot capacity (cheaper; can be preempted at any time)
  --preemptible           legacy preemptible capacity (not with --queued)
  --queued                request through `gcloud compute tpus queued-resources create`
                          (waits in a queue until capacity is free; the node id is NAME)
  --reserved              use a reservation of the project
  --network, --subnetwork, --service-account   passed to gcloud
  --check CONFIG          first compile CONFIG's training steps for this accelerator type
                          here, on this machine (`t5video compile`, needs the tpu extra),
                          print memory per chip and step-time estimates, and create nothing
                          when a step does not fit; --config.KEY=VALUE flags go to it
EOF
}

usage_setup() {
  cat <<'EOF'
usage: bash launch/tpu_vm.sh setup --name NAME --zone ZONE [--repo URL [--ref REF]]
                                   [--dir DIR] [--python PYTHON]

On every worker (--worker=all): put the code in ~/DIR (default ~/t5video), create
DIR/.venv with PYTHON (default python3.11; installed with apt when missing) and
install the package with its exact pins plus jax[tpu]==<the jax pin of
pyproject.toml> (no floating versions).

  (default)        copy this working tree: tar it here (without .git, .venv, data_cache,
                   runs), `gcloud compute tpus tpu-vm scp` it to every worker, unpack
  --repo URL       instead `git clone` URL on every worker, then check out --ref
  --ref REF        branch, tag or commit to check out (default: the remote's HEAD)
  --dir DIR        the code directory, relative to the workers' home (default t5video)
  --python PYTHON  interpreter for the venv (jax needs Python >= 3.11)
EOF
}

usage_run() {
  cat <<'EOF'
usage: bash launch/tpu_vm.sh run --name NAME --zone ZONE --config CONFIG.py[:ARG]
                                 --workdir gs://BUCKET/PATH [--config.KEY=VALUE ...]
                                 [--env KEY=VALUE ...] [--log-name NAME] [--dir DIR]
                                 [--foreground] [-- EXTRA t5video train ARGS]

Starts `t5video train` on every worker (--worker=all) of the TPU VM or slice, from
~/DIR (default ~/t5video, made by `setup`). Every worker runs the same command.

Multi-host start-up: the command exports T5VIDEO_DISTRIBUTED=1, so that
t5video/train/distributed.py calls jax.distributed.initialize() with no
arguments. On Cloud TPU VMs JAX finds the coordinator (worker 0), the number of
processes and this process's id itself, from the TPU metadata; nothing else needs
to be set. (On a single-host VM the call sets up one process.)

The workdir must be a gs:// bucket path that every worker can write (Orbax writes
gs:// directly); running the same command again resumes from its latest
checkpoint. The job is detached from the ssh session; its output goes to
~/t5video-logs/NAME.log on each worker (default NAME: train), appended to on resume.

  --config CONFIG[:ARG]   config file, relative to DIR (e.g. configs/captiont5/synthetic.py)
  --workdir gs://B/P      the run directory
  --config.KEY=VALUE      config overrides (also accepted after --)
  --env KEY=VALUE         extra environment for the trainer (repeatable), e.g.
                          LIBTPU_INIT_ARGS=... or XLA_FLAGS=...
  --log-name NAME         log file name on the workers (default train)
  --dir DIR               code directory used by setup (default t5video)
  --foreground            stay attached and stream every worker's output (the job
                          ends if the ssh session drops)
EOF
}

usage_resume() {
  cat <<'EOF'
usage: bash launch/tpu_vm.sh resume (the same flags as run)

Runs the same command as `run` again. The trainer finds the latest checkpoint in
--workdir and continues from it (step, optimizer state and data iterator), so
resuming after a preemption is: recreate the VM if it was deleted or preempted
(create + setup), then resume with the same --config, overrides and --workdir.
EOF
  echo
  usage_run | sed -n '2,5p'
}

usage_logs() {
  cat <<'EOF'
usage: bash launch/tpu_vm.sh logs --name NAME --zone ZONE [--worker N|all]
                                  [--lines N] [--no-follow] [--log-name NAME]
                                  [--fetch DIR [--num-workers K]]

Streams the trainer's log of a worker (default worker 0, which also writes the
metrics) with `tail -F`, each line prefixed by the worker's host name; Ctrl-C
stops streaming, not training. With --fetch, copies the log files to DIR instead
(DIR/NAME-worker<i>.log).

  --worker N|all      which worker (default 0); `all` streams every worker at once
  --lines N           lines of history to show first (default 100)
  --no-follow         print the last --lines lines and return
  --log-name NAME     the --log-name given to run (default train)
  --fetch DIR         copy the log file(s) to DIR with `gcloud compute tpus tpu-vm scp`
  --num-workers K     with --fetch and --worker all: the number of workers (hosts)
EOF
}

usage_stop() {
  cat <<'EOF'
usage: bash launch/tpu_vm.sh stop --name NAME --zone ZONE

Sends SIGTERM to `t5video train` on every worker. The trainer treats it like a
preemption notice: all processes write a checkpoint at the current step and exit;
`resume` continues from it.
EOF
}

usage_status() {
  cat <<'EOF'
usage: bash launch/tpu_vm.sh status --name NAME --zone ZONE [--queued]

Describes the TPU VM (state, accelerator type, workers' addresses); with --queued,
the queued resource (WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, ...).
EOF
}

usage_delete() {
  cat <<'EOF'
usage: bash launch/tpu_vm.sh delete --name NAME --zone ZONE [--queued]

Deletes the TPU VM (all workers; the gs:// workdir stays). With --queued, deletes
the queued resource and, with --force, the VM it created.
EOF
}

# =============================================================================
# commands
# =============================================================================

cmd_create() {
  local name="${T5VIDEO_TPU_NAME:-}" zone="${T5VIDEO_TPU_ZONE:-}" accel="" version=""
  local spot=0 preemptible=0 queued=0 reserved=0 network="" subnetwork="" sa="" check=""
  local -a check_flags=()
  while (($#)); do
    if [[ $1 == --config.* ]]; then  # a config override for --check (kept whole: KEY=VALUE)
      [[ $1 == *=* ]] || die "'$1': write config overrides as --config.KEY=VALUE"
      check_flags+=("$1"); shift; continue
    fi
    [[ $1 == --*=* ]] && set -- "${1%%=*}" "${1#*=}" "${@:2}"
    case "$1" in
      -h | --help) usage_create; exit 0 ;;
      --check) check="$(value "$@")"; shift 2 ;;
      --name) name="$(value "$@")"; shift 2 ;;
      --zone) zone="$(value "$@")"; shift 2 ;;
      --accelerator-type) accel="$(value "$@")"; shift 2 ;;
      --version) version="$(value "$@")"; shift 2 ;;
      --spot) spot=1; shift ;;
      --preemptible) preemptible=1; shift ;;
      --queued) queued=1; shift ;;
      --reserved) reserved=1; shift ;;
      --network) network="$(value "$@")"; shift 2 ;;
      --subnetwork) subnetwork="$(value "$@")"; shift 2 ;;
      --service-account) sa="$(value "$@")"; shift 2 ;;
      *) die "unknown argument '$1'" ;;
    esac
  done
  check_name "$name"
  check_zone "$zone"
  [[ -n $accel ]] || die "--accelerator-type is required, e.g. v4-8, v4-32, v5litepod-8"
  [[ $accel =~ ^v[0-9]+[a-z]*-[0-9]+$ ]] ||
    die "--accelerator-type '$accel' is not a TPU type like v4-8, v5litepod-16, v6e-8"
  if [[ -z $version ]]; then
    version="$(default_runtime "$accel")"
    [[ -n $version ]] || die "no default runtime for '$accel': pass --version (see 'gcloud compute tpus tpu-vm versions list --zone=$zone')"
  fi
  ((spot && preemptible)) && die "--spot and --preemptible exclude each other"
  ((queued && preemptible)) && die "queued resources take --spot, not --preemptible"
  ((spot && reserved)) && die "--spot and --reserved exclude each other"
  ((${#check_flags[@]})) && [[ -z $check ]] && die "--config.KEY=VALUE flags need --check CONFIG"
  [[ -n $check ]] && check_fits "$check" "$accel" "${check_flags[@]}"

  local args
  if ((queued)); then
    args=(compute tpus queued-resources create "$name" "--zone=$zone" "--node-id=$name"
          "--accelerator-type=$accel" "--runtime-version=$version")
  else
    args=(compute tpus tpu-vm create "$name" "--zone=$zone" "--accelerator-type=$accel"
          "--version=$version")
  fi
  ((spot)) && args+=(--spot)
  ((preemptible)) && args+=(--preemptible)
  ((reserved)) && args+=(--reserved)
  [[ -n $network ]] && args+=("--network=$network")
  [[ -n $subnetwork ]] && args+=("--subnetwork=$subnetwork")
  [[ -n $sa ]] && args+=("--service-account=$sa")
  ((INTERNAL_IP)) && args+=(--internal-ips)
  gcloud_cmd "${args[@]}"
  if ((queued)); then
    note "queued: watch it with 'bash launch/tpu_vm.sh status --queued --name $name --zone $zone' until ACTIVE, then run setup"
  fi
}

# t5video compile CONFIG for ACCEL on this machine; dies (creating nothing) when a step does not fit.
check_fits() {
  local config="$1" accel="$2"
  shift 2
  local t5video="$ROOT/.venv/bin/t5video" out
  [[ -x $t5video ]] || t5video="$(command -v t5video || true)"
  [[ -n $t5video ]] || die "--check needs t5video installed here (bash launch/local.sh setup; pip install '.[tpu]')"
  out="$(mktemp -d)"
  note "checking $config on $accel: t5video compile (this machine, no TPU needed)"
  (cd "$ROOT" && "$t5video" compile --config "$config" "$@" --topology "$accel" --json "$out/check.json") ||
    die "t5video compile failed for $config on $accel (see above); nothing was created"
  python3 - "$out/check.json" <<'PY' || die "$config does not fit on $accel (see the advice above); nothing was created"
import json, sys
bad = [r for r in json.load(open(sys.argv[1])) if not r["fits"]]
for r in bad:
  print(f"{r['stage']}: {r['need_per_chip_bytes'] / 2**30:.1f} GiB per chip of "
        f"{r['hbm_per_chip_bytes'] / 2**30:.0f}: {r['advice']}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
  rm -rf "$out"
}

cmd_setup() {
  local name="${T5VIDEO_TPU_NAME:-}" zone="${T5VIDEO_TPU_ZONE:-}" repo="" ref="HEAD"
  local dir="$REMOTE_DIR_DEFAULT" python="python3.11" ref_given=0
  while (($#)); do
    [[ $1 == --*=* ]] && set -- "${1%%=*}" "${1#*=}" "${@:2}"
    case "$1" in
      -h | --help) usage_setup; exit 0 ;;
      --name) name="$(value "$@")"; shift 2 ;;
      --zone) zone="$(value "$@")"; shift 2 ;;
      --repo) repo="$(value "$@")"; shift 2 ;;
      --ref) ref="$(value "$@")"; ref_given=1; shift 2 ;;
      --dir) dir="$(value "$@")"; shift 2 ;;
      --python) python="$(value "$@")"; shift 2 ;;
      *) die "unknown argument '$1'" ;;
    esac
  done
  check_name "$name"
  check_zone "$zone"
  check_remote_dir "$dir"
  [[ $python =~ ^python3(\.[0-9]+)?$ ]] || die "--python '$python': a name like python3.11 or python3.12"
  ((ref_given)) && [[ -z $repo ]] && die "--ref needs --repo"
  local pin
  pin="$(jax_pin)"

  local d py
  d="$(shq "$dir")"
  py="$(shq "$python")"
  local fetch
  if [[ -n $repo ]]; then
    fetch="if [ ! -d $d/.git ]; then git clone --quiet $(shq "$repo") $d; fi"
    fetch+=" && git -C $d fetch --quiet origin $(shq "$ref")"
    fetch+=" && git -C $d checkout --quiet --force --detach FETCH_HEAD"
  else
    fetch="mkdir -p $d && tar -xzf $TARBALL_REMOTE -C $d && rm -f $TARBALL_REMOTE"
  fi
  # The venv's interpreter: apt installs it when the image lacks it (Ubuntu 22.04
  # images ship Python 3.10; jax needs 3.11 or newer).
  local install="{ command -v $py >/dev/null || { sudo apt-get update -qq"
  install+=" && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $py $py-venv; }; }"
  install+=" && cd $d"
  install+=" && { [ -x .venv/bin/python ] || $py -m venv .venv; }"
  install+=" && .venv/bin/python -m pip install -q --upgrade pip"
  install+=" && .venv/bin/python -m pip install -q -e \".[tpu]\" \"jax[tpu]==$pin\""
  install+=" && .venv/bin/python -c \"import jax, flax, t5video; print(jax.__version__, flax.__version__)\""
  install+=" && echo \"\$(hostname): t5video ready in ~/$dir\""

  if [[ -z $repo ]]; then
    local tarball="${TMPDIR:-/tmp}/t5video-src-$name.tar.gz"
    execute tar -czf "$tarball" -C "$ROOT" --exclude=./.git --exclude=./.venv \
      --exclude=./data_cache --exclude=./runs --exclude=__pycache__ \
      --exclude=.ipynb_checkpoints --exclude='*.egg-info' .
    local scp=(compute tpus tpu-vm scp "$tarball" "$name:$TARBALL_REMOTE" "--zone=$zone" --worker=all)
    ((INTERNAL_IP)) && scp+=(--internal-ip)
    gcloud_cmd "${scp[@]}"
  fi
  ssh_cmd "$name" "$zone" all "set -euo pipefail; $fetch && $install"
}

cmd_run() {
  local name="${T5VIDEO_TPU_NAME:-}" zone="${T5VIDEO_TPU_ZONE:-}" config="" workdir=""
  local dir="$REMOTE_DIR_DEFAULT" log_name="train" foreground=0
  local overrides=() envs=()
  while (($#)); do
    case "$1" in
      --config.*) overrides+=("$1"); shift; continue ;;
      --) shift; overrides+=("$@"); break ;;
    esac
    [[ $1 == --*=* ]] && set -- "${1%%=*}" "${1#*=}" "${@:2}"
    case "$1" in
      -h | --help) if [[ $CMD == resume ]]; then usage_resume; else usage_run; fi; exit 0 ;;
      --name) name="$(value "$@")"; shift 2 ;;
      --zone) zone="$(value "$@")"; shift 2 ;;
      --config) config="$(value "$@")"; shift 2 ;;
      --workdir) workdir="$(value "$@")"; shift 2 ;;
      --env) envs+=("$(value "$@")"); shift 2 ;;
      --log-name) log_name="$(value "$@")"; shift 2 ;;
      --dir) dir="$(value "$@")"; shift 2 ;;
      --foreground) foreground=1; shift ;;
      *) die "unknown argument '$1' (t5video train flags go after --)" ;;
    esac
  done
  check_name "$name"
  check_zone "$zone"
  check_remote_dir "$dir"
  check_log_name "$log_name"
  [[ -n $config ]] || die "--config is required, e.g. configs/captiont5/synthetic.py"
  local config_file="${config%%:*}"
  [[ -f $ROOT/$config_file ]] ||
    die "--config '$config_file' is not a file of this repository ($ROOT); the workers run the copy made by setup"
  [[ -n $workdir ]] || die "--workdir is required: a bucket path such as gs://my-bucket/t5video/run1"
  [[ $workdir =~ ^gs://[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9](/[^[:space:]]*)?$ ]] ||
    die "--workdir '$workdir' must be a gs://BUCKET/PATH that every worker can write (each worker has its own disk)"
  local kv
  for kv in ${envs[@]+"${envs[@]}"}; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$kv' is not KEY=VALUE"
  done

  local d log exports train
  d="$(shq "$dir")"
  log="$LOG_DIR/$log_name.log"
  exports="export T5VIDEO_DISTRIBUTED=1 PYTHONUNBUFFERED=1"
  for kv in ${envs[@]+"${envs[@]}"}; do
    exports+=" ${kv%%=*}=$(shq "${kv#*=}")"
  done
  train="$(shjoin .venv/bin/t5video train --config "$config" --workdir "$workdir" ${overrides[@]+"${overrides[@]}"})"
  # The bracket keeps pgrep from matching this very command line.
  local remote="set -euo pipefail; cd $d"
  remote+=" && { [ -x .venv/bin/t5video ] || { echo \"\$(hostname): no $dir/.venv: run setup first\" >&2; exit 1; }; }"
  remote+=" && { ! pgrep -f \"bin/t5video[ ]train\" >/dev/null || { echo \"\$(hostname): t5video train is already running (stop it first)\" >&2; exit 1; }; }"
  remote+=" && mkdir -p \"$LOG_DIR\""
  remote+=" && echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) \$(hostname): $CMD\" >> \"$log\""
  remote+=" && $exports"
  if ((foreground)); then
    remote+=" && $train 2>&1 | tee -a \"$log\""
  else
    remote+=" && { nohup setsid $train >> \"$log\" 2>&1 < /dev/null & }"
    remote+=" && echo \"\$(hostname): started (pid \$!), log ~/t5video-logs/$log_name.log\""
  fi
  ssh_cmd "$name" "$zone" all "$remote"
  if ((!foreground)) && ((!DRY_RUN)); then
    note "follow it with: bash launch/tpu_vm.sh logs --name $name --zone $zone"
  fi
}

cmd_logs() {
  local name="${T5VIDEO_TPU_NAME:-}" zone="${T5VIDEO_TPU_ZONE:-}" worker="0" lines="100"
  local follow=1 log_name="train" fetch="" num_workers=""
  while (($#)); do
    [[ $1 == --*=* ]] && set -- "${1%%=*}" "${1#*=}" "${@:2}"
    case "$1" in
      -h | --help) usage_logs; exit 0 ;;
      --name) name="$(value "$@")"; shift 2 ;;
      --zone) zone="$(value "$@")"; shift 2 ;;
      --worker) worker="$(value "$@")"; shift 2 ;;
      --lines) lines="$(value "$@")"; shift 2 ;;
      --no-follow) follow=0; shift ;;
      --log-name) log_name="$(value "$@")"; shift 2 ;;
      --fetch) fetch="$(value "$@")"; shift 2 ;;
      --num-workers) num_workers="$(value "$@")"; shift 2 ;;
      *) die "unknown argument '$1'" ;;
    esac
  done
  check_name "$name"
  check_zone "$zone"
  check_log_name "$log_name"
  [[ $worker == all || $worker =~ ^[0-9]+$ ]] || die "--worker '$worker': a worker index (0, 1, ...) or all"
  [[ $lines =~ ^[0-9]+$ ]] || die "--lines '$lines' is not a number"
  [[ -z $num_workers || $num_workers =~ ^[1-9][0-9]*$ ]] || die "--num-workers '$num_workers' is not a positive number"

  if [[ -n $fetch ]]; then
    [[ $fetch == / ]] || fetch="${fetch%/}"
    local workers=()
    if [[ $worker == all ]]; then
      [[ -n $num_workers ]] || die "--fetch with --worker all needs --num-workers K (the hosts of the slice, e.g. 4 for v4-32)"
      local i
      for ((i = 0; i < num_workers; i++)); do workers+=("$i"); done
    else
      workers=("$worker")
    fi
    execute mkdir -p "$fetch"
    local w
    for w in "${workers[@]}"; do
      local scp=(compute tpus tpu-vm scp "$name:t5video-logs/$log_name.log"
                 "$fetch/$log_name-worker$w.log" "--zone=$zone" "--worker=$w")
      ((INTERNAL_IP)) && scp+=(--internal-ip)
      gcloud_cmd "${scp[@]}"
    done
    return 0
  fi
  local tail_flags="-n $lines"
  ((follow)) && tail_flags+=" -F"
  ssh_cmd "$name" "$zone" "$worker" \
    "tail $tail_flags \"$LOG_DIR/$log_name.log\" | sed -u \"s/^/[\$(hostname)] /\""
}

cmd_stop() {
  local name="${T5VIDEO_TPU_NAME:-}" zone="${T5VIDEO_TPU_ZONE:-}"
  while (($#)); do
    [[ $1 == --*=* ]] && set -- "${1%%=*}" "${1#*=}" "${@:2}"
    case "$1" in
      -h | --help) usage_stop; exit 0 ;;
      --name) name="$(value "$@")"; shift 2 ;;
      --zone) zone="$(value "$@")"; shift 2 ;;
      *) die "unknown argument '$1'" ;;
    esac
  done
  check_name "$name"
  check_zone "$zone"
  ssh_cmd "$name" "$zone" all \
    "if pkill -TERM -f \"bin/t5video[ ]train\"; then echo \"\$(hostname): SIGTERM sent\"; else echo \"\$(hostname): no t5video train running\"; fi"
}

cmd_status_or_delete() {
  local name="${T5VIDEO_TPU_NAME:-}" zone="${T5VIDEO_TPU_ZONE:-}" queued=0
  while (($#)); do
    [[ $1 == --*=* ]] && set -- "${1%%=*}" "${1#*=}" "${@:2}"
    case "$1" in
      -h | --help) if [[ $CMD == status ]]; then usage_status; else usage_delete; fi; exit 0 ;;
      --name) name="$(value "$@")"; shift 2 ;;
      --zone) zone="$(value "$@")"; shift 2 ;;
      --queued) queued=1; shift ;;
      *) die "unknown argument '$1'" ;;
    esac
  done
  check_name "$name"
  check_zone "$zone"
  local kind=tpu-vm
  ((queued)) && kind="queued-resources"
  if [[ $CMD == status ]]; then
    gcloud_cmd compute tpus "$kind" describe "$name" "--zone=$zone"
  elif ((queued)); then
    gcloud_cmd compute tpus queued-resources delete "$name" "--zone=$zone" --force --quiet
  else
    gcloud_cmd compute tpus tpu-vm delete "$name" "--zone=$zone" --quiet
  fi
}

# =============================================================================
# main
# =============================================================================

CMD=""
while (($#)); do
  [[ $1 == --*=* ]] && set -- "${1%%=*}" "${1#*=}" "${@:2}"
  case "$1" in
    -h | --help | help) usage_main; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --project) PROJECT="$(value "$@")"; shift 2 ;;
    --internal-ip) INTERNAL_IP=1; shift ;;
    -*) die "unknown global flag '$1'" ;;
    *) CMD="$1"; shift; break ;;
  esac
done
[[ -n $CMD ]] || { usage_main >&2; exit 2; }
if [[ -n $PROJECT && ! $PROJECT =~ ^[a-z][-a-z0-9:.]{4,62}$ ]]; then
  die "--project '$PROJECT' is not a project id"
fi
if ((!DRY_RUN)) && ! command -v gcloud >/dev/null; then
  case " $* " in
    *" -h "* | *" --help "*) ;;
    *) die "gcloud is not installed: https://cloud.google.com/sdk/docs/install (or use --dry-run)" ;;
  esac
fi

case "$CMD" in
  create) cmd_create "$@" ;;
  setup) cmd_setup "$@" ;;
  run | resume) cmd_run "$@" ;;
  logs) cmd_logs "$@" ;;
  stop) cmd_stop "$@" ;;
  status | delete) cmd_status_or_delete "$@" ;;
  *) C="$CMD"; CMD=""; die "unknown command '$C' (create, setup, run, resume, logs, stop, status, delete)" ;;
esac
