"""Column schema of the Berlin V2X cellular table as the EuCNC 2025 study uses it.

The five text groups, their key order, the area bounding boxes and the client
order follow the published preprocessing (eucnc-experiment.md §2-§3).
"""

from __future__ import annotations

PROTOCOL_KEYS: tuple[str, ...] = (
    "direction",
    "measured_qos",
    "device",
    "target_datarate",
)

MCS_KEYS: tuple[str, ...] = tuple(f"PCell_Downlink_RBs_MCS_{k}" for k in range(32))

CELL_CONFIG_KEYS: tuple[str, ...] = (
    "PCell_E-ARFCN",
    "PCell_Downlink_Num_RBs",
    "PCell_Downlink_TB_Size",
    "PCell_Uplink_Num_RBs",
    "PCell_Uplink_TB_Size",
    "PCell_Uplink_Tx_Power_(dBm)",
    "PCell_Downlink_frequency",
    "PCell_Uplink_frequency",
    "PCell_freq_MHz",
    "PCell_Downlink_bandwidth_MHz",
    "PCell_Uplink_bandwidth_MHz",
    "PCell_Band_Indicator",
    *MCS_KEYS,
    "PCell_Downlink_Average_MCS",
    "PCell_Cell_ID",
    "PCell_Cell_Identity",
)

GPS_KEYS: tuple[str, ...] = (
    "Latitude",
    "Longitude",
    "Altitude",
    "speed_kmh",
    "COG",
    "Pos_in_Ref_Round",
)

SIDE_INFO_KEYS: tuple[str, ...] = (
    "precipIntensity",
    "precipProbability",
    "temperature",
    "apparentTemperature",
    "dewPoint",
    "humidity",
    "pressure",
    "windSpeed",
    "cloudCover",
    "uvIndex",
    "visibility",
    "Traffic_Jam_Factor",
    "Traffic_Street_Name",
    "Traffic_Distance",
)

QOS_KEYS: tuple[str, ...] = (
    "PCell_RSRP_1",
    "PCell_RSRP_2",
    "PCell_RSRP_max",
    "PCell_RSRQ_1",
    "PCell_RSRQ_2",
    "PCell_RSRQ_max",
    "PCell_RSSI_1",
    "PCell_RSSI_2",
    "PCell_RSSI_max",
    "PCell_SNR_1",
    "PCell_SNR_2",
    "jitter",
    "ping_ms",
    "datarate",
)

# The five groups in serialisation order; " --> " separates them.
TEXT_GROUPS: tuple[tuple[str, ...], ...] = (
    PROTOCOL_KEYS,
    CELL_CONFIG_KEYS,
    GPS_KEYS,
    SIDE_INFO_KEYS,
    QOS_KEYS,
)
TEXT_KEYS: tuple[str, ...] = tuple(key for group in TEXT_GROUPS for key in group)

# Columns holding strings; every other text key is numeric (float64, except
# target_datarate which is int64 in the real table).
STRING_KEYS: frozenset[str] = frozenset(
    {
        "direction",
        "measured_qos",
        "device",
        "PCell_Downlink_bandwidth_MHz",
        "PCell_Uplink_bandwidth_MHz",
        "Traffic_Street_Name",
    }
)
INTEGER_KEYS: frozenset[str] = frozenset({"target_datarate"})

# Metadata columns the loader needs besides the text keys.
TIMESTAMP_COLUMN = "timestamp"
OPERATOR_COLUMN = "operator"
AREA_COLUMN = "area"
REQUIRED_COLUMNS: tuple[str, ...] = (OPERATOR_COLUMN, AREA_COLUMN, *TEXT_KEYS)

# Telekom (operator 1) is the only operator the study keeps.
TELEKOM_OPERATOR = 1

# Client order: Flower partition-id k trains on CLIENT_AREAS[k].
CLIENT_AREAS: tuple[str, ...] = ("Residential", "Park", "Avenue", "Highway", "Tunnel")

# Columns that are empty for Telekom and dropped by the reference.
EMPTY_TELEKOM_COLUMNS: tuple[str, ...] = (
    "SCell_Uplink_Num_RBs",
    "SCell_Uplink_TB_Size",
    "SCell_Uplink_Tx_Power_(dBm)",
)

# Bounding boxes of BerlinV2X utils.geotag, half-open [min, max) in degrees.
OVERALL_BOX = ((52.486692, 52.520097), (13.270979, 13.385214))
AREA_BOXES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "Avenue": ((52.510075, 52.520097), (13.270979, 13.336380)),
    "Park": ((52.486692, 52.520097), (13.336380, 13.385214)),
    "Residential": ((52.486692, 52.510075), (13.300602, 13.336380)),
    "Tunnel": ((52.486692, 52.496066), (13.270979, 13.286002)),
    "Highway": ((52.486692, 52.510075), (13.270979, 13.300602)),
}
# geotag checks the boxes in this order; the first match wins.
AREA_CHECK_ORDER: tuple[str, ...] = (
    "Avenue",
    "Park",
    "Residential",
    "Tunnel",
    "Highway",
)


def area_of(latitude_deg: float, longitude_deg: float) -> str:
    """Return the area name of one GPS fix, "UNKNOWN" outside the overall box."""
    (lat_lo, lat_hi), (lon_lo, lon_hi) = OVERALL_BOX
    if not (lat_lo <= latitude_deg < lat_hi and lon_lo <= longitude_deg < lon_hi):
        return "UNKNOWN"

    for area in AREA_CHECK_ORDER:
        (a_lat_lo, a_lat_hi), (a_lon_lo, a_lon_hi) = AREA_BOXES[area]
        if a_lat_lo <= latitude_deg < a_lat_hi and a_lon_lo <= longitude_deg < a_lon_hi:
            return area
    return "UNKNOWN"
