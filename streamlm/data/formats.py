"""File-format facts that several rooms need: names, suffixes and magic bytes.

No pyarrow here: the scorer decides what an input is (``streamlm.data.inputs``)
before it knows whether it needs pyarrow at all.
"""

from __future__ import annotations

import os
import stat

# a prepared directory (``streamlm prepare``): see streamlm.jobs.prepare
MANIFEST = "manifest.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.model"  # a SentencePiece model (subword shards: data.subword)
SHARDS_FORMAT = "streamlm-shards"
SHARDS_VERSION = 1
SHARD_GLOB = "shard-*.parquet"
ROW_GROUP_TOKENS = 1 << 16

# tables of token ids
TABLE_SUFFIXES = (".parquet", ".arrow", ".feather", ".ipc")
PARQUET_MAGIC = b"PAR1"
ARROW_FILE_MAGIC = b"ARROW1"
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"
FEATHER_V1_MAGIC = b"FEA1"

# compressed text
COMPRESSION_MAGIC = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz"}
COMPRESSION_SUFFIXES = {".gz": "gz", ".gzip": "gz", ".bz2": "bz2", ".xz": "xz"}

# JSON lines: one document per line (also compressed: .jsonl.gz, .jsonl.zst ...)
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# npz files (model, checkpoints): zip archives
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def compression(head: bytes) -> str | None:
    """'gz', 'bz2' or 'xz' when ``head`` starts with that magic, else None."""
    for magic, kind in COMPRESSION_MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def compression_suffix(path: str | os.PathLike) -> str | None:
    """The compression a file name claims (``.gz`` -> 'gz'), or None."""
    return COMPRESSION_SUFFIXES.get(os.path.splitext(os.fspath(path))[1].lower())


def table_kind(head: bytes) -> str | None:
    """'parquet' or 'ipc' (Arrow IPC file, Feather v2) by magic bytes, else None."""
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head.startswith(ARROW_FILE_MAGIC):
        return "ipc"
    return None


def has_table_suffix(path: str | os.PathLike) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in TABLE_SUFFIXES


def is_jsonl_name(path: str | os.PathLike) -> bool:
    """Whether the file name says JSON lines (``x.jsonl``, ``x.ndjson.gz``, ``x.json.zst``)."""
    stem, ext = os.path.splitext(os.fspath(path).lower())
    if ext in COMPRESSION_SUFFIXES or ext == ".zst":
        ext = os.path.splitext(stem)[1]
    return ext in JSONL_SUFFIXES


def is_prepared_dir(path: str | os.PathLike) -> bool:
    """A directory that ``streamlm prepare`` finished (its manifest is written last)."""
    return os.path.isdir(path) and os.path.exists(os.path.join(path, MANIFEST))


def is_stream(path: str | os.PathLike) -> bool:
    """True for stdin (``"-"``) and for a path that is a pipe, socket or character
    device (``<(cmd)`` in a shell): data that can be read once, with no seeking."""
    p = os.fspath(path)
    if p == "-":
        return True
    try:
        mode = os.stat(p).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


def is_table_input(path: str | os.PathLike) -> bool:
    """True for a directory and for a Parquet / Arrow file (by suffix or magic bytes)."""
    p = os.fspath(path)
    if is_stream(p):  # a pipe is read as text: sniffing it would consume it
        return False
    if os.path.isdir(p) or has_table_suffix(p):
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return table_kind(head) is not None


def fingerprint(path: str | os.PathLike) -> dict:
    """What identifies an input's content for a resume: path, size and mtime (a
    prepared directory: its manifest's sha256; another directory: its files)."""
    import hashlib

    from streamlm.errors import UsageError

    p = os.fspath(path)
    if is_stream(p):
        what = "stdin ('-')" if p == "-" else f"a pipe ({p})"
        raise UsageError(f"--checkpoint cannot be used with {what}: it cannot be read "
                         "again")
    fp: dict = {"path": os.path.abspath(p)}
    if is_prepared_dir(p):
        with open(os.path.join(p, MANIFEST), "rb") as f:
            fp["manifest_sha256"] = hashlib.sha256(f.read()).hexdigest()
    elif os.path.isdir(p):
        fp["files"] = sorted([e.name, e.stat().st_size, e.stat().st_mtime_ns]
                             for e in os.scandir(p) if e.is_file())
    else:
        st = os.stat(p)
        fp["size"], fp["mtime_ns"] = st.st_size, st.st_mtime_ns
    return fp
