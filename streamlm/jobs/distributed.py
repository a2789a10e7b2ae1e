"""Scoring many inputs on a Dask cluster: one task per input file or shard.

Each task streams its whole input with carried state, exactly as the local
scorer (:func:`streamlm.jobs.score.score`) does for that input alone. The model is
loaded once per worker process from its path (a worker-local cache keyed by
path, size, mtime and checksum), never pickled into tasks: a task ships only
strings and numbers.

Totals merge exactly: every task returns its float64 sums (log-probability,
log-probability of the non-OOV tokens, tokens, OOVs) and the client adds them
with ``math.fsum``. Perplexities are computed once, from the merged sums.

With ``output_dir``, each input gets ``<output_dir>/<name>.parquet`` (its
per-unit scores) and then ``<name>.done.json`` (its sums, the model checksum,
the input's size and mtime, and the Parquet file's sha256), both written
atomically, the ``.done.json`` last, so it marks a finished shard. A rerun
skips every input whose ``.done.json`` is present and verifies (same model,
same options, input unchanged, Parquet checksum right) and scores the rest:
like re-running only the missing outputs of a job array. A failing input is
reported and the others still finish.

``address`` is a scheduler address (``tcp://host:8786``) or ``local:N`` for a
LocalCluster of N single-threaded worker processes on this machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streamlm.data.atomic import atomic_open, sha256_file
from streamlm.data.inputs import fingerprint
from streamlm.errors import StreamlmError, UsageError
from streamlm.jobs.metrics import summarize
from streamlm.options import ScoreOptions

log = logging.getLogger("streamlm.jobs.distributed")

DONE_FORMAT = "streamlm-shard-scores"
DONE_VERSION = 1


def _require_dask():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UsageError(
            "--dask needs the optional Dask extra: pip install 'streamlm[dask]'") from None


# ------------------------------------------------------------ worker side --
_MODEL_CACHE: dict[tuple, object] = {}
_MODEL_LOCK = threading.Lock()


def _file_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.abspath(path), st.st_size, st.st_mtime_ns)


def _cached_model(path: str):
    """Load the model once per worker process (re-load only if the file changed)."""
    from streamlm.nn.params import load_model

    key = _file_key(path)
    with _MODEL_LOCK:
        m = _MODEL_CACHE.get(key)
        if m is None:
            m = load_model(path)
            _MODEL_CACHE.clear()  # one model per worker
            _MODEL_CACHE[key] = m
            log.info("worker %d loaded model %s", os.getpid(), path)
        return m


def output_name(path: str) -> str:
    """The output stem of one input: its base name plus a short hash of its absolute path,
    so two inputs with the same base name never collide."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(path))) or "input"
    tag = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
    return f"{base}.{tag}"


def score_one(model_path: str, input_path: str, options: dict,
              out_parquet: str | None, done_json: str | None) -> dict:
    """Score one input on a worker. Returns its sums, or ``{"error": message}``.

    ``options``: ScoreOptions as JSON (a task ships only strings and numbers).
    Never raises for a bad input: the error is returned so the other tasks go on.
    """
    from streamlm.jobs.score import score

    try:
        opts = ScoreOptions(**options)
        model = _cached_model(model_path)
        # the client said what it could not check of the vocabulary (_check_vocabularies)
        res = score(model, [input_path], opts.replace(level=opts.level if out_parquet else None),
                    output=out_parquet, _vocab_warned=True)
        s = res.summary["inputs"][0]
        sums = {"tokens": int(s["tokens"]), "oov": int(s["oov"]),
                "logprob": float(s["logprob"]),
                "logprob_excl_oov": float(s["logprob_excl_oov"]),
                "words": int(s["words"]), "bytes": int(s["bytes"])}
        record = {
            "format": DONE_FORMAT, "format_version": DONE_VERSION,
            "input": fingerprint(input_path),
            "model_sha256": model.meta.get("sha256"),
            "options": opts.result_options(),
            "sums": sums,
            "parquet": os.path.basename(out_parquet) if out_parquet else None,
            "parquet_sha256": sha256_file(out_parquet) if out_parquet else None,
            "seconds": round(res.seconds, 3),
            "worker_pid": os.getpid(),
        }
        if done_json:
            with atomic_open(done_json, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1)
        return {"path": input_path, "sums": sums, "skipped": False,
                "seconds": res.seconds}
    except StreamlmError as e:
        return {"path": input_path, "error": str(e)}
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else f"{input_path}: "
        return {"path": input_path, "error": f"{where}{e.strerror or e}"}
    except Exception as e:  # a bug; still reported per shard, the others finish
        return {"path": input_path, "error": f"{input_path}: {type(e).__name__}: {e}"}


# ------------------------------------------------------------ client side --
@dataclass
class DaskScoreResult:
    summary: dict
    failed: list[dict] = field(default_factory=list)
    skipped: int = 0


def _verify_done(done: Path, parquet: Path, input_path: str, model_sha: str,
                 options: ScoreOptions) -> dict | None:
    """The sums recorded in ``done`` if it proves the shard is finished, else None."""
    try:
        rec = json.loads(done.read_text(encoding="utf-8"))
        if rec.get("format") != DONE_FORMAT or rec.get("model_sha256") != model_sha:
            return None
        if rec.get("options") != options.result_options():
            return None
        if rec.get("input") != fingerprint(input_path):
            return None
        if not parquet.exists() or sha256_file(parquet) != rec.get("parquet_sha256"):
            return None
        s = rec["sums"]
        return {"tokens": int(s["tokens"]), "oov": int(s["oov"]),
                "logprob": float(s["logprob"]),
                "logprob_excl_oov": float(s["logprob_excl_oov"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _client(address: str):
    """A distributed Client for ``address``; ``local:N`` starts a LocalCluster."""
    import dask
    from distributed import Client, LocalCluster

    m = re.fullmatch(r"local(?::(\d+))?", address.strip())
    if m:
        from streamlm.compute import cpus

        n = int(m.group(1) or cpus.available_cpus())
        if n < 1:
            raise UsageError(f"--dask {address}: need at least one worker")
        # one thread per worker process, and no oversubscription inside it
        env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "NUMBA_NUM_THREADS": "1", "STREAMLM_THREADS": "1"}
        with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
        return Client(cluster), cluster
    try:
        return Client(address, timeout="30s"), None
    except OSError as e:
        raise UsageError(f"--dask {address}: cannot reach the scheduler ({e})") from None


def _check_vocabularies(model, model_path: str, inputs: list[str],
                        options: ScoreOptions) -> Callable[[], None]:
    """The vocabulary checks of the local scorer (streamlm.data.inputs.open_source), here on
    the client, before any task: token ids of another vocabulary than the model's fail
    the job (VocabularyMismatch). Returns what says, once the job is done, on the
    client where it is seen, the one warning line for ids with none beside them to
    check (the tasks do not repeat it). Any other fault of an input is left to its
    task, reported with the others."""
    from streamlm.data.inputs import open_source
    from streamlm.data.manifest import warn_unchecked
    from streamlm.errors import VocabularyMismatch

    vocab = model.vocabulary()
    owner = f"the model {model_path}"
    unchecked = []
    for k, p in enumerate(inputs):
        try:
            src = open_source(k, p, vocab, docs=False, errors=options.errors,
                              column=options.column, text_column=options.text_column,
                              text_field=options.text_field, owner=owner)
        except VocabularyMismatch:
            raise
        except (StreamlmError, OSError):
            continue
        unchecked += src.unchecked
    return lambda: warn_unchecked(unchecked, owner)


def score_dask(model_path: str, inputs: Sequence[str], address: str,
               options: ScoreOptions | None = None, *, output_dir: str | None = None,
               progress: Callable[[dict], None] | None = None,
               **option_values) -> DaskScoreResult:
    """Score ``inputs`` as one Dask task each; merge the totals exactly.

    ``options`` (or its fields as keywords) as for :func:`streamlm.jobs.score.score`;
    the per-input records of ``--output DIR`` are at ``options.level`` (default: doc
    for documents with ``reset`` auto or doc, else line). The engine is always numba
    (a worker scores whole inputs). Returns
    the merged summary (the same keys as :func:`streamlm.jobs.score.score`, with
    ``inputs`` per input) and the list of failed inputs.
    """
    _require_dask()
    from streamlm.nn.params import load_model

    options = options or ScoreOptions()
    if option_values:
        options = options.replace(**option_values)
    options = options.replace(engine="numba")
    if options.mix is not None:
        raise UsageError("--mix scores in one process: run it without --dask")

    if not inputs:
        raise UsageError("no inputs given")
    if "-" in inputs:
        raise UsageError("--dask cannot read stdin ('-'): give files")
    from streamlm.data.inputs import expand_inputs

    inputs = expand_inputs([os.fspath(p) for p in inputs], column=options.column,
                           text_column=options.text_column)
    model = load_model(model_path)  # fail fast, here, on a bad model
    warn_vocabularies = _check_vocabularies(model, model_path, inputs, options)
    model_sha = model.meta.get("sha256")
    model_path = os.path.abspath(model_path)
    out = Path(output_dir) if output_dir else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise UsageError(f"{out}: --output with --dask must be a directory")
        out.mkdir(parents=True, exist_ok=True)

    results: dict[int, dict] = {}
    todo: list[int] = []
    names = [output_name(p) for p in inputs]
    if len(set(names)) != len(names):
        raise UsageError("the same input is given twice")
    for i, p in enumerate(inputs):
        if out is not None:
            sums = _verify_done(out / f"{names[i]}.done.json", out / f"{names[i]}.parquet",
                                p, model_sha, options) if os.path.exists(p) else None
            if sums is not None:
                results[i] = {"path": p, "sums": sums, "skipped": True}
                continue
        todo.append(i)
    skipped = len(results)
    if skipped:
        log.info("%d of %d inputs already scored (verified outputs), skipping them",
                 skipped, len(inputs))

    if todo:
        from distributed import as_completed

        client, cluster = _client(address)
        try:
            futs = {}
            for i in todo:
                pq = str(out / f"{names[i]}.parquet") if out else None
                dj = str(out / f"{names[i]}.done.json") if out else None
                f = client.submit(score_one, model_path, os.path.abspath(inputs[i]),
                                  options.to_json(), pq, dj,
                                  key=f"streamlm-score-{names[i]}-{model_sha[:8]}", pure=False)
                futs[f] = i
            done_tokens = 0
            for n, f in enumerate(as_completed(futs), 1):
                i = futs[f]
                try:
                    r = f.result()
                except Exception as e:  # the task itself died (worker lost, ...)
                    r = {"path": inputs[i], "error": f"{inputs[i]}: task failed: {e}"}
                r["path"] = inputs[i]
                results[i] = r
                if "sums" in r:
                    done_tokens += r["sums"]["tokens"]
                if progress is not None:
                    progress({"done": n + skipped, "total": len(inputs), "tokens": done_tokens,
                              "path": inputs[i], "error": r.get("error")})
        finally:
            client.close()
            if cluster is not None:
                cluster.close()

    per, failed = [], []
    sums = {"tokens": 0, "oov": 0, "words": 0, "bytes": 0}
    counted = True  # every input has words and bytes (a .done.json of an older streamlm not)
    lp, lpx = [], []
    for i in range(len(inputs)):
        r = results[i]
        if "error" in r:
            failed.append({"path": inputs[i], "error": r["error"]})
            continue
        s = r["sums"]
        sums["tokens"] += s["tokens"]
        sums["oov"] += s["oov"]
        lp.append(s["logprob"])
        lpx.append(s["logprob_excl_oov"])
        if "words" in s:
            sums["words"] += s["words"]
            sums["bytes"] += s["bytes"]
        counted = counted and "words" in s
        d = {"path": inputs[i]}
        d.update(summarize(s["tokens"], s["oov"], s["logprob"],
                           s["logprob"] - s["logprob_excl_oov"], s.get("words"), s.get("bytes")))
        d["skipped"] = bool(r.get("skipped"))
        per.append(d)
    total_lp, total_lpx = math.fsum(lp), math.fsum(lpx)
    summary = summarize(sums["tokens"], sums["oov"], total_lp, total_lp - total_lpx,
                        *((sums["words"], sums["bytes"]) if counted else ()))
    warn_vocabularies()
    summary["inputs"] = per
    summary["failed"] = failed
    summary["skipped"] = skipped
    summary["model"] = model_path
    summary["dask"] = address
    return DaskScoreResult(summary, failed, skipped)
