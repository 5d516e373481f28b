#!/usr/bin/env bash
# Set up t5video on this machine (a virtual environment with the pinned stack)
# and run one of its jobs.
#
#   bash launch/local.sh demo    # set up, then train + evaluate CaptionT5 on the synthetic default
#   bash launch/local.sh test    # set up, then run the test suite (what CI runs)
#   bash launch/local.sh setup   # only set up
#
# Environment: T5VIDEO_VENV (default .venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${T5VIDEO_VENV:-.venv}"
python="${PYTHON:-python3}"

setup() {
  local stamp="$venv/.t5video-installed"
  local want
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  echo "[t5video] setting up $venv (pinned stack; about 2-3 minutes on a fresh machine)" >&2
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # The CPU build of torch first, pinned exactly, so that nothing pulls the CUDA build.
  "$venv/bin/python" -m pip install -q "torch==2.13.0"
  "$venv/bin/python" -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
}

cmd="${1:-demo}"
shift || true
case "$cmd" in
  setup)
    setup ;;
  demo)
    setup
    exec "$venv/bin/t5video" train --config configs/captiont5/synthetic.py --workdir "${WORKDIR:-runs/demo}" "$@" ;;
  test)
    setup
    set +e
    # Two workers (this machine's cores). With loadgroup, tests/conftest.py keeps each test
    # file on one worker (its module-scoped fixtures are built once), except the files that
    # set XDIST_SPLIT = True: their tests are independent and heavy, and spread over both.
    "$venv/bin/python" -m pytest -q -ra -n "${T5VIDEO_TEST_WORKERS:-2}" --dist loadgroup "$@"
    rc=$?
    set -e
    # pytest exits 5 when it collected no test: that is a failure of the suite here.
    if [[ $rc -eq 5 ]]; then echo "[t5video] no tests were collected" >&2; exit 1; fi
    exit $rc ;;
  *)
    echo "usage: bash launch/local.sh {demo|test|setup} [args...]" >&2; exit 2 ;;
esac
