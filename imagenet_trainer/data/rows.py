"""Stage 2 of the input pipeline: one row's bytes without a copy.

In: a split of ``sources.load_image_dataset`` (a memory-mapped Arrow table, maybe behind select/shuffle indices).
Out: ``Rows(split)[i]`` = (the row's encoded image bytes as a zero-copy memoryview of the table, its int label).
No per-row Python dict and no PIL decoding inside ``datasets``' formatter (slow formatting: datasets #7753, #5669),
and no copy of the bytes: a row is one slice of its chunk's data buffer at its offsets (BENCHMARKS.md,
"Input pipeline", has the per-row costs). Next stage: ``decode``.
"""
from __future__ import annotations

import bisect
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

class Rows:
    """(encoded image bytes, label) by row of a split, read straight from its memory-mapped Arrow table: a zero-copy
    view of the bytes (a slice of the chunk's data buffer at its offsets), where ``Dataset.__getitem__`` builds a
    dict and copies them. Honours select/shuffle indices. Pickles as the split does (by file reference);
    the array views are rebuilt in each process."""

    def __init__(self, split: datasets.Dataset):
        if not isinstance(split, datasets.Dataset):
            raise ValueError(f"expected a datasets.Dataset split, got {type(split).__name__}")
        missing = {"image", "label"} - set(split.column_names)
        if missing:
            raise ValueError(f"the split lacks the column(s) {sorted(missing)} (has {split.column_names})")
        kind = split.features["image"]
        if not (isinstance(kind, datasets.Image) or getattr(kind, "dtype", None) in ("binary", "large_binary")
                or (isinstance(kind, dict) and "bytes" in kind)):  # the last: an Image struct read without features
            raise ValueError(f"the image column is {kind}: expected encoded images (datasets.Image, or binary bytes)")
        self.split, self._arrays = split, None

    def __getstate__(self):
        return {"split": self.split, "_arrays": None}

    def __len__(self) -> int:
        return len(self.split)

    def _build(self):
        table = self.split.data.table  # the pyarrow.Table over the memory map (no copy)
        images, labels = table.column("image"), table.column("label")  # columns may be chunked differently
        indices = self.split._indices  # set by select/shuffle; datasets has no public accessor for it
        if pa.types.is_struct(images.type):  # datasets.Image: {bytes, path}
            # flatten(), not field(): it carries a null image struct down to its fields (field() shows stale bytes)
            fields = [dict(zip([f.name for f in c.type], c.flatten())) for c in images.chunks]
            data, paths = [f["bytes"] for f in fields], [f["path"] for f in fields]
        else:  # a plain binary column (Parquet written by pandas, a cast): the bytes themselves
            data, paths = images.chunks, [None] * images.num_chunks
        self._arrays = ([_binary_parts(c) for c in data], paths, _chunk_starts(images),
                        [c.to_numpy(zero_copy_only=False) for c in labels.chunks], _chunk_starts(labels),
                        None if indices is None else indices.column(0).to_numpy())
        return self._arrays

    def _locate(self, index: int) -> tuple[int, int, int]:
        """(physical row, its chunk of the image column, its place in that chunk) of row ``index``."""
        _, _, starts, _, _, indices = self._arrays or self._build()
        if not 0 <= index < len(self.split):
            raise IndexError(f"row {index} is outside 0..{len(self.split) - 1}")
        row = index if indices is None else int(indices[index])
        k = bisect.bisect_right(starts, row) - 1
        return row, k, row - starts[k]

    def image_file(self, index: int) -> str | None:
        """The file row ``index``'s image is read from (a row that only references one, e.g. an unembedded image
        folder's); None where the table holds the bytes, or neither bytes nor a path."""
        data, paths, *_ = self._arrays or self._build()
        _, k, i = self._locate(index)
        valid = data[k][2]
        if (valid is None or valid[i]) or paths[k] is None:
            return None
        return paths[k][i].as_py() or None

    def __getitem__(self, index: int) -> tuple[memoryview | bytes, int]:
        data, _, starts, labels, label_starts, indices = self._arrays or self._build()
        if not 0 <= index < len(self.split):  # _locate's lines, inline: this runs for every sample
            raise IndexError(f"row {index} is outside 0..{len(self.split) - 1}")
        row = index if indices is None else int(indices[index])
        k = bisect.bisect_right(starts, row) - 1
        i = row - starts[k]
        offsets, buffer, valid = data[k]
        if valid is None or valid[i]:
            image = buffer[offsets[i]:offsets[i + 1]]
        else:  # rows that only reference a file (e.g. an unembedded imagefolder copy)
            path = self.image_file(index)
            if not path:
                raise UnreadableRow(f"row {index}: the image cannot be read: it has neither bytes nor a path")
            try:
                image = Path(path).read_bytes()
            except OSError as e:  # deleted or moved since the split was made, a stale NFS handle, no permission
                raise UnreadableRow(f"row {index}: the image file {path} cannot be read ({e.strerror or e})") from None
        j = bisect.bisect_right(label_starts, row) - 1
        return image, int(labels[j][row - label_starts[j]])


class UnreadableRow(ValueError):
    """A row whose image cannot be read at all (a null image, a referenced file gone or unreadable), as against
    one read whose bytes do not decode."""


def _binary_parts(chunk: pa.Array) -> tuple[np.ndarray, memoryview, np.ndarray | None]:
    """(value offsets, the data as a memoryview of unsigned bytes, validity or None when no value is null) of a
    binary chunk, straight over its buffers: a row is then one numpy-indexed slice instead of a pyarrow scalar."""
    if not (pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type)):
        chunk = chunk.cast(pa.large_binary())  # e.g. binary_view: a copy, for columns that are not what datasets writes
    if len(chunk) == 0:
        return np.zeros(1, np.int64), memoryview(b""), None
    _, offsets, values = chunk.buffers()
    kind = np.dtype(np.int64 if pa.types.is_large_binary(chunk.type) else np.int32)
    offsets = np.frombuffer(offsets, kind, len(chunk) + 1, chunk.offset * kind.itemsize)
    values = memoryview(values if values is not None else b"").cast("B")  # pyarrow exports signed chars
    return offsets, values, None if chunk.null_count == 0 else chunk.is_valid().to_numpy(zero_copy_only=False)



def _chunk_starts(column) -> list[int]:
    """The first row of each chunk of a pyarrow ChunkedArray, and the row count last (bisect's boundaries)."""
    starts = [0]
    for chunk in column.chunks:
        starts.append(starts[-1] + len(chunk))
    return starts
