"""What says which vocabulary token ids index: a prepared directory's manifest.json and
vocabulary, and the files ``streamlm prepare`` leaves beside raw shard files.

:func:`vocab_differs` is the one comparison of two vocabularies; a prepared
directory (``streamlm.data.shards``) and raw Parquet / Arrow id files
(:func:`check_id_files`) are both checked with it, so no way of naming shards
scores ids of another vocabulary in silence (:func:`warn_unchecked` says which
files nothing could check).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from streamlm.data.formats import MANIFEST, SHARDS_FORMAT, SHARDS_VERSION, VOCAB_FILE
from streamlm.data.vocab import Vocab
from streamlm.errors import InputError, VocabularyMismatch

log = logging.getLogger("streamlm.data.shards")


def _safe_name(d: Path, name: object, what: str, manifest: Path) -> Path:
    if (not isinstance(name, str) or not name or name != os.path.basename(name)
            or name in (".", "..") or "/" in name or "\\" in name):
        raise InputError(f"{what} {name!r} is not a plain file name inside the directory",
                         path=manifest)
    p = d / name
    if p.resolve().parent != d.resolve():
        raise InputError(f"{what} {name!r} escapes the directory", path=manifest)
    return p


def _read_manifest(mpath: Path) -> dict:
    """The manifest at ``mpath`` as a dict, its format and version checked."""
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
        if not isinstance(m, dict):
            raise TypeError("not a JSON object")
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"unreadable manifest: {e}", path=mpath) from None
    if m.get("format") != SHARDS_FORMAT:
        raise InputError(f"not a streamlm shard manifest (format {m.get('format')!r})",
                         path=mpath)
    if m.get("format_version") != SHARDS_VERSION:
        raise InputError(f"unsupported format version {m.get('format_version')!r} "
                         f"(this streamlm reads {SHARDS_VERSION})", path=mpath)
    return m


def _manifest_vocab(d: Path, m: dict) -> tuple[Vocab, Path]:
    """The vocabulary of prepared directory ``d`` whose manifest is ``m``, checked against
    the manifest (a subword dataset's: its SentencePiece model), and its file."""
    mpath = d / MANIFEST
    try:
        vinfo = m["vocab"]
        vpath = _safe_name(d, vinfo["file"], "vocab file", mpath)
        want_sha, want_size = vinfo["sha256"], int(vinfo["size"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"malformed manifest: {e!r}", path=mpath) from None
    dvocab = Vocab.load(vpath)
    if dvocab.sha256() != want_sha or len(dvocab) != want_size:
        raise InputError(f"vocabulary does not match the manifest ({len(dvocab)} words, sha256 "
                         f"{dvocab.sha256()[:12]}…; manifest says {want_size} words, "
                         f"{str(want_sha)[:12]}…)", path=vpath)
    if m.get("tokenizer") is not None:
        dvocab = _prepared_tokenizer(d, m["tokenizer"], mpath, dvocab)
    return dvocab, vpath


def vocab_differs(vocab: Vocab, theirs: Vocab, owner: str = "the given vocabulary",
                  where: str | None = None) -> str | None:
    """The one check that token ids made with the vocabulary ``theirs`` (a dataset's, read
    from ``where``) index ``vocab`` (``owner``: whose it is, for the message): None when
    they are the same words in the same order, else the message saying how they differ."""
    if vocab.sha256() == theirs.sha256():
        return None
    at = f"{where}: " if where else ""
    return (f"{owner} ({len(vocab)} words, sha256 {vocab.sha256()[:12]}…) differs from the "
            f"dataset's ({at}{len(theirs)} words, {theirs.sha256()[:12]}…)")


def _prepared_tokenizer(d: Path, info: object, mpath: Path, words: Vocab) -> Vocab:
    """The subword vocabulary of a prepared directory (its SentencePiece model), checked
    against the manifest and the directory's vocab.txt."""
    from streamlm.data.subword import KIND, SubwordVocab

    try:
        if not isinstance(info, dict) or info.get("kind") != KIND:
            raise ValueError(f"unknown tokenizer {info!r}")
        tpath = _safe_name(d, info["file"], "tokenizer file", mpath)
        want = info["sha256"]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"malformed manifest: {e!r}", path=mpath) from None
    return SubwordVocab.load(tpath, sha256=want, words=words)


# ------------------------------------------------ the ids of raw files --
def _beside(d: Path) -> tuple[Vocab | None, str, set | None]:
    """What says which vocabulary the token id files in directory ``d`` index: (the
    vocabulary, the file it was read from, the shard files a manifest lists or None),
    or (None, why there is none, None). A streamlm manifest.json comes first (its
    vocabulary checked as a prepared directory's is), then a vocab.txt."""
    mpath = d / MANIFEST
    if mpath.is_file():
        try:
            foreign = json.loads(mpath.read_text(encoding="utf-8")).get("format") != SHARDS_FORMAT
        except (OSError, ValueError, AttributeError):
            foreign = False  # unreadable: _read_manifest says so
        if foreign:
            return None, f"the {MANIFEST} beside it is not a streamlm manifest", None
        m = _read_manifest(mpath)
        dvocab, _ = _manifest_vocab(d, m)
        shards = m.get("shards")
        listed = {s.get("file") for s in shards if isinstance(s, dict)} if isinstance(
            shards, list) else set()
        return dvocab, str(mpath), listed
    if (d / VOCAB_FILE).is_file():
        return Vocab.load(d / VOCAB_FILE), str(d / VOCAB_FILE), None
    return None, f"no {MANIFEST} beside it", None


_BESIDE: dict[tuple, tuple] = {}  # (directory, its manifest's and vocab.txt's stat) -> _beside


def _beside_cached(d: str) -> tuple[Vocab | None, str, set | None]:
    """:func:`_beside` of directory ``d``, read once for all the shard files of a job
    in it (each its own input: a glob of a thousand), again when its files change."""
    stamp = []
    for name in (MANIFEST, VOCAB_FILE):
        try:
            st = os.stat(os.path.join(d, name))
            stamp.append((st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            stamp.append(None)
    key = (d, os.path.abspath(d), *stamp)
    got = _BESIDE.get(key)
    if got is None:
        got = _beside(Path(d))
        if len(_BESIDE) >= 4:
            _BESIDE.clear()
        _BESIDE[key] = got
    return got


def check_id_files(files: Sequence[str | os.PathLike], vocab: Vocab,
                   owner: str) -> list[tuple[str, str]]:
    """Check that the token ids of the raw Parquet / Arrow ``files`` (not a prepared
    directory) index ``vocab``, ``owner``'s ("the model m.npz", "--vocab v.txt"), by
    what ``streamlm prepare`` left beside each: the vocabulary of the manifest.json
    that lists it, else a vocab.txt (:func:`vocab_differs`, the check of a prepared
    directory). Raises :class:`VocabularyMismatch` naming the file and ``owner`` when
    they differ; returns the files with nothing beside them to check, each with why
    (for :func:`warn_unchecked`)."""
    unchecked: list[tuple[str, str]] = []
    for f in map(os.fspath, files):
        theirs, where, listed = _beside_cached(os.path.dirname(f) or ".")
        if theirs is not None and listed is not None and os.path.basename(f) not in listed:
            theirs, where = None, f"the {MANIFEST} beside it does not list it"
        if theirs is None:
            unchecked.append((f, where))
            continue
        differs = vocab_differs(vocab, theirs, f"{owner}'s vocabulary", where)
        if differs:
            raise VocabularyMismatch(differs, path=f)
    return unchecked


def warn_unchecked(unchecked: Sequence[tuple[str, str]], owner: str) -> None:
    """One warning line for the files :func:`check_id_files` could not check (naming
    the first, and how many more)."""
    if not unchecked:
        return
    f, why = unchecked[0]
    n = len(unchecked) - 1
    more = f" (and {n} more file{'s' if n > 1 else ''})" if n else ""
    log.warning("warning: %s%s: cannot check the vocabulary of its token ids: %s; the ids "
                "are taken as %s's", f, more, why, owner)
