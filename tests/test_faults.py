"""Fault injection: kill -9 at random points, a full disk, concurrent writers.

After every SIGKILL: no output is torn (absent, or complete and valid), the
same command run again completes, and its result equals an uninterrupted
run (bitwise for training weights, 1e-9 for scoring totals). Every kill must
land while work was left: a run that finished first is started again with an
earlier kill, and does not count.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import KILLED, command, kill_when, markov_text, run

from streamlm.data.shards import open_dataset
from streamlm.errors import StreamlmError
from streamlm.jobs.prepare import prepare
from streamlm.nn.params import ModelConfig, Params, load_model, save_model

REPO = Path(__file__).resolve().parents[1]
KILLS = 3
WORDS = [f"w{i}" for i in range(60)]


def _text(n_lines, seed):
    return markov_text(n_lines, seed, WORDS, chain=0, lengths=(2, 14))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    (d / "big.txt").write_text(_text(120_000, 1))  # ~1M tokens: prepare takes a moment
    (d / "train.txt").write_text(_text(3000, 2))
    prepare([str(d / "train.txt")], d / "train")
    vocab = [w for w in (d / "train" / "vocab.txt").read_text().split("\n") if w]
    p = Params.init(ModelConfig(V=len(vocab), D=16, H=32), seed=3)
    p["affine_b"][...] = np.random.default_rng(0).standard_normal(len(vocab))
    save_model(d / "model.npz", p, vocab)
    return d


def _no_torn_files(directory: Path):
    """Every file a reader would accept is complete: no temp file is taken for output."""
    for f in directory.rglob("*"):
        if f.is_file() and f.suffix == ".parquet" and not f.name.startswith("."):
            pq.read_metadata(f)  # a published Parquet file is whole
        if f.is_file() and f.suffix == ".npz" and not f.name.startswith("."):
            with np.load(f, allow_pickle=False) as z:
                for k in z.files:
                    z[k]


def _kill_mid_work(argv, ready, mid_work, delays, reset):
    """Kill ``argv`` once ``ready()`` holds plus the next delay, until the kill lands
    with ``mid_work()`` true (work was left); ``reset()`` clears a run that
    finished first. Returns the delay that landed."""
    seen = []
    for delay in delays:
        rc = kill_when(argv, ready, delay=delay)
        landed = rc == KILLED and mid_work()
        seen.append((round(float(delay), 3), rc, landed))
        if landed:
            return delay
        reset()
    pytest.fail(f"no kill of {argv[0]} landed mid-work: (delay, exit code, mid-work) {seen}")


def _shrinking(first: float, n: int = 6):
    return [first / 2 ** k for k in range(n)]


# ------------------------------------------------------------------ kill -9 --
@pytest.mark.slow
def test_kill_prepare_at_random_points(corpus, tmp_path):
    ref_dir = tmp_path / "ref"
    t0 = time.monotonic()
    assert run("prepare", corpus / "big.txt", "--out", ref_dir,
               "--shard-tokens", "200000").returncode == 0
    took = time.monotonic() - t0
    want = json.loads((ref_dir / "manifest.json").read_text())
    for k, frac in enumerate(np.random.default_rng(1).uniform(0.1, 0.8, size=KILLS)):
        out = tmp_path / f"run{k}"
        argv = ["prepare", corpus / "big.txt", "--out", out, "--shard-tokens", "200000"]
        _kill_mid_work(argv, lambda: True, lambda out=out: not (out / "manifest.json").exists(),
                       _shrinking(frac * took), lambda out=out: shutil.rmtree(out))
        with pytest.raises(StreamlmError):  # a reader refuses what is there
            open_dataset(out)
        assert run(*argv).returncode == 0
        got = json.loads((out / "manifest.json").read_text())
        assert [s["sha256"] for s in got["shards"]] == [s["sha256"] for s in want["shards"]]
        assert got["num_tokens"] == want["num_tokens"]
        open_dataset(out, verify=True)


def _train_args(out):
    return ["train", "--out", out, "--embed", "16", "--hidden", "16", "--batch", "8",
            "--bptt", "10", "--epochs", "3", "--optimizer", "adam", "--lr", "0.01",
            "--dropout", "0.2", "--tie-weights", "--seed", "5", "--checkpoint-every", "7",
            "--log-interval", "50", "--log", out.with_name("log.jsonl")]


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _log_records(path):
    return [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "elapsed_s")}
            for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_kill_train_at_random_points_resumes_bitwise(corpus, tmp_path):
    ref_out = tmp_path / "ref" / "m.npz"
    t0 = time.monotonic()
    r = run("train", corpus / "train", *_train_args(ref_out)[1:])
    assert r.returncode == 0, r.stderr
    took = time.monotonic() - t0
    want = _arrays(ref_out)
    want_ckpt = _arrays(ref_out.with_name("m.ckpt.npz"))
    total = json.loads(str(want_ckpt["meta"]))["batcher"]["time_idx"] // 10
    for k, frac in enumerate(np.random.default_rng(2).uniform(0.0, 0.6, size=KILLS)):
        out = tmp_path / f"run{k}" / "m.npz"
        ckpt = out.with_name("m.ckpt.npz")
        argv = ["train", corpus / "train", *_train_args(out)[1:]]

        def step(ckpt=ckpt):
            return json.loads(str(_arrays(ckpt)["meta"]))["batcher"]["time_idx"] // 10

        _kill_mid_work(argv, ckpt.exists, lambda: 0 < step() < total,
                       _shrinking(frac * took), lambda ckpt=ckpt: ckpt.unlink(missing_ok=True))
        _no_torn_files(out.parent)
        r = run(*argv, "--resume")
        assert r.returncode == 0, r.stderr
        assert "resumed from" in r.stderr
        # the best model, the final checkpoint (weights, moments, state) and the log
        for name, ref in (("m.npz", want), ("m.ckpt.npz", want_ckpt)):
            got = _arrays(out.with_name(name))
            assert got.keys() == ref.keys()
            for a in ref:
                if a != "meta":
                    assert got[a].tobytes() == ref[a].tobytes(), (k, name, a)
        assert str(_arrays(out)["meta"]) == str(want["meta"]).replace(
            str(ref_out.parent), str(out.parent))
        assert _log_records(out.with_name("log.jsonl")) == _log_records(
            ref_out.with_name("log.jsonl"))


@pytest.mark.slow
def test_kill_score_at_random_points_resumes_exactly(corpus, tmp_path):
    model = corpus / "model.npz"
    big = corpus / "big.txt"
    t0 = time.monotonic()
    r = run("score", model, big, "--json", "--engine", "numba", "--batch", "1",
            "--chunk-tokens", "256")
    assert r.returncode == 0, r.stderr
    took = time.monotonic() - t0
    want = json.loads(r.stdout)
    for k, frac in enumerate(np.random.default_rng(3).uniform(0.0, 0.6, size=KILLS)):
        ck = tmp_path / f"s{k}.ckpt"
        out = tmp_path / f"lines{k}.parquet"
        # small calls: the scoring itself (not start-up, not the output) takes the time
        argv = ["score", model, big, "--engine", "numba", "--checkpoint", ck,
                "--checkpoint-every", "20000", "--output", out, "--level", "line",
                "--batch", "1", "--chunk-tokens", "256"]

        def scored(ck=ck):
            with np.load(ck, allow_pickle=False) as z:
                return json.loads(str(z["meta"]))["inputs"][0]["scored"]

        def mid_work(out=out):
            return not out.exists() and scored() < want["tokens"]

        _kill_mid_work(argv, ck.exists, mid_work, _shrinking(frac * took),
                       lambda out=out: out.unlink(missing_ok=True))
        r = run(*argv, "--json")
        assert r.returncode == 0, r.stderr
        assert "resuming" in r.stderr
        got = json.loads(r.stdout)
        assert got["tokens"] == want["tokens"] and got["oov"] == want["oov"]
        assert math.isclose(got["logprob"], want["logprob"], rel_tol=1e-9)
        t = pq.read_table(out)
        assert t.num_rows == 120_000
        assert math.isclose(sum(t["logprob"].to_pylist()), want["logprob"], rel_tol=1e-9)
        assert not ck.exists()  # removed after success


def test_score_killed_before_its_first_checkpoint_restarts_the_spool(corpus, tmp_path):
    # A kill before the first checkpoint leaves spooled records that no
    # checkpoint counts; the rerun must not append to them (found by the
    # random-kill test above once scoring got faster).
    model = corpus / "model.npz"
    big = corpus / "big.txt"
    ck = tmp_path / "s.ckpt"
    out = tmp_path / "lines.parquet"
    spool = tmp_path / "s.ckpt.spool"
    spool.mkdir()
    (spool / "000000.bin").write_bytes(b"\x01" * 4096 * 7)  # stale records
    r = run("score", model, big, "--checkpoint", ck, "--output", out, "--level", "line",
            "--json")
    assert r.returncode == 0, r.stderr
    assert pq.read_table(out).num_rows == 120_000
    assert not ck.exists() and not spool.exists()


# --------------------------------------------------------------- full disk --
@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): " + r.stderr.decode().strip())
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(path: Path, leave: int):
    """Fill the filesystem at ``path`` until about ``leave`` bytes are free."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    with open(path / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_full_disk_keeps_previous_outputs(corpus, tmp_path):
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        # a score output and a trained model exist; then the disk fills up
        out = disk / "lines.jsonl"
        r = run("score", corpus / "model.npz", corpus / "train.txt", "--output", out,
                "--level", "line")
        assert r.returncode == 0, r.stderr
        before_out = out.read_bytes()
        model = disk / "m.npz"
        r = run("train", corpus / "train", "--out", model, "--embed", "8", "--hidden", "8",
                "--batch", "4", "--bptt", "5", "--epochs", "1", "--checkpoint-every", "0")
        assert r.returncode == 0, r.stderr
        before_model = model.read_bytes()
        ckpt = model.with_name("m.ckpt.npz")
        before_ckpt = ckpt.read_bytes() if ckpt.exists() else None
        fill_disk(disk, 2048)

        r = run("score", corpus / "model.npz", corpus / "train.txt", "--output", out,
                "--level", "line")
        assert r.returncode != 0 and "Traceback" not in r.stderr
        errs = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
        assert len(errs) == 1 and re.search(r"space|full", errs[0], re.I), r.stderr
        assert out.read_bytes() == before_out

        r = run("train", corpus / "train", "--out", model, "--embed", "8", "--hidden", "8",
                "--batch", "4", "--bptt", "5", "--epochs", "2", "--checkpoint-every", "0",
                *(["--resume"] if before_ckpt is not None else []))
        assert r.returncode != 0 and "Traceback" not in r.stderr
        errs = [ln for ln in r.stderr.splitlines() if "error" in ln.lower()]
        assert len(errs) == 1 and re.search(r"space|full", errs[0], re.I), r.stderr
        assert model.read_bytes() == before_model
        load_model(model)
        if before_ckpt is not None:
            assert ckpt.read_bytes() == before_ckpt
        assert not [p for p in disk.iterdir() if p.name.startswith(".")]  # no temp files


def test_save_model_oserror_keeps_old_file(tmp_path, monkeypatch):
    cfg = ModelConfig(V=4, D=2, H=3)
    path = tmp_path / "m.npz"
    save_model(path, Params.init(cfg, seed=0), ["<unk>", "<eos>", "a", "b"])
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", boom)
    with pytest.raises(OSError):
        save_model(path, Params.init(cfg, seed=1), ["<unk>", "<eos>", "a", "b"])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_a_failed_save_leaves_no_archive_open(tmp_path, monkeypatch):
    """A write that fails half-way (a full disk) closes the zip archive: numpy < 2.2's
    np.savez left it open, and when it was collected after its file was closed (at
    the exit of the CLI) it printed "Exception ignored ... Traceback" on stderr."""
    import gc
    import sys

    cfg = ModelConfig(V=4, D=2, H=3)
    real = np.lib.format.write_array
    written = []

    def full_after_one(f, a, *args, **kwargs):
        if written:
            raise OSError(28, "No space left on device")
        written.append(real(f, a, *args, **kwargs))

    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    monkeypatch.setattr(np.lib.format, "write_array", full_after_one)
    try:
        save_model(tmp_path / "m.npz", Params.init(cfg, seed=1), ["<unk>", "<eos>", "a", "b"])
    except OSError:
        pass
    else:
        raise AssertionError("the write did not fail")
    gc.collect()
    assert written and not ignored, [(u.exc_type, u.exc_value) for u in ignored]
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------- concurrent writers --
def test_two_scorers_same_output_never_mix(corpus, tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text(_text(20000, 7))
    b.write_text(_text(15000, 8))
    out = tmp_path / "lines.jsonl"
    want = {}
    for name, src in (("a", a), ("b", b)):
        o = tmp_path / f"want-{name}.jsonl"
        assert run("score", corpus / "model.npz", src, "--output", o, "--level", "line",
                   "--engine", "numba").returncode == 0
        want[name] = o.read_bytes()
    procs = [subprocess.Popen(command("score", corpus / "model.npz", src, "--output", out,
                                  "--level", "line", "--engine", "numba"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for src in (a, b)]
    rcs = [p.wait(timeout=300) for p in procs]
    assert 0 in rcs
    got = out.read_bytes()
    # one complete file from one writer, with its own input path, never a mix
    assert got in (want["a"], want["b"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lines")]


# ---------------------------------------------------------------- security --
def test_no_code_path_unpickles():
    src = "\n".join(p.read_text() for p in (REPO / "streamlm").glob("*.py"))
    assert "import pickle" not in src and "pickle.load" not in src
    assert "allow_pickle=True" not in src
    for call in re.findall(r"np\.load\([^)]*\)", src):
        assert "allow_pickle=False" in call, call


def test_manifest_paths_never_escape(corpus, tmp_path):
    d = tmp_path / "prep"
    prepare([str(corpus / "train.txt")], d)
    outside = tmp_path / "outside.parquet"
    m = json.loads((d / "manifest.json").read_text())
    (d / m["shards"][0]["file"]).rename(outside)
    m["shards"][0]["file"] = "../outside.parquet"
    (d / "manifest.json").write_text(json.dumps(m))
    r = run("score", corpus / "model.npz", d)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "outside" in r.stderr and "manifest" in r.stderr
