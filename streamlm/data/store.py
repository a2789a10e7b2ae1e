"""Arrays plus one JSON object in a plain ``.npz``: the model file and both checkpoints.

An archive holds named arrays and ``meta``, a 0-d unicode array with one JSON
object whose ``format`` and ``format_version`` say what the file is. numpy
alone reads it (``np.load(path, allow_pickle=False)``); nothing is pickled,
and loading refuses a pickled array. Writes are atomic (temp file in the
same directory, fsync, rename).

``load(..., mapped=True)`` maps the file instead of reading it: each stored
``.npy`` member becomes a read-only array over the mapping (the npy header is
parsed by numpy's own reader, so an object dtype is still refused). A model
file of 200 MB then opens without copying it twice; its sha256 is what checks
its contents, since zipfile's CRC check is skipped.
"""

from __future__ import annotations

import json
import mmap
import os
import zipfile
from pathlib import Path

import numpy as np

from streamlm.data.atomic import atomic_path
from streamlm.data.formats import ZIP_MAGICS
from streamlm.errors import InputError, StreamlmError


def save(path: str | os.PathLike, fmt: str, version: int, meta: dict,
         arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and ``{"format", "format_version", **meta}`` to ``path`` atomically."""
    if "meta" in arrays:
        raise ValueError("'meta' is reserved for the JSON object")
    head = {"format": fmt, "format_version": int(version)}
    head.update(meta)
    text = np.array(json.dumps(head, allow_nan=False))
    with atomic_path(path, suffix=".npz") as tmp:
        # np.savez's archive (one uncompressed zip64 .npy member per array), closed even
        # when a write fails: numpy < 2.2 left it open, and on a full disk its __del__
        # printed a traceback about the closed file at exit
        with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED,
                                                    allowZip64=True) as z:
            for name, a in {**arrays, "meta": text}.items():
                with z.open(name + ".npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(a), allow_pickle=False)


def load(path: str | os.PathLike, fmt: str, version: int, *, what: str,
         error: type[StreamlmError] = InputError,
         mapped: bool = False) -> tuple[dict, dict[str, np.ndarray]]:
    """Read an archive written by :func:`save`: ``(meta, arrays)`` (``meta`` not in arrays).

    ``what`` names the file in messages ("model file", "checkpoint"); every
    failure raises ``error`` as one line naming ``path``: missing, a directory,
    not a zip archive, truncated or corrupt, a pickled array, ``meta`` that is
    not a JSON object, another ``format``, or a ``format_version`` newer than
    ``version``.
    """
    p = Path(path)
    if not p.exists():
        raise error(f"{what} not found", path)
    if p.is_dir():
        raise error(f"is a directory, expected a {what} (.npz)", path)
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise error(f"cannot read {what}: {e.strerror or e}", path) from None
    if not magic.startswith(ZIP_MAGICS):
        raise error(f"not a streamlm {what}: not an .npz (zip) archive", path)
    try:
        arrays = _mapped(p) if mapped else None
        if arrays is None:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "pickle" in msg.lower():
            raise error("holds a pickled object, refused (allow_pickle=False)", path) from None
        raise error(f"corrupt or truncated {what} ({msg})", path) from None
    except Exception as e:  # anything numpy/zipfile raise on garbage
        raise error(f"corrupt {what} ({type(e).__name__}: {e})", path) from None
    meta_arr = arrays.pop("meta", None)
    if meta_arr is None:
        raise error(f"not a streamlm {what} (no 'meta')", path)
    if meta_arr.shape != () or meta_arr.dtype.kind != "U":
        raise error("'meta' must be a 0-d string array holding JSON", path)
    try:
        meta = json.loads(str(meta_arr))
    except json.JSONDecodeError as e:
        raise error(f"'meta' is not valid JSON ({e.msg} at char {e.pos})", path) from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise error(f"not a streamlm {what} (format {got!r}, expected {fmt!r})", path)
    v = meta.get("format_version")
    if not isinstance(v, int) or v < 1:
        raise error(f"bad format_version {v!r}", path)
    if v > version:
        raise error(f"{what} format version {v} is newer than this streamlm supports "
                    f"({version})", path)
    return meta, arrays


def _mapped(p: Path) -> dict[str, np.ndarray] | None:
    """The members of the npz at ``p`` as read-only arrays over one mapping of the file,
    or None when a member is compressed or in an npy version other than 1 and 2
    (then the caller reads it the usual way)."""
    fmt = np.lib.format
    with zipfile.ZipFile(p) as zf:
        infos = zf.infolist()
    if any(i.compress_type != zipfile.ZIP_STORED or not i.filename.endswith(".npy")
           for i in infos):
        return None
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size  # (not 0: zipfile has read the archive)
        flags = getattr(mmap, "MAP_POPULATE", 0) | mmap.MAP_PRIVATE
        mm = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
        arrays = {}
        for info in infos:
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise ValueError(f"bad zip entry {info.filename}")
            start = (info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                     + int.from_bytes(local[28:30], "little"))
            f.seek(start)
            major, _ = fmt.read_magic(f)
            if major not in (1, 2):
                return None
            shape, fortran, dtype = (fmt.read_array_header_1_0(f) if major == 1
                                     else fmt.read_array_header_2_0(f))
            if dtype.hasobject:
                raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
            count = int(np.prod(shape, dtype=np.int64))
            offset = f.tell()
            if offset - start + count * dtype.itemsize > info.file_size or \
                    offset + count * dtype.itemsize > size:
                raise EOFError(f"member {info.filename} is truncated")
            a = np.frombuffer(mm, dtype=dtype, count=count, offset=offset) if count \
                else np.zeros(0, dtype=dtype)
            arrays[info.filename[:-4]] = a.reshape(shape, order="F" if fortran else "C")
    return arrays
