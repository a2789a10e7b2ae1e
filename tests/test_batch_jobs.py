"""What a batch job sees: exit codes, signals, --threads, and outputs checked before the work.

Everything here runs the installed ``streamlm`` console script in a subprocess
(tests/helpers.py ``script``), as a job array or a ``train && score`` chain
would: CliRunner runs the app in-process and hid two of these defects (typer
returns, not raises, the exit code of a command outside its standalone mode).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_error_line, markov_text, script

from streamlm.compute import cpus
from streamlm.jobs.prepare import prepare
from streamlm.nn.params import ModelConfig, Params, save_model

WORDS = [f"w{i}" for i in range(50)]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp("jobs")
    block = markov_text(4000, 1, WORDS, lengths=(2, 14))
    (d / "big.txt").write_text(block * 25)  # ~800k tokens: a second or more at batch 1
    (d / "small.txt").write_text(markov_text(200, 2, WORDS))
    (d / "train.txt").write_text(markov_text(3000, 3, WORDS))
    prepare([str(d / "train.txt")], d / "train")
    vocab = [w for w in (d / "train" / "vocab.txt").read_text().split("\n") if w]
    p = Params.init(ModelConfig(V=len(vocab), D=16, H=32), seed=3)
    p["affine_b"][...] = np.random.default_rng(0).standard_normal(len(vocab))
    save_model(d / "model.npz", p, vocab)
    return d


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(script(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, COLUMNS="200"))


def _wait_for(cond, p: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not cond():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.01)


def _has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds ``path`` open (Linux: its /proc/PID/fd links)."""
    fd = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        return any(os.readlink(fd / n) == os.path.realpath(path) for n in os.listdir(fd))
    return False


# ----------------------------------------------------------------- signals --
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_exits_130_or_143_says_so_and_the_same_command_resumes(job, tmp_path, sig,
                                                                         code):
    ck, out = tmp_path / "s.ckpt", tmp_path / "lines.jsonl"
    argv = ["score", job / "model.npz", job / "big.txt", "--engine", "numba", "--batch", "1",
            "--chunk-tokens", "256", "--checkpoint", ck, "--checkpoint-every", "20000",
            "--output", out, "--level", "line", "--json", "-q"]
    p = _start(*argv)
    _wait_for(ck.exists, p)  # a checkpoint was written: there is something to resume
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == code, stderr
    name = signal.Signals(sig).name
    assert_one_error_line(p.returncode, stderr, f"interrupted by {name} while scoring",
                          f"the same command resumes from {ck}")
    assert stdout == ""  # no summary: the job did not finish
    assert not out.exists()  # no partial output
    assert ck.exists() and (tmp_path / "s.ckpt.spool").is_dir()
    r = subprocess.run(script(*argv), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = subprocess.run(script("score", job / "model.npz", job / "big.txt", "--engine",
                                 "numba", "--json", "-q"), capture_output=True, text=True)
    got, want = json.loads(r.stdout), json.loads(want.stdout)
    assert got["tokens"] == want["tokens"]
    assert math.isclose(got["logprob"], want["logprob"], rel_tol=1e-9)
    assert len(out.read_text().splitlines()) == len((job / "big.txt").read_text().splitlines())


def test_an_interrupted_training_exits_130_and_says_resume(job, tmp_path):
    out = tmp_path / "m.npz"
    ck = tmp_path / "m.ckpt.npz"
    argv = ["train", job / "train", "--out", out, "--embed", "8", "--hidden", "8", "--batch",
            "4", "--bptt", "5", "--epochs", "4", "--checkpoint-every", "20", "-q"]
    p = _start(*argv)
    _wait_for(ck.exists, p)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert_one_error_line(p.returncode, stderr, "interrupted by SIGINT while training",
                          f"the same command with --resume continues from {ck}")
    assert p.returncode == 130
    # a train && score chain stops here; the checkpoint is valid and resumes
    r = subprocess.run(script(*argv, "--resume"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.exists()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc")
def test_interrupted_before_any_checkpoint_says_it_starts_again(job, tmp_path):
    ck = tmp_path / "never.ckpt"
    p = _start("score", job / "model.npz", job / "big.txt", "--engine", "numba", "--batch",
               "1", "--chunk-tokens", "256", "--checkpoint", ck, "--checkpoint-every",
               "100000000", "-q")
    # signal once the job reads its input (it is scoring), not after a fixed sleep: a
    # fast machine scored all of big.txt within 1.5 s and exited 0 before the signal
    _wait_for(lambda: _has_open(p.pid, job / "big.txt"), p)
    p.send_signal(signal.SIGTERM)
    _, stderr = p.communicate(timeout=60)
    assert_one_error_line(p.returncode, stderr, "interrupted by SIGTERM",
                          "no checkpoint was written yet")
    assert p.returncode == 143
    assert not ck.exists() and not (tmp_path / "never.ckpt.spool").exists()


# -------------------------------------------------------- every exit code --
def test_success_is_0_and_bad_input_is_2(job, tmp_path):
    r = subprocess.run(script("score", job / "model.npz", job / "small.txt", "-q"),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(script("score", job / "model.npz", tmp_path / "missing.txt"),
                       capture_output=True, text=True)
    assert_one_error_line(r.returncode, r.stderr, "missing.txt")
    assert r.returncode == 2


def test_a_diverged_training_exits_3(job, tmp_path):
    r = subprocess.run(script("train", job / "train", "--out", tmp_path / "m.npz", "--embed",
                              "8", "--hidden", "8", "--optimizer", "sgd", "--lr", "1e30",
                              "--clip", "0", "--epochs", "1", "--dropout", "0", "-q"),
                       capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert_one_error_line(r.returncode, r.stderr, "streamlm: error:")


@pytest.mark.slow
def test_a_failed_dask_input_exits_4(job, tmp_path):
    pytest.importorskip("distributed")
    good = tmp_path / "part-0.txt"
    good.write_text((job / "small.txt").read_text())
    bad = tmp_path / "part-1.txt.gz"
    data = gzip.compress((job / "small.txt").read_bytes())
    bad.write_bytes(data[: len(data) // 2])  # truncated
    r = subprocess.run(script("score", job / "model.npz", good, bad, "--dask", "local:1",
                              "--output", tmp_path / "out", "-q"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert "1 of 2 inputs failed" in r.stderr
    assert "part-1.txt.gz" in r.stderr


@contextlib.contextmanager
def _read_only_dir(path: Path):
    """A directory nobody may write into: a read-only tmpfs (as root, whom permissions do
    not stop), else mode 0555."""
    path.mkdir()
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(path)],
                           capture_output=True)
        if r.returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs: " + r.stderr.decode().strip())
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


def test_an_output_that_cannot_be_written_fails_at_once_with_1(job, tmp_path):
    with _read_only_dir(tmp_path / "ro") as ro:
        t0 = time.monotonic()
        r = subprocess.run(script("train", job / "train", "--out", ro / "m.npz", "--embed",
                                  "8", "--hidden", "8", "--epochs", "50"),
                           capture_output=True, text=True)
        took = time.monotonic() - t0
        assert_one_error_line(r.returncode, r.stderr, f"{ro / 'm.npz'}: cannot write --out")
        assert r.returncode == 1
        assert took < 20  # before 50 epochs of training
        import importlib.util

        checks = [("--log", "--log")]
        if importlib.util.find_spec("matplotlib") is not None:  # (--plot needs it first)
            checks.append(("--plot", "--plot"))
        for opt, what in checks:
            r = subprocess.run(script("train", job / "train", "--out", tmp_path / "m.npz",
                                      opt, ro / "x", "--epochs", "50"),
                               capture_output=True, text=True)
            assert_one_error_line(r.returncode, r.stderr, f"{ro / 'x'}: cannot write {what}")
            assert r.returncode == 1
        for opt in ("--output", "--checkpoint"):
            r = subprocess.run(script("score", job / "model.npz", job / "small.txt", opt,
                                      ro / "s.jsonl"), capture_output=True, text=True)
            assert_one_error_line(r.returncode, r.stderr,
                                  f"{ro / 's.jsonl'}: cannot write {opt}")
            assert r.returncode == 1
        assert not (tmp_path / "m.npz").exists()


def test_a_full_disk_names_the_users_file_and_leaves_no_spool(job, tmp_path):
    from test_faults import fill_disk, small_tmpfs

    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        fill_disk(disk, 8192)
        for extra in ([], ["--checkpoint", disk / "c.ckpt"]):
            out = disk / "lines.jsonl"
            r = subprocess.run(script("score", job / "model.npz", job / "big.txt", "--output",
                                      out, "--level", "line", "-q", *extra),
                               capture_output=True, text=True)
            assert_one_error_line(r.returncode, r.stderr, f"{out}: cannot write",
                                  "No space left on device")
            assert r.returncode == 1
            assert sorted(p.name for p in disk.iterdir()) == ["filler"]


# ------------------------------------------------------------------ threads --
def test_threads_option_and_variable(job):
    base = ["score", job / "model.npz", job / "small.txt", "--engine", "numba", "--json",
            "-q"]
    got = {}
    for t in ("1", "2", "3"):
        r = subprocess.run(script(*base, "--threads", t), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        got[t] = json.loads(r.stdout)["logprob"]
    # (a full softmax's sums over V split by threads: the same to rounding, not bitwise)
    assert math.isclose(got["1"], got["2"], rel_tol=1e-9)
    assert math.isclose(got["1"], got["3"], rel_tol=1e-9)
    env = dict(os.environ, STREAMLM_THREADS="2")
    r = subprocess.run(script(*base), capture_output=True, text=True, env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["logprob"] == got["2"]
    for bad_env, bad_opt in (("0", None), ("many", None), (None, "0")):
        env = dict(os.environ)
        env.pop("STREAMLM_THREADS", None)
        if bad_env is not None:
            env["STREAMLM_THREADS"] = bad_env
        extra = ["--threads", bad_opt] if bad_opt else []
        r = subprocess.run(script(*base, *extra), capture_output=True, text=True, env=env)
        assert_one_error_line(r.returncode, r.stderr, "--threads")
        assert r.returncode == 2


def test_every_computing_command_takes_threads():
    for cmd in ("prepare", "train", "score", "query", "generate"):
        r = subprocess.run(script(cmd, "--help"), capture_output=True, text=True,
                           env=dict(os.environ, COLUMNS="200"))
        assert r.returncode == 0 and "--threads" in r.stdout, cmd


def test_default_threads_follow_the_affinity_mask():
    code = ("import os; os.sched_setaffinity(0, {0}); from streamlm.compute import cpus; "
            "print(cpus.threads())")
    env = dict(os.environ)
    env.pop("STREAMLM_THREADS", None)
    r = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"


@pytest.mark.parametrize("v2", [True, False])
def test_default_threads_follow_the_cgroup_quota(tmp_path, v2):
    root = tmp_path / "cg"
    proc = tmp_path / "cgroup"
    if v2:
        (root / "job").mkdir(parents=True)
        (root / "cpu.max").write_text("max 100000\n")
        (root / "job" / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
        proc.write_text("0::/job\n")
        assert cpus.cgroup_quota(str(root), str(proc)) == 1.5
    else:
        d = root / "cpu,cpuacct" / "slice"
        d.mkdir(parents=True)
        (d / "cpu.cfs_quota_us").write_text("300000\n")
        (d / "cpu.cfs_period_us").write_text("100000\n")
        (root / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
        (root / "cpu,cpuacct" / "cpu.cfs_period_us").write_text("100000\n")
        proc.write_text("5:cpu,cpuacct:/slice\n4:memory:/x\n")
        assert cpus.cgroup_quota(str(root), str(proc)) == 3.0
    proc.write_text("0::/\n" if v2 else "5:cpu,cpuacct:/\n")
    assert cpus.cgroup_quota(str(root), str(proc)) is None
