"""One patient's bag of instance features, left on disk until rows of it are needed.

A whole-slide bag is thousands of 1,024-d patches (16 MB and more per slide), and a site holds
hundreds of them: ``load_site`` must not read a site into memory. :func:`open_bag` parses the
``.npy`` header, checks dtype and shape, and scans the values in chunks of at most
``CHUNK_BYTES`` for NaN/Inf (same errors as reading it whole would give: file, field, fix); what
it returns, a :class:`BagFile`, is a few numbers. Rows are read on demand (:meth:`BagFile.rows`,
:meth:`BagFile.chunks`), so memory follows the rows asked for, never the site.

The helpers :func:`bag_rows`, :func:`bag_mean` and :func:`bag_array` take either a BagFile or an
in-memory array, so code and tests that build bags by hand keep working.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SiteDataError

CHUNK_BYTES = 8 << 20  # at most this many bytes of a bag are in memory at once while scanning
_REEXPORT = "re-export it with numpy.save(path, float_array)"


@dataclass(frozen=True)
class BagFile:
    """A validated ``.npy`` bag on disk: float32 [n_instances, dim] when read."""

    path: Path
    n: int
    dim: int
    stored: np.dtype  # dtype on disk (any real numeric dtype; read as float32)
    offset: int  # byte offset of the data after the header
    fortran: bool

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.dim)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes of this bag once read as float32."""
        return self.n * self.dim * 4

    def __len__(self) -> int:
        return self.n

    def _map(self) -> np.memmap:
        return np.memmap(self.path, dtype=self.stored, mode="r", offset=self.offset,
                         shape=(self.n, self.dim), order="F" if self.fortran else "C")

    def rows(self, index: np.ndarray | slice) -> np.ndarray:
        """float32 copy of the selected rows; the file is mapped only for the duration of the call."""
        mapped = self._map()
        try:
            return np.array(mapped[index], dtype=np.float32)
        finally:
            del mapped

    def __getitem__(self, index):  # bag[rows] reads those rows, like an array would
        return self.rows(index)

    def chunks(self, max_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """The bag in consecutive float32 row blocks of at most ``max_bytes`` (sequential reads)."""
        step = max(1, max_bytes // max(1, self.dim * max(4, self.stored.itemsize)))
        if self.fortran:
            for start in range(0, self.n, step):
                yield self.rows(slice(start, min(self.n, start + step)))
            return
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            for start in range(0, self.n, step):
                rows = min(step, self.n - start)
                block = np.fromfile(handle, dtype=self.stored, count=rows * self.dim)
                with np.errstate(over="ignore", invalid="ignore"):
                    yield block.reshape(rows, self.dim).astype(np.float32)

    def read(self) -> np.ndarray:
        """The whole bag as float32 [n, dim] (use for bags known to be small)."""
        return self.rows(slice(None))

    def mean(self) -> np.ndarray:
        """float64 mean over instances, accumulated chunk by chunk."""
        total = np.zeros(self.dim, dtype=np.float64)
        for block in self.chunks():
            total += block.sum(axis=0, dtype=np.float64)
        return total / self.n

    def __array__(self, dtype=None, copy=None):  # np.asarray(bag) reads it whole
        out = self.read()
        return out if dtype is None else out.astype(dtype)


def bag_rows(bag: BagFile | np.ndarray, index: np.ndarray | slice) -> np.ndarray:
    """Selected rows of a bag as float32, from disk or memory."""
    return bag.rows(index) if isinstance(bag, BagFile) else np.asarray(bag[index], dtype=np.float32)


def bag_array(bag: BagFile | np.ndarray) -> np.ndarray:
    """A whole bag as float32."""
    return bag.read() if isinstance(bag, BagFile) else np.asarray(bag, dtype=np.float32)


def bag_mean(bag: BagFile | np.ndarray) -> np.ndarray:
    """float64 mean over a bag's instances, streamed for a BagFile."""
    return bag.mean() if isinstance(bag, BagFile) else np.asarray(bag, dtype=np.float64).mean(axis=0)


def _header(handle, file: Path, field: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    magic = handle.read(6)
    if magic != b"\x93NUMPY":
        kind = "an .npz/zip archive" if magic.startswith(b"PK") else "missing the .npy header"
        raise SiteDataError(file, field, f"is not a .npy array file ({kind})", _REEXPORT)
    handle.seek(0)
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    except Exception as exc:  # corrupt header
        raise SiteDataError(file, field, f"cannot be read as a .npy array ({exc})", _REEXPORT) from exc
    return tuple(shape), bool(fortran), np.dtype(dtype)


def open_bag(file: str | Path, modality: str, *, scan: bool = True) -> BagFile:
    """Validate one ``.npy`` bag without holding it in memory; raise SiteDataError naming the fix.

    ``scan=False`` checks the header, dtype, shape and size only (for a file whose values were
    scanned moments ago in the same process, e.g. re-binding a site to the run's schema)."""
    file = Path(file)
    field = f"{modality} features"
    with open(file, "rb") as handle:
        shape, fortran, dtype = _header(handle, file, field)
        offset = handle.tell()
    if dtype.hasobject or dtype == np.bool_ or not np.issubdtype(dtype, np.number) \
            or np.issubdtype(dtype, np.complexfloating):
        raise SiteDataError(file, field, f"has dtype {dtype}, not a float/int numeric array",
                            "save the features as a float32 array")
    if len(shape) == 1:
        shape, fortran = (1, shape[0]), False
    if len(shape) != 2:
        raise SiteDataError(file, field, f"has shape {shape}; expected 2-D [n_instances, dim] or 1-D [dim]",
                            "save one row per instance: an array of shape [n_instances, dim]")
    if shape[0] == 0 or shape[1] == 0:
        raise SiteDataError(file, field, f"is empty (shape {shape})",
                            "delete the file (a missing modality is fine) or add its features")
    need = offset + shape[0] * shape[1] * dtype.itemsize
    size = file.stat().st_size
    if size < need:
        raise SiteDataError(file, field, f"cannot be read as a .npy array (truncated: {size} bytes, "
                            f"the header promises {need})", _REEXPORT)
    bag = BagFile(path=file, n=int(shape[0]), dim=int(shape[1]), stored=dtype, offset=offset, fortran=fortran)
    bad = 0
    for block in bag.chunks() if scan else ():
        bad += int(block.size - np.count_nonzero(np.isfinite(block)))
    if bad:
        raise SiteDataError(file, field, f"contains {bad} NaN/Inf values (or values too large "
                            "for float32)", "re-extract the features or impute them; "
                            "or delete the file to treat the modality as missing")
    return bag
