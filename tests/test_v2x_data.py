"""Berlin V2X app: serialisation, synthetic data, split, shards and bad input."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1] / "simulations" / "berlin_v2x")
)

from berlin_v2x.data import (  # noqa: E402
    V2XDataError,
    build_shards,
    client_rows,
    load_cellular_parquet,
    pad_sequences,
    read_shard,
    serialise_rows,
    shard_paths,
    split_rows,
    split_sequences,
    telekom_rows,
    write_shard,
)
from berlin_v2x.schema import CLIENT_AREAS, REQUIRED_COLUMNS, TEXT_KEYS, area_of  # noqa: E402
from berlin_v2x.synthetic import SyntheticConfig, generate_table  # noqa: E402
from berlin_v2x.textformat import format_value, row_to_text  # noqa: E402
from berlin_v2x.tokenizer import load_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return generate_table(SyntheticConfig(num_rows=1200, seed=7))


# -- number formatting and the text template ----------------------------------


@pytest.mark.parametrize(
    "value, text",
    [
        (-91.249375, "-91.249"),  # |v| >= 1: three decimals
        (1300.0, "1300"),  # trailing zeros and dot stripped
        (13100000.0, "13100000"),  # never scientific
        (2.7e8, "270000000"),
        (-1.0005, "-1"),  # rounds to -1.000 (half-even on the binary value)
        (0.66, "0.66"),  # 3 decimals below 1
        (0.0533, "0.0533"),  # one more decimal below 0.1
        (0.000952, "0.00095"),  # capped at 5 decimals
        (0.000016, "0.00002"),
        (0.0, "0"),
        (-0.5, "-0.5"),
        (np.float64(16.093), "16.093"),  # numpy float64 is a float
        (350000000, "350000000"),  # ints through str()
        (np.int64(400000), "400000"),
        ("20 ", "20 "),  # strings verbatim
        ("Straße des 17. Juni", "Straße des 17. Juni"),
        (float("nan"), ""),  # missing -> empty
        (None, ""),
    ],
)
def test_format_value_matches_the_reference_rules(value, text):
    assert format_value(value) == text


def _fixed_row() -> dict:
    row = {key: float("nan") for key in TEXT_KEYS}
    row.update(
        {
            "direction": "downlink",
            "measured_qos": "datarate",
            "device": "pc1",
            "target_datarate": 350000000,
            "PCell_E-ARFCN": 1300.0,
            "PCell_Downlink_bandwidth_MHz": "20 ",
            "PCell_Downlink_RBs_MCS_3": 12.5,
            "Latitude": 52.5123456,
            "Traffic_Street_Name": "Straße des 17. Juni",
            "PCell_RSRP_1": -117.25,
            "jitter": 0.000952,
            "ping_ms": 54.7,
        }
    )
    return row


def test_row_to_text_follows_the_template():
    text = row_to_text(_fixed_row(), dt.time(14, 32))

    assert text.startswith(
        "time = 1 4 3 2 direction = downlink measured_qos = datarate device = pc1 "
        "target_datarate = 350000000 --> PCell_E-ARFCN = 1300 PCell_Downlink_Num_RBs = "
    )
    assert text.count(" --> ") == 4
    assert "PCell_Downlink_bandwidth_MHz = 20  PCell_Uplink_bandwidth_MHz = " in text
    assert "PCell_Downlink_RBs_MCS_3 = 12.5 PCell_Downlink_RBs_MCS_4 = " in text
    assert "--> Latitude = 52.512 Longitude = " in text
    assert "Traffic_Street_Name = Straße des 17. Juni Traffic_Distance = " in text
    assert "--> PCell_RSRP_1 = -117.25 PCell_RSRP_2 = " in text
    # The trailing "datarate = " of a missing last value is stripped.
    assert text.endswith("jitter = 0.00095 ping_ms = 54.7 datarate =")
    positions = [text.index(f" {key} =") for key in TEXT_KEYS if key != "direction"]
    assert positions == sorted(positions)


# -- synthetic generator ---------------------------------------------------------


def _same_table(a: pa.Table, b: pa.Table) -> bool:
    """Column-wise equality with NaN == NaN."""
    if a.column_names != b.column_names or a.num_rows != b.num_rows:
        return False
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            if not np.array_equal(x.to_numpy(), y.to_numpy(), equal_nan=True):
                return False
        elif x.to_pylist() != y.to_pylist():
            return False
    return True


def test_generator_is_deterministic_and_seed_dependent(table):
    again = generate_table(SyntheticConfig(num_rows=1200, seed=7))
    other = generate_table(SyntheticConfig(num_rows=1200, seed=8))

    assert _same_table(again, table)
    assert not _same_table(other, table)


def test_generator_schema_matches_the_real_table(table):
    for column in ("timestamp", *REQUIRED_COLUMNS):
        assert column in table.column_names
    assert table.schema.field("timestamp").type == pa.timestamp(
        "ns", tz="Europe/Berlin"
    )
    assert table.schema.field("target_datarate").type == pa.int64()
    assert table.schema.field("PCell_RSRP_1").type == pa.float64()
    assert table.schema.field("Traffic_Street_Name").type == pa.string()
    telekom = telekom_rows(table)
    assert 1100 < telekom.num_rows <= 1300
    assert set(telekom.column("device").to_pylist()) == {"pc1", "pc4"}


def test_generator_statistics_follow_the_design(table):
    t = telekom_rows(table)

    def col(key):
        return np.asarray(t.column(key).to_numpy(zero_copy_only=False), dtype=float)

    # Missing shares near the real non-NaN rates.
    assert 0.2 < np.isnan(col("ping_ms")).mean() < 0.38
    assert 0.02 < np.isnan(col("PCell_RSRP_1")).mean() < 0.09
    assert np.nanstd(col("visibility")) == 0.0
    both = ~np.isnan(col("PCell_RSRP_max")) & ~np.isnan(col("PCell_SNR_1"))
    assert (
        np.corrcoef(col("PCell_RSRP_max")[both], col("PCell_SNR_1")[both])[0, 1] > 0.5
    )
    ok = ~np.isnan(col("PCell_SNR_1")) & ~np.isnan(col("PCell_Downlink_Average_MCS"))
    assert (
        np.corrcoef(col("PCell_SNR_1")[ok], col("PCell_Downlink_Average_MCS")[ok])[0, 1]
        > 0.7
    )
    assert -95 < np.nanmean(col("PCell_RSRP_max")) < -80
    ping = col("ping_ms")[~np.isnan(col("ping_ms"))]
    assert np.median(ping) / np.mean(ping) < 0.5  # heavy tail

    # Regional differences: the tunnel is worse than the park, the highway faster.
    area = np.array(t.column("area").to_pylist(), dtype=object)
    snr, speed = col("PCell_SNR_1"), col("speed_kmh")
    assert np.nanmean(snr[area == "Tunnel"]) < np.nanmean(snr[area == "Park"]) - 5
    assert (
        np.nanmean(speed[area == "Highway"])
        > np.nanmean(speed[area == "Residential"]) + 15
    )


def test_every_synthetic_row_tokenizes_without_unknowns(table):
    tokenizer = load_tokenizer()
    t = telekom_rows(table)
    lines = serialise_rows(t, np.arange(0, t.num_rows, 7))
    lengths = []
    for line in lines:
        ids = tokenizer.encode(line)
        assert 0 not in ids, line
        lengths.append(len(ids))
    assert 450 <= min(lengths) and max(lengths) <= 1524


# -- split, shards ------------------------------------------------------------------


def test_split_reproduces_pandas_sample_semantics(table):
    t = telekom_rows(table)
    split = split_rows(t)

    expected = np.random.RandomState(909).permutation(t.num_rows)[
        : round(0.9 * t.num_rows)
    ]
    np.testing.assert_array_equal(split.train_rows, expected)
    seconds = t.column("timestamp").to_numpy().astype("datetime64[ns]").astype(np.int64)
    assert not np.isin(seconds[split.test_rows], seconds[split.train_rows]).any()
    plain = split_rows(t, faithful_test_drop=False)
    assert (
        len(plain.test_rows)
        == t.num_rows - len(split.train_rows)
        > len(split.test_rows)
    )


def test_shards_round_trip_and_follow_the_reference_layout(table, tmp_path):
    summary = build_shards(table, tmp_path)

    train, test = shard_paths(tmp_path)
    assert [p.name for p in train] == [f"clientID_{k}.bin" for k in range(5)]
    assert test == tmp_path / "test" / "clientID_0.bin"
    t = telekom_rows(table)
    rows = client_rows(t, split_rows(t).train_rows)
    for k, path in enumerate(train):
        ids = read_shard(path)
        assert summary["clients"][CLIENT_AREAS[k]]["rows"] == len(rows[k])
        assert summary["clients"][CLIENT_AREAS[k]]["tokens"] == ids.size
        sequences = split_sequences(ids)
        assert len(sequences) == len(rows[k]) + 1  # the 1-token stub first
        assert sequences[0].tolist() == [236]
    # Byte for byte for the smallest client (Tunnel): rows in sample order.
    expected = np.concatenate(
        [load_tokenizer().encode(x) for x in serialise_rows(t, rows[4])]
    )
    np.testing.assert_array_equal(read_shard(train[4]), expected.astype(np.uint8))
    write_shard(tmp_path / "copy.bin", read_shard(train[4]))
    assert (tmp_path / "copy.bin").read_bytes() == train[4].read_bytes()


def test_split_sequences_and_padding():
    ids = np.array([236, 17, 5, 6, 236, 17, 7, 236], dtype=np.uint8)

    sequences = split_sequences(ids)

    assert [s.tolist() for s in sequences] == [[236], [17, 5, 6, 236], [17, 7, 236]]
    padded = pad_sequences(sequences, 4)
    np.testing.assert_array_equal(
        padded, [[236, 0, 0, 0], [17, 5, 6, 236], [17, 7, 236, 0]]
    )


def test_area_boxes_follow_geotag_order():
    assert area_of(52.515, 13.30) == "Avenue"
    assert area_of(52.515, 13.35) == "Park"
    assert area_of(52.50, 13.32) == "Residential"
    assert area_of(52.49, 13.28) == "Tunnel"
    assert area_of(52.50, 13.28) == "Highway"
    assert area_of(52.53, 13.30) == "UNKNOWN"


# -- bad input --------------------------------------------------------------------


def test_parquet_missing_columns_is_named(table, tmp_path):
    path = tmp_path / "cellular_dataframe.parquet"
    pq.write_table(table.drop_columns(["ping_ms", "PCell_SNR_2"]), path)

    with pytest.raises(
        V2XDataError, match=r"lacks 2 required column\(s\): PCell_SNR_2, ping_ms"
    ):
        load_cellular_parquet(path)


def test_parquet_with_spaces_in_names_loads(table, tmp_path):
    path = tmp_path / "cellular_dataframe.parquet"
    renamed = [
        n.replace("Traffic_Jam_Factor", "Traffic Jam Factor")
        for n in table.column_names
    ]
    pq.write_table(table.rename_columns(renamed), path)

    assert "Traffic_Jam_Factor" in load_cellular_parquet(path).column_names


def test_wrong_paths_are_named(tmp_path):
    with pytest.raises(
        V2XDataError, match="cellular parquet not found: .*nothing.parquet"
    ):
        load_cellular_parquet(tmp_path / "nothing.parquet")
    with pytest.raises(V2XDataError, match="token shard not found"):
        read_shard(tmp_path / "train" / "clientID_0.bin")
    with pytest.raises(V2XDataError, match="data directory not found"):
        shard_paths(tmp_path / "missing")
    (tmp_path / "train").mkdir()
    write_shard(tmp_path / "train" / "clientID_0.bin", np.array([236, 17], np.uint8))
    with pytest.raises(V2XDataError, match="must hold 5 .bin shards, found 1"):
        shard_paths(tmp_path)


def test_shard_with_ids_outside_the_vocabulary_is_refused(tmp_path):
    path = tmp_path / "clientID_0.bin"
    path.write_bytes(bytes([236, 17, 16, 240, 255]))

    with pytest.raises(
        V2XDataError,
        match=r"id 240 at byte 3 is outside the telko vocabulary of 237 \(2 such",
    ):
        read_shard(path)
    with pytest.raises(V2XDataError, match=r"must lie in \[0, 237\), got max 237"):
        write_shard(path, np.array([1, 237]))


def test_empty_region_is_named(table, tmp_path):
    areas = np.array(table.column("area").to_pylist(), dtype=object)
    keep = pa.array(areas != "Tunnel")
    with pytest.raises(V2XDataError, match="area 'Tunnel' has no training rows"):
        build_shards(table.filter(keep), tmp_path)


def test_table_without_telekom_rows_is_refused(table):
    vodafone = table.set_column(
        table.column_names.index("operator"),
        "operator",
        pa.array([2] * table.num_rows, pa.int64()),
    )
    with pytest.raises(V2XDataError, match="no rows with operator == 1"):
        telekom_rows(vodafone)
