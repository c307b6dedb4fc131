"""Berlin V2X data pipeline: parquet -> Telekom rows -> split -> token shards.

Layout of the pre-tokenised data, identical to the published shards:
``train/clientID_<k>.bin`` (k = 0..4 for Residential, Park, Avenue, Highway,
Tunnel) and ``test/clientID_0.bin``; each file is the uint8 token ids of its
rows, one row after the other, every row starting with "▁ time".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import (
    AREA_COLUMN,
    CLIENT_AREAS,
    EMPTY_TELEKOM_COLUMNS,
    OPERATOR_COLUMN,
    REQUIRED_COLUMNS,
    TELEKOM_OPERATOR,
    TEXT_KEYS,
    TIMESTAMP_COLUMN,
)
from .textformat import row_to_text
from .tokenizer import TIME_ID, UNK_ID, VOCAB_SIZE, load_tokenizer

logger = logging.getLogger(__name__)

SPLIT_SEED = 909
TRAIN_FRACTION = 0.90
PAD_ID = 0

_PANDAS_INDEX_COLUMNS = ("__index_level_0__",)


class V2XDataError(ValueError):
    """Input data that the pipeline cannot use; the message names the problem."""


def load_cellular_parquet(path: str | Path) -> pa.Table:
    """Read ``cellular_dataframe.parquet`` and check the columns the study needs.

    Column names get spaces replaced by underscores, as the reference does.
    The pandas index (``timestamp``) is accepted as a regular column.
    """
    path = Path(path)
    if not path.is_file():
        raise V2XDataError(f"cellular parquet not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise V2XDataError(f"cannot read {path} as parquet: {err}") from err

    table = table.rename_columns(
        [name.replace(" ", "_") for name in table.column_names]
    )
    if TIMESTAMP_COLUMN not in table.column_names:
        for name in _PANDAS_INDEX_COLUMNS:
            if name in table.column_names:
                table = table.rename_columns(
                    [TIMESTAMP_COLUMN if c == name else c for c in table.column_names]
                )
    check_schema(table, source=str(path))
    return table


def check_schema(table: pa.Table, source: str = "table") -> None:
    """Raise V2XDataError naming every required column that is missing."""
    present = set(table.column_names)
    missing = [c for c in (TIMESTAMP_COLUMN, *REQUIRED_COLUMNS) if c not in present]
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise V2XDataError(f"{source} lacks {len(missing)} required column(s): {shown}")
    if not pa.types.is_timestamp(table.schema.field(TIMESTAMP_COLUMN).type):
        kind = table.schema.field(TIMESTAMP_COLUMN).type
        raise V2XDataError(
            f"{source}: column 'timestamp' must be a timestamp, got {kind}"
        )


def telekom_rows(table: pa.Table) -> pa.Table:
    """Keep operator 1 only and drop the three columns that are empty for it."""
    operator = pc.cast(table.column(OPERATOR_COLUMN), pa.float64())
    table = table.filter(
        pc.fill_null(pc.equal(operator, float(TELEKOM_OPERATOR)), False)
    )
    if table.num_rows == 0:
        raise V2XDataError("no rows with operator == 1 (Telekom) in the table")
    drop = [c for c in EMPTY_TELEKOM_COLUMNS if c in table.column_names]
    return table.drop_columns(drop)


@dataclass(frozen=True)
class Split:
    """Row positions (into the Telekom table) of the training pool and test set."""

    train_rows: np.ndarray  # in the order of the reference's df.sample
    test_rows: np.ndarray  # in table order


def split_rows(table: pa.Table, faithful_test_drop: bool = True) -> Split:
    """The reference's 90/10 split: ``df.sample(frac=0.9, random_state=909)``.

    pandas draws ``RandomState(909).choice(n, round(0.9 n), replace=False)``.
    With faithful_test_drop the test set is ``df.drop(train.index)`` on the
    non-unique timestamp index: every row whose second also appears in the
    training pool is dropped (eucnc-experiment.md §2.2). Otherwise the test
    set is simply the remaining rows.
    """
    num_rows = table.num_rows
    train_size = round(TRAIN_FRACTION * num_rows)
    train_rows = np.random.RandomState(SPLIT_SEED).choice(
        num_rows, size=train_size, replace=False
    )

    in_train = np.zeros(num_rows, dtype=bool)
    in_train[train_rows] = True
    if faithful_test_drop:
        seconds = pc.cast(table.column(TIMESTAMP_COLUMN), pa.int64()).to_numpy(
            zero_copy_only=False
        )
        dropped = np.isin(seconds, seconds[train_rows])
        test_rows = np.flatnonzero(~dropped)
    else:
        test_rows = np.flatnonzero(~in_train)
    return Split(train_rows=train_rows.astype(np.int64), test_rows=test_rows)


def client_rows(table: pa.Table, train_rows: np.ndarray) -> list[np.ndarray]:
    """Training rows of each of the five areas (sample order kept)."""
    areas = np.array(table.column(AREA_COLUMN).to_pylist(), dtype=object)[train_rows]
    per_client = [train_rows[areas == area] for area in CLIENT_AREAS]
    for area, rows in zip(CLIENT_AREAS, per_client):
        if len(rows) == 0:
            raise V2XDataError(
                f"area {area!r} has no training rows; cannot build its client"
            )
    return per_client


def serialise_rows(table: pa.Table, rows: np.ndarray) -> list[str]:
    """Text lines of the given rows, in the given order."""
    subset = table.take(pa.array(rows, pa.int64()))
    hours = pc.hour(subset.column(TIMESTAMP_COLUMN)).to_pylist()
    minutes = pc.minute(subset.column(TIMESTAMP_COLUMN)).to_pylist()
    columns = {key: _python_values(subset.column(key)) for key in TEXT_KEYS}
    lines = []
    for i in range(subset.num_rows):
        row = {key: columns[key][i] for key in TEXT_KEYS}
        lines.append(row_to_text(row, _HourMinute(hours[i], minutes[i])))
    return lines


@dataclass(frozen=True)
class _HourMinute:
    hour: int
    minute: int


def _python_values(column: pa.ChunkedArray) -> list:
    """Column as Python values: floats stay floats (NaN for null), ints ints."""
    if pa.types.is_floating(column.type):
        return [float("nan") if v is None else float(v) for v in column.to_pylist()]
    return column.to_pylist()


def tokenize_lines(lines: list[str]) -> np.ndarray:
    """Concatenated uint8 token ids of the lines; warns on <unk> ids."""
    tokenizer = load_tokenizer()
    chunks = []
    num_unknown_lines = 0
    for line in lines:
        ids = tokenizer.encode(line)
        if UNK_ID in ids:
            num_unknown_lines += 1
        chunks.append(np.asarray(ids, dtype=np.uint8))
    if num_unknown_lines:
        logger.warning(
            "%d of %d rows contain <unk> tokens", num_unknown_lines, len(lines)
        )
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8)


def write_shard(path: str | Path, token_ids: np.ndarray) -> None:
    """Write token ids as raw uint8 bytes; refuse ids that do not fit."""
    token_ids = np.asarray(token_ids)
    if token_ids.size and (token_ids.min() < 0 or token_ids.max() >= VOCAB_SIZE):
        raise V2XDataError(
            f"token ids must lie in [0, {VOCAB_SIZE}), got max {token_ids.max()}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(token_ids.astype(np.uint8).tobytes())


def read_shard(path: str | Path) -> np.ndarray:
    """Read one uint8 shard and check every id against the vocabulary."""
    path = Path(path)
    if not path.is_file():
        raise V2XDataError(f"token shard not found: {path}")
    token_ids = np.fromfile(path, dtype=np.uint8)
    if token_ids.size == 0:
        raise V2XDataError(f"token shard {path} is empty")
    bad = np.flatnonzero(token_ids >= VOCAB_SIZE)
    if bad.size:
        raise V2XDataError(
            f"token shard {path}: id {int(token_ids[bad[0]])} at byte {int(bad[0])} is outside "
            f"the telko vocabulary of {VOCAB_SIZE} ({bad.size} such bytes)"
        )
    return token_ids


def shard_paths(
    data_dir: str | Path, num_clients: int = len(CLIENT_AREAS)
) -> tuple[list[Path], Path]:
    """Training shard paths (sorted, as the reference loads them) and the test shard."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise V2XDataError(f"data directory not found: {data_dir}")
    train = sorted((data_dir / "train").glob("*.bin"))
    test = sorted((data_dir / "test").glob("*.bin"))
    if len(train) != num_clients:
        raise V2XDataError(
            f"{data_dir / 'train'} must hold {num_clients} .bin shards, found {len(train)}"
        )
    if not test:
        raise V2XDataError(f"{data_dir / 'test'} holds no .bin shard")
    return train, test[0]


def build_shards(
    table: pa.Table, out_dir: str | Path, faithful_test_drop: bool = True
) -> dict:
    """Filter, split, serialise and tokenise a cellular table into shards.

    Returns a summary: rows per client, test rows, tokens per shard.
    """
    check_schema(table)
    table = telekom_rows(table)
    split = split_rows(table, faithful_test_drop=faithful_test_drop)
    per_client = client_rows(table, split.train_rows)
    if len(split.test_rows) == 0:
        raise V2XDataError("the test split is empty")

    out_dir = Path(out_dir)
    summary: dict = {
        "telekom_rows": table.num_rows,
        "clients": {},
        "test_rows": len(split.test_rows),
    }
    for k, rows in enumerate(per_client):
        ids = tokenize_lines(serialise_rows(table, rows))
        write_shard(out_dir / "train" / f"clientID_{k}.bin", ids)
        summary["clients"][CLIENT_AREAS[k]] = {
            "rows": len(rows),
            "tokens": int(ids.size),
        }
    test_ids = tokenize_lines(serialise_rows(table, split.test_rows))
    write_shard(out_dir / "test" / "clientID_0.bin", test_ids)
    summary["test_tokens"] = int(test_ids.size)
    return summary


def split_sequences(token_ids: np.ndarray) -> list[np.ndarray]:
    """Cut a shard at every "time" id, as PretokDatasetTelko does.

    A shard starting with "▁ time" yields a leading 1-token stub [▁]
    (eucnc-experiment.md §3.4, quirk 3).
    """
    starts = np.flatnonzero(token_ids == TIME_ID)
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    ends = np.concatenate([starts[1:], [len(token_ids)]])
    return [token_ids[a:b] for a, b in zip(starts, ends)]


def pad_sequences(sequences: list[np.ndarray], max_seq_len: int) -> np.ndarray:
    """int64 [n, max_seq_len] array: sequences cut or right-padded with id 0."""
    out = np.full((len(sequences), max_seq_len), PAD_ID, dtype=np.int64)
    for i, seq in enumerate(sequences):
        length = min(len(seq), max_seq_len)
        out[i, :length] = seq[:length]
    return out


class TokenSequences:
    """Padded sequences of one shard; item i is (x, y) = (seq[:-1], seq[1:])."""

    def __init__(
        self, token_ids: np.ndarray, max_seq_len: int, limit: int | None = None
    ) -> None:
        sequences = split_sequences(token_ids)
        if limit is not None:
            sequences = sequences[:limit]
        self.padded = pad_sequences(sequences, max_seq_len)

    def __len__(self) -> int:
        return len(self.padded)

    def batches(self, batch_size: int, max_batches: int | None = None):
        """(x, y) int64 numpy batches in file order (no shuffling, as the paper)."""
        num_batches = -(-len(self.padded) // batch_size)
        if max_batches is not None:
            num_batches = min(num_batches, max_batches)
        for b in range(num_batches):
            chunk = self.padded[b * batch_size : (b + 1) * batch_size]
            yield chunk[:, :-1], chunk[:, 1:]
