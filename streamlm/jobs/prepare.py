"""``streamlm prepare``: text -> a vocabulary and Parquet shards of token ids.

Prepared directory layout (format version 1)
--------------------------------------------
``vocab.txt``            one word per line, id order (see :mod:`streamlm.data.vocab`)
``shard-00000.parquet``  column ``token_id`` (int32, no nulls), row groups of
                         ``row_group_tokens`` (65,536) tokens; with ``docs="blank-line"``,
                         or when an input is documents (JSONL, Parquet rows: the
                         manifest says ``"docs": "rows"``), also a column ``doc_start``
                         (bool, True on a document's first token). Shards are plain
                         consecutive slices of the one token stream; every input file
                         starts a new document.
``tokenizer.model``      subword shards only (``--tokenizer``): the SentencePiece
                         model whose pieces, in id order, are ``vocab.txt``; the
                         manifest's ``tokenizer`` names it (``kind``, ``file``,
                         ``sha256``), and is null for words.
``manifest.json``        written last; a directory without it is not a dataset.

The ids are those of :mod:`streamlm.data.tokenizer`, the scorer's own rule. With
``tokenizer="sentencepiece"`` the first pass trains a SentencePiece model
(:func:`streamlm.data.subword.train_model`) on the inputs' normalised lines, streamed
from the same reader (SentencePiece keeps a uniform sample of ``sample_lines``),
instead of counting words; ``tokenizer=FILE.model`` uses an existing one.
``prepare`` writes everything into a hidden staging directory inside ``out_dir``,
then removes any old ``manifest.json``, moves the files in, deletes stale shards
and finally writes the new manifest atomically. On any error the staging
directory is removed, so an interrupted run leaves no manifest (and an old
dataset in the same directory stops being accepted once its manifest is gone).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from streamlm.data.atomic import atomic_open, atomic_path, sha256_file, umask
from streamlm.data.formats import (
    MANIFEST,
    ROW_GROUP_TOKENS,
    SHARD_GLOB,
    SHARDS_FORMAT,
    SHARDS_VERSION,
    TOKENIZER_FILE,
    VOCAB_FILE,
    is_prepared_dir,
)
from streamlm.data.inputs import (
    DocSource,
    TextSource,
    check_readable,
    expand_inputs,
    is_stream,
    open_documents,
    text_errors,
)
from streamlm.data.subword import SAMPLE_LINES, SubwordVocab, sentencepiece, train_model
from streamlm.data.text import LineBatch, display_name
from streamlm.data.tokenizer import encode
from streamlm.data.vocab import Vocab
from streamlm.errors import InputError, UsageError
from streamlm.jobs.records import Totals
from streamlm.options import Docs, Errors, PieceModel
from streamlm.version import __version__

log = logging.getLogger("streamlm.jobs.prepare")

_LOG_EVERY_S = 5.0


class _ShardWriter:
    """Cuts one token stream into shards of ``shard_tokens`` and row groups."""

    def __init__(self, out_dir: Path, shard_tokens: int, row_group_tokens: int, docs: bool):
        self.out_dir = out_dir
        self.shard_tokens = shard_tokens
        self.rg = min(row_group_tokens, shard_tokens)
        self.docs = docs
        fields = [pa.field("token_id", pa.int32(), nullable=False)]
        if docs:
            fields.append(pa.field("doc_start", pa.bool_(), nullable=False))
        self.schema = pa.schema(fields)
        self.shards: list[dict] = []
        self._stack: contextlib.ExitStack | None = None
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._in_shard = 0  # tokens written or buffered in the open shard
        self._buf: list[np.ndarray] = []
        self._dbuf: list[np.ndarray] = []
        self._nbuf = 0
        self.tokens = 0
        self.documents = 0

    def _open(self) -> None:
        name = f"shard-{len(self.shards):05d}.parquet"
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.out_dir / name))
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression="snappy")
        self._name = name
        self._in_shard = 0

    def _flush(self) -> None:
        if not self._nbuf:
            return
        ids = np.concatenate(self._buf)
        cols = [pa.array(ids, type=pa.int32())]
        if self.docs:
            cols.append(pa.array(np.concatenate(self._dbuf), type=pa.bool_()))
        table = pa.Table.from_arrays(cols, schema=self.schema)
        self._writer.write_table(table, row_group_size=self.rg)
        self._buf, self._dbuf, self._nbuf = [], [], 0

    def _close_shard(self) -> None:
        self._flush()
        self._writer.close()
        self._writer = None
        size = os.path.getsize(self._tmp)
        sha = sha256_file(self._tmp)
        self._stack.close()  # fsync + rename into place
        self._stack = None
        self.shards.append({"file": self._name, "tokens": self._in_shard,
                            "bytes": size, "sha256": sha})
        log.info("wrote %s: %s tokens", self._name, f"{self._in_shard:,}")

    def add(self, ids: np.ndarray, doc_start: np.ndarray | None) -> None:
        pos = 0
        n = len(ids)
        while pos < n:
            if self._writer is None:
                self._open()
            take = min(n - pos, self.shard_tokens - self._in_shard, self.rg - self._nbuf)
            self._buf.append(ids[pos:pos + take])
            if self.docs:
                self._dbuf.append(doc_start[pos:pos + take])
            self._nbuf += take
            self._in_shard += take
            pos += take
            if self._nbuf == self.rg:
                self._flush()
            if self._in_shard == self.shard_tokens:
                self._close_shard()
        self.tokens += n
        if doc_start is not None:
            self.documents += int(np.count_nonzero(doc_start))

    def finish(self) -> list[dict]:
        if self._writer is not None:
            self._close_shard()
        return self.shards

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        if self._stack is not None:
            with contextlib.suppress(BaseException):
                self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _count(src, counts: Counter, name: str) -> None:
    """Add the words of a text or document input to ``counts``."""
    t0 = time.monotonic()
    if isinstance(src, DocSource):
        for batch in src.batches():
            if batch.ids is not None:
                raise UsageError(f"{name}: token ids cannot build a vocabulary; give the "
                                 "one they index with --vocab")
            counts.update("\n".join(batch.texts.to_pylist()).split())
            if time.monotonic() - t0 > _LOG_EVERY_S:
                t0 = time.monotonic()
                log.info("  %s: %s rows, %s distinct words", name,
                         f"{int(batch.rows[-1]) + 1 if len(batch.rows) else 0:,}",
                         f"{len(counts):,}")
        return
    pieces = src.pieces()
    for item in pieces.batches():  # a block of lines at a time, where it can
        counts.update(item.words() if isinstance(item, LineBatch) else item.words)
        if time.monotonic() - t0 > _LOG_EVERY_S:
            t0 = time.monotonic()
            log.info("  %s: %s lines, %s distinct words", name, f"{pieces.lines:,}",
                     f"{len(counts):,}")


def _sentences(sources: list, names: list[str]):
    """The normalised lines (words joined by one space) of text and document inputs,
    streamed: what a SentencePiece model is trained on. Blank lines are left out."""
    for name, src in zip(names, sources):
        log.info("reading %s for the SentencePiece model", display_name(name))
        t0 = time.monotonic()
        if isinstance(src, DocSource):
            for batch in src.batches():
                if batch.ids is not None:
                    raise UsageError(f"{display_name(name)}: token ids cannot train a "
                                     "SentencePiece model; give the one they index with "
                                     "--tokenizer FILE.model")
                for line in "\n".join(batch.texts.to_pylist()).split("\n"):
                    yield " ".join(line.split())
            continue
        pieces = src.pieces()
        for item in pieces.batches():
            if isinstance(item, LineBatch):
                for line in item.lines():
                    yield " ".join(line.split())
            else:
                yield " ".join(item.words)
            if time.monotonic() - t0 > _LOG_EVERY_S:
                t0 = time.monotonic()
                log.info("  %s: %s lines", display_name(name), f"{pieces.lines:,}")


def _tokenizer_options(tokenizer, vocab_path, vocab_size, min_count, pieces, piece_model,
                       sample_lines) -> tuple[str | None, dict]:
    """(``"train"``, a file or None; the training options) from prepare's arguments."""
    if tokenizer is None:
        if (pieces, piece_model, sample_lines) != (None, None, None):
            raise UsageError("--pieces, --piece-model and --sample-lines train a SentencePiece "
                             "model: give --tokenizer sentencepiece")
        d = os.path.dirname(os.fspath(vocab_path or "")) or "."
        tok = os.path.join(d, TOKENIZER_FILE)
        if vocab_path is not None and is_prepared_dir(d) and os.path.exists(tok):
            raise UsageError(f"{vocab_path}: the pieces of a subword dataset; give its "
                             f"tokenizer instead: --tokenizer {tok}")
        return None, {}
    if vocab_path is not None or vocab_size is not None or min_count != 1:
        raise UsageError("--tokenizer cannot be combined with --vocab, --vocab-size or "
                         "--min-count (the pieces are the vocabulary)")
    if os.fspath(tokenizer) != "sentencepiece":
        if (pieces, piece_model, sample_lines) != (None, None, None):
            raise UsageError("--pieces, --piece-model and --sample-lines are for training a "
                             "model (--tokenizer sentencepiece), not for an existing one")
        return os.fspath(tokenizer), {}
    return "train", {"pieces": 16000 if pieces is None else int(pieces),
                     "model_type": PieceModel.parse(piece_model or "unigram",
                                                    "--piece-model").value,
                     "sample_lines": SAMPLE_LINES if sample_lines is None else int(sample_lines)}


def prepare(inputs: Sequence[str], out_dir: str | os.PathLike, *, vocab_size: int | None = None,
            min_count: int = 1, vocab_path: str | os.PathLike | None = None,
            shard_tokens: int = 1_000_000, docs: Docs | str = Docs.none,
            errors: Errors | str = Errors.strict,
            row_group_tokens: int = ROW_GROUP_TOKENS, text_field: str = "text",
            text_column: str | None = None, column: str | None = None,
            tokenizer: str | os.PathLike | None = None, pieces: int | None = None,
            piece_model: str | None = None, sample_lines: int | None = None) -> dict:
    """Turn text ``inputs`` into ``out_dir`` (vocab.txt, shards, manifest); return the manifest.

    ``tokenizer``: None (words), ``"sentencepiece"`` (train a model of ``pieces``
    pieces, ``piece_model`` unigram or bpe, on a sample of ``sample_lines`` lines) or
    the path of a SentencePiece ``.model`` file.

    Pass 1 counts words or trains the SentencePiece model (only when building the
    vocabulary), pass 2 encodes. Stdin
    (``"-"``, at most once) and pipes are spooled to a temp file inside ``out_dir``
    when the vocabulary must be built from them (two passes), else streamed once.
    Memory is bounded by the vocabulary (the word counter), one row group and a few
    1 MiB text blocks; it does not grow with the corpus. Progress is logged on the
    logger ``streamlm.jobs.prepare``.
    """
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise UsageError("no input files")
    docs = Docs.parse(docs, "--docs")
    errors = Errors.parse(errors, "--errors")
    if vocab_path is not None and (vocab_size is not None or min_count != 1):
        raise UsageError("--vocab cannot be combined with --vocab-size or --min-count")
    if shard_tokens < 1 or row_group_tokens < 1:
        raise UsageError("--shard-tokens must be at least 1")
    if inputs.count("-") > 1:
        raise UsageError("stdin ('-') can be given only once")
    sp_how, sp_opts = _tokenizer_options(tokenizer, vocab_path, vocab_size, min_count, pieces,
                                         piece_model, sample_lines)
    inputs = expand_inputs(inputs, column=column, text_column=text_column)
    for p in inputs:  # fail on missing/unreadable inputs before creating anything
        check_readable(p)
    vocab = Vocab.load(vocab_path) if vocab_path is not None else None
    if sp_how is not None:
        sentencepiece()  # installed? (before any work)
    if sp_how not in (None, "train"):
        vocab = SubwordVocab.load(sp_how)
    blank_docs = docs == Docs.blank_line

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: output exists and is not a directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
    writer: _ShardWriter | None = None

    try:
        paths = list(inputs)
        if vocab is None:  # stdin and pipes can be read once: spool them for two passes
            for k, p in enumerate(inputs):
                if not is_stream(p):
                    continue
                spool = staging / f"stream{k}.spool"
                log.info("spooling %s to %s (the vocabulary needs two passes)",
                         display_name(p), spool)
                with open(spool, "wb") as f:
                    if p == "-":
                        shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
                    else:
                        with open(p, "rb") as src:
                            shutil.copyfileobj(src, f, 1 << 20)
                paths[k] = str(spool)
        sources = []
        for k, p in enumerate(paths):
            src = None if p != inputs[k] else open_documents(
                k, p, vocab, errors=errors, column=column, text_column=text_column,
                text_field=text_field)
            sources.append(src or TextSource(k, p, None, docs=blank_docs,
                                             errors=text_errors(errors)))
        row_docs = any(isinstance(s, DocSource) for s in sources)
        docs_kind = Docs.blank_line.value if blank_docs else ("rows" if row_docs else "none")

        if sp_how == "train":
            proto = train_model(_sentences(sources, inputs), sp_opts["pieces"],
                                model_type=sp_opts["model_type"],
                                sample_lines=sp_opts["sample_lines"])
            vocab = SubwordVocab(proto, source="the SentencePiece model trained")
            log.info("SentencePiece %s model: %s pieces", sp_opts["model_type"],
                     f"{len(vocab):,}")
            if len(vocab) < sp_opts["pieces"]:
                log.warning("warning: the text has room for only %s pieces, fewer than "
                            "--pieces %s", f"{len(vocab):,}", f"{sp_opts['pieces']:,}")
        if vocab is None:
            counts: Counter = Counter()
            for name, src in zip(inputs, sources):
                log.info("counting words in %s", display_name(name))
                _count(src, counts, display_name(name))
            vocab = Vocab.build(counts, vocab_size=vocab_size, min_count=min_count)
            del counts
            log.info("vocabulary: %s words", f"{len(vocab):,}")
        vocab.save(staging / VOCAB_FILE)
        tok_info = None
        if vocab.tokenizer != "word":
            with atomic_open(staging / TOKENIZER_FILE, "wb") as f:
                f.write(vocab.proto)
            tok_info = {"kind": vocab.tokenizer, "file": TOKENIZER_FILE,
                        "sha256": hashlib.sha256(vocab.proto).hexdigest(),
                        "source": "trained" if sp_how == "train" else display_name(sp_how),
                        **sp_opts}

        writer = _ShardWriter(staging, shard_tokens, row_group_tokens, blank_docs or row_docs)
        src_info = []
        unk_tokens = 0
        for name, src in zip(inputs, sources):
            log.info("encoding %s", display_name(name))
            before = writer.tokens
            src.vocab = vocab
            counts = Totals()  # a document input's rows, once read
            if isinstance(src, DocSource):
                blocks = src.blocks(counts)
            else:
                pieces = src.pieces()
                blocks = encode(pieces, vocab, docs=blank_docs)
            prev_doc = -1
            for blk in blocks:
                ds = None
                if writer.docs:
                    if blk.doc is not None:
                        ds = blk.doc_starts(prev_doc)
                        prev_doc = int(blk.doc[-1])
                    else:  # text without document marks in a dataset of documents: one each
                        ds = np.zeros(len(blk), dtype=np.bool_)
                        ds[:1] = prev_doc < 0
                        prev_doc = 0
                unk_tokens += int(np.count_nonzero(blk.ids == vocab.unk_id))
                writer.add(blk.ids, ds)
            info = {"path": display_name(name), "tokens": writer.tokens - before}
            if isinstance(src, DocSource):
                info.update(rows=counts.rows, skipped_rows=len(counts.skipped))
            else:
                info["lines"] = pieces.lines
            src_info.append(info)
        shards = writer.finish()
        if writer.tokens == 0:
            raise InputError("no tokens: the input is empty", path=", ".join(
                display_name(p) for p in inputs))

        manifest = {
            "format": SHARDS_FORMAT,
            "format_version": SHARDS_VERSION,
            "created_by": f"streamlm {__version__}",
            "column": "token_id",
            "docs": docs_kind,
            "errors": errors.value,
            "num_tokens": writer.tokens,
            "num_documents": writer.documents if writer.docs else None,
            "unk_tokens": unk_tokens,
            "row_group_tokens": min(row_group_tokens, shard_tokens),
            "vocab": {"file": VOCAB_FILE, "size": len(vocab), "sha256": vocab.sha256()},
            "tokenizer": tok_info,
            "sources": src_info,
            "shards": shards,
        }
        # publish: old manifest first (invalidates an old dataset), files, manifest last
        with contextlib.suppress(FileNotFoundError):
            (out / MANIFEST).unlink()
        new_names = ({VOCAB_FILE} | {s["file"] for s in shards}
                     | ({TOKENIZER_FILE} if tok_info else set()))
        mode = 0o666 & ~umask()
        for name in sorted(new_names):
            os.chmod(staging / name, mode)
            os.replace(staging / name, out / name)
        for old in [*out.glob(SHARD_GLOB), out / TOKENIZER_FILE]:
            if old.name not in new_names and old.is_file():
                old.unlink()
        with atomic_open(out / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
            os.chmod(f.name, mode)
        return manifest
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only succeeds if we made it and it stayed empty
