"""Deterministic synthetic stand-in for the Berlin V2X cellular table.

Same column names, dtypes and missing-value conventions as the real
``cellular_dataframe.parquet`` for every column the study reads, and the
statistics of eucnc-experiment.md §8: a lap through the five areas, cells
with regional band mixes, correlated radio metrics, scenario-driven
throughput and heavy-tailed ping. The numbers are design choices, not
measurements; the real table stays the authority.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .schema import (
    AREA_COLUMN,
    GPS_KEYS,
    MCS_KEYS,
    OPERATOR_COLUMN,
    SIDE_INFO_KEYS,
    STRING_KEYS,
    TEXT_KEYS,
    TIMESTAMP_COLUMN,
    area_of,
)

# Bumped whenever the generated values change, so cached shards are rebuilt.
GENERATOR_VERSION = 1

BERLIN = "Europe/Berlin"
METRES_PER_DEG_LAT = 111_320.0
METRES_PER_DEG_LON = 111_320.0 * math.cos(math.radians(52.505))

# The lap: waypoints (lat, lon), the street names along each leg and the
# mean speed there (km/h). Legs cross the five areas and one stretch outside
# the overall box (UNKNOWN).
LAP_LEGS: tuple[
    tuple[tuple[float, float], tuple[float, float], tuple[str, ...], float], ...
] = (
    (
        (52.5145, 13.3501),
        (52.5160, 13.3770),
        ("Straße des 17. Juni", "Platz des 18. März"),
        30.0,
    ),
    ((52.5160, 13.3770), (52.5215, 13.3700), ("Ebertstraße", "Behrenstraße"), 30.0),
    (
        (52.5215, 13.3700),
        (52.5185, 13.3450),
        ("John-Foster-Dulles-Allee", "Spreeweg"),
        28.0,
    ),
    ((52.5185, 13.3450), (52.5168, 13.3362), ("Großer Stern", "Altonaerstraße"), 25.0),
    (
        (52.5168, 13.3362),
        (52.5130, 13.3000),
        ("Ernst-Reuter-Platz", "Bismarckstraße"),
        22.0,
    ),
    (
        (52.5130, 13.3000),
        (52.5122, 13.2760),
        ("Kaiserdamm", "Sophie-Charlotten-Straße"),
        26.0,
    ),
    (
        (52.5090, 13.2800),
        (52.4975, 13.2920),
        ("Messedamm", "Masurenallee", "Halenseestraße"),
        55.0,
    ),
    ((52.4975, 13.2920), (52.4945, 13.2845), ("Kaiserdamm-Süd",), 50.0),
    (
        (52.4945, 13.2845),
        (52.4890, 13.2790),
        ("Rathenauplatz", "Kurfürstendamm(Schwarzbacher Straße)"),
        42.0,
    ),
    (
        (52.4890, 13.2790),
        (52.4930, 13.2995),
        ("Seesener Straße", "Westfälische Straße"),
        50.0,
    ),
    ((52.4930, 13.2995), (52.5010, 13.3180), ("Kurfürstendamm", "Olivaer Platz"), 16.0),
    (
        (52.5010, 13.3180),
        (52.5050, 13.3355),
        ("Uhlandstraße", "Joachimstaler Straße", "Kantstraße"),
        15.0,
    ),
    (
        (52.5050, 13.3355),
        (52.5145, 13.3501),
        ("Tauentzienstraße", "Kurfürstenstraße"),
        24.0,
    ),
)

# Carrier (DL E-ARFCN) -> (frequency MHz, band, bandwidth string) of §1.2/§8.4.
CARRIERS: dict[int, tuple[float, float, str]] = {
    1300: (1800.0, 3.0, "20 "),
    1444: (1800.0, 3.0, "20 "),
    1801: (1800.0, 3.0, "20 "),
    3050: (2600.0, 7.0, "20 "),
    2850: (2600.0, 7.0, "20 "),
    125: (2000.0, 1.0, "15 "),
    475: (2000.0, 1.0, "15 "),
    3749: (900.0, 8.0, "5 "),
    9460: (700.0, 28.0, "10 "),
}
# Regional carrier mix: area -> (carriers, probabilities).
AREA_CARRIERS: dict[str, tuple[tuple[int, ...], tuple[float, ...]]] = {
    "Park": ((1300, 3050, 2850), (0.6, 0.25, 0.15)),
    "Avenue": ((1300, 1444), (0.55, 0.45)),
    "Highway": ((1801, 9460, 1300), (0.5, 0.3, 0.2)),
    "Tunnel": ((3749, 9460), (0.6, 0.4)),
    "Residential": ((1300, 125, 475, 1444), (0.5, 0.2, 0.15, 0.15)),
    "UNKNOWN": ((1300,), (1.0,)),
}
# Extra path loss (dB) and ping factor per area: tunnel deep fade, park open.
AREA_RADIO = {
    "Park": (-4.0, 0.9),
    "Avenue": (0.0, 1.0),
    "Highway": (2.0, 1.0),
    "Tunnel": (22.0, 2.5),
    "Residential": (3.0, 1.1),
    "UNKNOWN": (0.0, 1.0),
}
URBAN_AREAS = frozenset({"Residential", "Avenue"})

# (direction, measured_qos, target_datarate bit/s) of the four scenarios.
SCENARIOS = (
    ("uplink", "delay", 400_000),
    ("downlink", "delay", 400_000),
    ("uplink", "datarate", 75_000_000),
    ("downlink", "datarate", 350_000_000),
)

# Protocol: (day of June 2021, start hour, duration in s, devices) per run;
# runs 0-11 carry pc1 and pc4, runs 12-16 only pc1 (eucnc-experiment.md §8.3).
RUNS = tuple(
    [(22, 9.5 + 1.6 * i, 3700, ("pc1", "pc4")) for i in range(6)]
    + [(23, 9.5 + 1.9 * i, 3700, ("pc1", "pc4")) for i in range(5)]
    + [(24, 9.2, 3100, ("pc1", "pc4"))]
    + [(24, 10.8 + 1.6 * i, 3400, ("pc1",)) for i in range(5)]
)
FULL_SIZE_TELEKOM_ROWS = sum(d * len(devs) for _, _, d, devs in RUNS)

# Fraction of rows missing per column family (1 - non-NaN share of §1.2).
MISSING_SHARE = {
    "gps": 0.012,
    "phy": 0.048,
    "rrc": 0.061,
    "pos": 0.08,
    "traffic_jam": 0.014,
    "iperf": 0.086,
    "ping": 0.29,
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and seed of a synthetic table.

    num_rows: Telekom rows (operator 1); the full-size table has ~105 k.
    vodafone_rows_share: extra operator-2 rows, there to exercise the filter.
    snippet_s: seconds driven from one lap position before the next run
        snippet starts elsewhere; short snippets spread small tables over
        all areas. 0 picks num_rows / 80, clipped to [8, 90].
    """

    num_rows: int = 3000
    seed: int = 2021
    vodafone_rows_share: float = 0.02
    snippet_s: int = 0

    @property
    def snippet_length_s(self) -> int:
        if self.snippet_s > 0:
            return self.snippet_s
        return int(min(90, max(8, self.num_rows // 80)))


def generate_table(config: SyntheticConfig = SyntheticConfig()) -> pa.Table:
    """Build the synthetic cellular table (deterministic in config)."""
    if config.num_rows < 50:
        raise ValueError(f"synthetic num_rows must be >= 50, got {config.num_rows}")
    rng = np.random.default_rng(config.seed)
    lap = _Lap()
    cells = _make_cells(rng, lap)
    drives = _schedule_drives(rng, config, lap)

    columns: dict[str, list] = {}
    for drive in drives:
        part = _simulate_drive(rng, lap, cells, drive)
        for key, values in part.items():
            columns.setdefault(key, []).append(values)
    merged = {key: np.concatenate(parts) for key, parts in columns.items()}
    _apply_missing(rng, merged)
    return _to_arrow(merged)


class _Lap:
    """Polyline of the reference lap with per-metre position lookup."""

    def __init__(self) -> None:
        starts = np.array([leg[0] for leg in LAP_LEGS])
        ends = np.array([leg[1] for leg in LAP_LEGS])
        d_north = (ends[:, 0] - starts[:, 0]) * METRES_PER_DEG_LAT
        d_east = (ends[:, 1] - starts[:, 1]) * METRES_PER_DEG_LON
        self.starts, self.ends = starts, ends
        self.leg_length_m = np.hypot(d_north, d_east)
        self.leg_heading_deg = np.degrees(np.arctan2(d_east, d_north)) % 360.0
        self.leg_offset_m = np.concatenate([[0.0], np.cumsum(self.leg_length_m)[:-1]])
        self.length_m = float(self.leg_length_m.sum())
        self.leg_speed_kmh = np.array([leg[3] for leg in LAP_LEGS])
        # Lap time profile at the mean speeds, to stratify snippet starts in time.
        leg_time_s = self.leg_length_m / (self.leg_speed_kmh / 3.6)
        self.leg_time_offset_s = np.concatenate([[0.0], np.cumsum(leg_time_s)[:-1]])
        self.lap_time_s = float(leg_time_s.sum())

    def position_at_time(self, lap_time_s: float) -> float:
        """Lap position (m) reached after lap_time_s at the mean speeds."""
        t = lap_time_s % self.lap_time_s
        leg = int(np.searchsorted(self.leg_time_offset_s, t, side="right") - 1)
        into_s = t - self.leg_time_offset_s[leg]
        return float(self.leg_offset_m[leg] + into_s * self.leg_speed_kmh[leg] / 3.6)

    def locate(self, pos_m: np.ndarray):
        """(leg index, lat, lon) of lap positions in metres."""
        pos_m = np.mod(pos_m, self.length_m)
        leg = np.clip(
            np.searchsorted(self.leg_offset_m, pos_m, side="right") - 1,
            0,
            len(LAP_LEGS) - 1,
        )
        frac = (pos_m - self.leg_offset_m[leg]) / self.leg_length_m[leg]
        lat = self.starts[leg, 0] + frac * (self.ends[leg, 0] - self.starts[leg, 0])
        lon = self.starts[leg, 1] + frac * (self.ends[leg, 1] - self.starts[leg, 1])
        return leg, lat, lon


@dataclass
class _Cell:
    lat: float
    lon: float
    pci: int
    eci: int
    earfcn: int
    power_dbm: float


def _make_cells(rng: np.random.Generator, lap: _Lap) -> list[_Cell]:
    """Two to three sites per leg, off the road, with the area's carrier mix."""
    cells: list[_Cell] = []
    pcis = rng.choice(np.arange(2, 504), size=64, replace=False)
    for leg_index in range(len(LAP_LEGS)):
        num_sites = 2 + int(lap.leg_length_m[leg_index] > 1200)
        for k in range(num_sites):
            pos = (
                lap.leg_offset_m[leg_index]
                + (k + 0.5) / num_sites * lap.leg_length_m[leg_index]
            )
            _, lat, lon = lap.locate(np.array([pos]))
            lat_off = rng.normal(0.0, 180.0) / METRES_PER_DEG_LAT
            lon_off = rng.normal(0.0, 180.0) / METRES_PER_DEG_LON
            area = area_of(float(lat[0]), float(lon[0]))
            carriers, probs = AREA_CARRIERS[area]
            earfcn = int(rng.choice(carriers, p=probs))
            enb = (
                int(rng.integers(100_000, 105_000))
                if rng.random() < 0.85
                else int(rng.integers(11_000, 11_800))
            )
            cells.append(
                _Cell(
                    lat=float(lat[0] + lat_off),
                    lon=float(lon[0] + lon_off),
                    pci=int(pcis[len(cells)]),
                    eci=enb * 256 + int(rng.integers(1, 4)),
                    earfcn=earfcn,
                    power_dbm=float(rng.normal(-62.0, 2.0)),
                )
            )
    return cells


@dataclass
class _Drive:
    start: dt.datetime
    duration_s: int
    device: str
    scenario: tuple[str, str, int]
    lap_start_m: float
    operator: int


def _schedule_drives(
    rng: np.random.Generator, config: SyntheticConfig, lap: _Lap
) -> list[_Drive]:
    """Cut the scaled protocol into snippets placed evenly in lap time."""
    scale = config.num_rows / FULL_SIZE_TELEKOM_ROWS
    tz = dt.timezone(dt.timedelta(hours=2))  # CEST on 22-24 June 2021
    pieces = []
    for run_index, (day, hour, duration_s, devices) in enumerate(RUNS):
        run_s = max(1, round(duration_s * scale))
        start = dt.datetime(2021, 6, day, tzinfo=tz) + dt.timedelta(hours=hour)
        for dev_index, device in enumerate(devices):
            scenario = SCENARIOS[(run_index + 2 * dev_index) % len(SCENARIOS)]
            offset = 0
            while offset < run_s:
                length = min(config.snippet_length_s, run_s - offset)
                pieces.append(
                    (start + dt.timedelta(seconds=offset), length, device, scenario)
                )
                offset += length

    order = rng.permutation(len(pieces))
    drives = []
    for rank, index in enumerate(order):
        when, length, device, scenario = pieces[index]
        lap_time = (rank + rng.random()) / len(pieces) * lap.lap_time_s
        drives.append(
            _Drive(when, length, device, scenario, lap.position_at_time(lap_time), 1)
        )

    num_vodafone = round(
        config.vodafone_rows_share * config.num_rows / config.snippet_length_s
    )
    for _ in range(num_vodafone):
        base = drives[int(rng.integers(len(drives)))]
        drives.append(
            _Drive(
                base.start,
                config.snippet_length_s,
                str(rng.choice(["pc2", "pc3"])),
                base.scenario,
                float(rng.random() * lap.length_m),
                2,
            )
        )
    return drives


def _ar1(rng: np.random.Generator, n: int, sigma: float, rho: float) -> np.ndarray:
    """Stationary AR(1) series of length n with std sigma and lag-1 correlation rho."""
    out = np.empty(n)
    out[0] = rng.normal(0.0, sigma)
    innovations = rng.normal(0.0, sigma * math.sqrt(1.0 - rho * rho), size=n)
    for i in range(1, n):
        out[i] = rho * out[i - 1] + innovations[i]
    return out


def _simulate_drive(
    rng: np.random.Generator, lap: _Lap, cells: list[_Cell], drive: _Drive
) -> dict:
    """One row per second of a drive snippet."""
    n = drive.duration_s
    leg0, _, _ = lap.locate(np.array([drive.lap_start_m]))
    mean_speed = lap.leg_speed_kmh[leg0[0]]

    # Kinematics: AR speed around the leg's mean, with traffic-light stops.
    speed = np.clip(mean_speed * (1.0 + _ar1(rng, n, 0.25, 0.97)), 0.0, 99.0)
    leg_now, _, _ = lap.locate(drive.lap_start_m + np.cumsum(speed / 3.6))
    areas = np.array([_leg_area(lap, int(i)) for i in leg_now])
    stop = np.zeros(n, dtype=bool)
    i = 0
    while i < n:
        if areas[i] in URBAN_AREAS and rng.random() < 0.02:
            length = int(rng.integers(5, 40))
            stop[i : i + length] = True
            i += length
        i += 1
    speed[stop] = 0.0
    pos_m = drive.lap_start_m + np.cumsum(speed / 3.6)
    leg, lat, lon = lap.locate(pos_m)
    areas = np.array([area_of(a, b) for a, b in zip(lat, lon)], dtype=object)
    lat = lat + rng.normal(0.0, 4e-6, n)
    lon = lon + rng.normal(0.0, 6e-6, n)

    radio = _radio(rng, cells, lat, lon, areas, drive)
    weather = _weather(rng, drive, n)
    pos_lap = np.mod(pos_m, lap.length_m)
    street = _street_names(lap, leg, pos_m)

    cols: dict[str, np.ndarray] = {}
    cols[TIMESTAMP_COLUMN] = np.array(
        [drive.start + dt.timedelta(seconds=s) for s in range(n)], dtype=object
    )
    cols[OPERATOR_COLUMN] = np.full(n, drive.operator, dtype=np.int64)
    cols[AREA_COLUMN] = areas
    direction, qos, target = drive.scenario
    cols["direction"] = np.full(n, direction, dtype=object)
    cols["measured_qos"] = np.full(n, qos, dtype=object)
    cols["device"] = np.full(n, drive.device, dtype=object)
    cols["target_datarate"] = np.full(n, target, dtype=np.int64)
    cols.update(radio)
    cols["Latitude"] = lat
    cols["Longitude"] = lon
    cols["Altitude"] = (
        36.0
        + 7.0 * np.sin(2 * np.pi * pos_lap / lap.length_m)
        + rng.normal(0, 1.0, n)
        - 8.0 * (areas == "Tunnel")
    )
    cols["speed_kmh"] = speed
    cols["COG"] = np.mod(lap.leg_heading_deg[leg] + rng.normal(0.0, 4.0, n), 360.0)
    cols["Pos_in_Ref_Round"] = pos_lap
    cols.update(weather)
    jam_base = np.where(np.isin(areas, ["Avenue", "Highway"]), 4.0, 2.5)
    cols["Traffic_Jam_Factor"] = np.clip(jam_base + _ar1(rng, n, 1.2, 0.995), 0.0, 10.0)
    cols["Traffic_Street_Name"] = street
    cols["Traffic_Distance"] = np.clip(rng.exponential(20.0, n), 0.0, 268.3)
    return cols


def _leg_area(lap: _Lap, leg: int) -> str:
    """Area of a leg's midpoint."""
    lat = 0.5 * (lap.starts[leg, 0] + lap.ends[leg, 0])
    lon = 0.5 * (lap.starts[leg, 1] + lap.ends[leg, 1])
    return area_of(lat, lon)


def _street_names(lap: _Lap, leg: np.ndarray, pos_m: np.ndarray) -> np.ndarray:
    """Street of each lap position: each leg is split evenly among its streets."""
    names = np.empty(len(leg), dtype=object)
    frac = (np.mod(pos_m, lap.length_m) - lap.leg_offset_m[leg]) / lap.leg_length_m[leg]
    for i, (leg_index, f) in enumerate(zip(leg, frac)):
        streets = LAP_LEGS[leg_index][2]
        names[i] = streets[min(int(f * len(streets)), len(streets) - 1)]
    return names


def _radio(rng, cells, lat, lon, areas, drive: _Drive) -> dict[str, np.ndarray]:
    """Serving cell, RSRP/RSRQ/RSSI/SNR branches, MCS, RBs, TB sizes, throughput."""
    n = len(lat)
    cell_lat = np.array([c.lat for c in cells])
    cell_lon = np.array([c.lon for c in cells])
    dist_m = np.hypot(
        (lat[:, None] - cell_lat[None, :]) * METRES_PER_DEG_LAT,
        (lon[:, None] - cell_lon[None, :]) * METRES_PER_DEG_LON,
    )
    power = np.array([c.power_dbm for c in cells])
    rx = power[None, :] - 33.0 * np.log10(np.maximum(dist_m, 30.0) / 30.0)

    # Serving cell with 3 dB hysteresis.
    serving = np.empty(n, dtype=np.int64)
    current = int(np.argmax(rx[0]))
    for i in range(n):
        best = int(np.argmax(rx[i]))
        if rx[i, best] > rx[i, current] + 3.0:
            current = best
        serving[i] = current
    handover = np.concatenate([[False], serving[1:] != serving[:-1]])

    area_loss = np.array([AREA_RADIO[a][0] for a in areas])
    rsrp = rx[np.arange(n), serving] - area_loss + _ar1(rng, n, 5.0, 0.96)
    rsrp = np.clip(rsrp, -140.0, -55.0)
    snr = 11.0 + 0.58 * (rsrp + 88.0) + _ar1(rng, n, 3.0, 0.9) - 4.0 * handover
    snr = np.clip(snr, -19.0, 30.0)
    rsrq = np.clip(-11.0 + 0.3 * (snr - 11.0) + rng.normal(0.0, 1.6, n), -30.0, -0.5)
    rssi = rsrp + 30.0 + _ar1(rng, n, 3.0, 0.9)

    def branches(x, spread, cap=None):
        one = x + rng.normal(0.0, spread, n)
        two = x + rng.normal(0.0, spread, n)
        if cap is not None:
            one, two = np.clip(one, *cap), np.clip(two, *cap)
        return one, two

    rsrp_1, rsrp_2 = branches(rsrp, 2.5)
    rsrq_1, rsrq_2 = branches(rsrq, 1.0, (-30.0, -0.5))
    rssi_1, rssi_2 = branches(rssi, 2.5)
    snr_1, snr_2 = branches(snr, 2.0, (-19.5, 30.0))

    earfcn = np.array([cells[s].earfcn for s in serving], dtype=np.float64)
    carrier = [CARRIERS[int(e)] for e in earfcn]
    freq_mhz = np.array([c[0] for c in carrier])
    band = np.array([c[1] for c in carrier])
    bandwidth = np.array([c[2] for c in carrier], dtype=object)
    bandwidth_mhz = np.array([float(c[2]) for c in carrier])

    mcs = np.clip(0.9 * snr + 5.0 + rng.normal(0.0, 1.5, n), 0.0, 28.0)
    direction, qos, target = drive.scenario
    efficiency = (0.2 + 0.18 * mcs) * rng.uniform(0.35, 1.0, n)
    if qos == "delay":
        datarate = target * rng.uniform(0.95, 1.02, n)
    elif direction == "downlink":
        datarate = np.minimum(bandwidth_mhz * 1e6 * efficiency, 2.7e8)
    else:
        datarate = np.minimum(0.35 * bandwidth_mhz * 1e6 * efficiency, 7.5e7)
    datarate = np.maximum(datarate, 851.0)

    heavy_dl = direction == "downlink" and qos == "datarate"
    heavy_ul = direction == "uplink" and qos == "datarate"
    dl_rbs = (
        (rng.uniform(3e4, 1e5, n) if heavy_dl else rng.uniform(60, 260, n))
        * bandwidth_mhz
        / 20.0
    )
    ul_rbs = (
        (rng.uniform(2e4, 9e4, n) if heavy_ul else rng.uniform(300, 1500, n))
        * bandwidth_mhz
        / 20.0
    )
    dl_tb = (
        datarate / 8.0 * rng.uniform(0.9, 1.1, n)
        if heavy_dl
        else rng.uniform(1500, 12000, n)
    )
    ul_tb = (
        datarate / 8.0 * rng.uniform(0.9, 1.1, n)
        if heavy_ul
        else rng.uniform(9000, 60000, n)
    )
    tx_power = np.clip(12.0 - 0.6 * (rsrp + 88.0) + rng.normal(0.0, 3.0, n), 0.0, 23.0)
    tx_power[rng.random(n) < 0.3] = 127.0

    out = {
        "PCell_E-ARFCN": earfcn,
        "PCell_Downlink_Num_RBs": np.round(dl_rbs),
        "PCell_Downlink_TB_Size": np.round(dl_tb),
        "PCell_Uplink_Num_RBs": np.round(ul_rbs),
        "PCell_Uplink_TB_Size": np.round(ul_tb),
        "PCell_Uplink_Tx_Power_(dBm)": tx_power,
        "PCell_Downlink_frequency": earfcn.copy(),
        "PCell_Uplink_frequency": earfcn + 18000.0,
        "PCell_freq_MHz": freq_mhz,
        "PCell_Downlink_bandwidth_MHz": bandwidth,
        "PCell_Uplink_bandwidth_MHz": bandwidth.copy(),
        "PCell_Band_Indicator": band,
        "PCell_Downlink_Average_MCS": mcs,
        "PCell_Cell_ID": np.array([cells[s].pci for s in serving], dtype=np.float64),
        "PCell_Cell_Identity": np.array(
            [cells[s].eci for s in serving], dtype=np.float64
        ),
        "PCell_RSRP_1": rsrp_1,
        "PCell_RSRP_2": rsrp_2,
        "PCell_RSRP_max": np.maximum(rsrp_1, rsrp_2),
        "PCell_RSRQ_1": rsrq_1,
        "PCell_RSRQ_2": rsrq_2,
        "PCell_RSRQ_max": np.maximum(rsrq_1, rsrq_2),
        "PCell_RSSI_1": rssi_1,
        "PCell_RSSI_2": rssi_2,
        "PCell_RSSI_max": rssi_2.copy(),  # the real table's RSSI_max copies RSSI_2
        "PCell_SNR_1": snr_1,
        "PCell_SNR_2": snr_2,
    }
    out.update(_mcs_histogram(rng, mcs, dl_rbs))

    area_ping = np.array([AREA_RADIO[a][1] for a in areas])
    ping = (
        rng.lognormal(math.log(38.0), 0.35, n)
        * area_ping
        * (1.0 + 0.04 * np.maximum(0.0, 5.0 - snr))
    )
    if qos == "datarate":
        loaded = rng.random(n) < 0.6
        ping[loaded] *= rng.lognormal(math.log(10.0), 0.8, int(loaded.sum()))
    ping[handover] *= 3.0
    outliers = rng.random(n) < 0.002
    ping[outliers] = rng.uniform(1e4, 1.1e5, int(outliers.sum()))
    jitter = rng.lognormal(math.log(1e-3), 1.2, n)
    jitter_outliers = rng.random(n) < 0.001
    jitter[jitter_outliers] = 10.0 ** rng.uniform(3, 8, int(jitter_outliers.sum()))
    out.update({"jitter": jitter, "ping_ms": ping, "datarate": datarate})
    return out


def _mcs_histogram(rng, mcs: np.ndarray, dl_rbs: np.ndarray) -> dict[str, np.ndarray]:
    """RBs per MCS bin: bins near the average MCS filled, far bins mostly NaN."""
    n = len(mcs)
    k = np.arange(32)[None, :]
    distance = np.abs(k - mcs[:, None])
    present = rng.random((n, 32)) < np.exp(-0.5 * (distance / 2.0) ** 2) * 0.9
    present[:, 0] |= rng.random(n) < 0.6
    present[:, 31] |= rng.random(n) < 0.5
    weight = np.where(present, np.exp(-0.5 * (distance / 2.0) ** 2) + 0.02, 0.0)
    weight /= np.maximum(weight.sum(axis=1, keepdims=True), 1e-9)
    values = np.round(weight * dl_rbs[:, None] * 2.0) / 2.0
    values = np.where(present & (values >= 0.5), values, np.nan)
    return {key: values[:, i] for i, key in enumerate(MCS_KEYS)}


def _weather(rng, drive: _Drive, n: int) -> dict[str, np.ndarray]:
    """Hourly weather: constant within the hour, tied to hour of day and day."""
    hours = np.array(
        [(drive.start + dt.timedelta(seconds=s)).hour for s in range(n)],
        dtype=np.float64,
    )
    day = drive.start.day - 22
    temperature = np.clip(
        17.6 + 0.8 * day + 4.2 * np.sin(np.pi * (hours - 8.0) / 12.0), 17.4, 23.88
    )
    uv = np.clip(np.round(1.0 + 3.0 * np.sin(np.pi * (hours - 7.0) / 12.0)), 1.0, 4.0)
    hour_seed = (drive.start.day * 24 + hours).astype(np.int64)
    jitter = (np.sin(hour_seed * 12.9898) * 43758.5453) % 1.0  # per-hour constant
    precip = np.round(0.34 * jitter**3, 4)
    return {
        "precipIntensity": precip,
        "precipProbability": np.round(np.clip(0.02 + 1.2 * precip, 0.0, 0.47), 2),
        "temperature": np.round(temperature, 2),
        "apparentTemperature": np.round(temperature, 2),
        "dewPoint": np.round(12.0 + 0.9 * day + 1.2 * jitter, 2),
        "humidity": np.round(
            np.clip(0.77 - 0.035 * (temperature - 17.4), 0.55, 0.77), 2
        ),
        "pressure": np.round(1013.0 + 2.8 * day + 1.5 * jitter, 1),
        "windSpeed": np.round(1.96 + 2.4 * jitter, 2),
        "cloudCover": np.round(0.76 + 0.24 * (1.0 - jitter**2), 2),
        "uvIndex": uv,
        "visibility": np.full(n, 16.093),
    }


def _apply_missing(rng, cols: dict[str, np.ndarray]) -> None:
    """Blank whole column families per row, with the shares of MISSING_SHARE."""
    n = len(cols[TIMESTAMP_COLUMN])

    def blank(keys, share):
        mask = rng.random(n) < share
        for key in keys:
            column = cols[key]
            if column.dtype == object:
                column[mask] = None
            else:
                column[mask] = np.nan
        return mask

    # A row without a GPS fix lacks its position and everything looked up from
    # it (weather, traffic), except the round position and the jam factor,
    # which have missing shares of their own.
    gps_keys = [
        key
        for key in GPS_KEYS + SIDE_INFO_KEYS
        if key not in ("Pos_in_Ref_Round", "Traffic_Jam_Factor")
    ]
    gps_mask = blank(gps_keys, MISSING_SHARE["gps"])
    cols[AREA_COLUMN][gps_mask] = None
    cols["Pos_in_Ref_Round"][gps_mask] = np.nan
    blank(["Pos_in_Ref_Round"], MISSING_SHARE["pos"])
    blank(["Traffic_Jam_Factor"], MISSING_SHARE["traffic_jam"])
    phy_keys = [k for k in TEXT_KEYS if k.startswith("PCell_")]
    blank(phy_keys, MISSING_SHARE["phy"])
    rrc_keys = [
        "PCell_Downlink_frequency",
        "PCell_Uplink_frequency",
        "PCell_Downlink_bandwidth_MHz",
        "PCell_Uplink_bandwidth_MHz",
        "PCell_Band_Indicator",
        "PCell_Cell_ID",
        "PCell_Cell_Identity",
    ]
    blank(rrc_keys, MISSING_SHARE["rrc"] - MISSING_SHARE["phy"])
    blank(["jitter", "datarate"], MISSING_SHARE["iperf"])
    blank(["ping_ms"], MISSING_SHARE["ping"])


def _to_arrow(cols: dict[str, np.ndarray]) -> pa.Table:
    """Arrow table with the real table's types (timestamp tz Europe/Berlin)."""
    arrays = {
        TIMESTAMP_COLUMN: pa.array(
            list(cols[TIMESTAMP_COLUMN]), pa.timestamp("ns", tz=BERLIN)
        ),
        OPERATOR_COLUMN: pa.array(cols[OPERATOR_COLUMN], pa.int64()),
        AREA_COLUMN: pa.array(list(cols[AREA_COLUMN]), pa.string()),
    }
    for key in TEXT_KEYS:
        values = cols[key]
        if key in STRING_KEYS:
            arrays[key] = pa.array(list(values), pa.string())
        elif values.dtype == np.int64:
            arrays[key] = pa.array(values, pa.int64())
        else:
            arrays[key] = pa.array(values.astype(np.float64), pa.float64())
    return pa.table(arrays)
