"""The constant tables compiled into ``_core`` equal the standard's.

Each table is re-hashed from the values the module exposes, as nnc-format
§3.3 defines the hashes: SHA-256 over the comma-joined decimal values.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from flwr_nncodec import _core

from conftest import find_shared_file

TABLES_JSON = find_shared_file("nnc-tables.json")


def _sha256_of_values(values) -> str:
    return hashlib.sha256(",".join(str(v) for v in values).encode()).hexdigest()


@pytest.fixture(scope="module")
def reference():
    if TABLES_JSON is None:
        pytest.skip("nnc-tables.json not available")
    return json.loads(TABLES_JSON.read_text())


@pytest.mark.parametrize("key", ["rlps_table", "adaptation_curve"])
def test_flat_table_hash_matches_standard(reference, key):
    # Prepare
    values = _core.tables()[key]

    # Execute
    digest = _sha256_of_values(values)

    # Assert
    assert digest == reference[key]["sha256_of_comma_joined"]
    assert values == reference[key]["values"]


def test_init_sets_hash_matches_standard(reference):
    init_sets = _core.tables()["init_sets"]
    flat = [v for row in init_sets for v in row]

    assert len(init_sets) == 9
    assert _sha256_of_values(flat) == reference["init_sets"]["sha256_of_comma_joined"]


def test_dq_transitions_match_standard(reference):
    transitions = [list(row) for row in _core.tables()["dq_state_transition"]]

    assert transitions == reference["dq_state_transition"]["values"]


def test_documented_hash_prefixes():
    # The hashes quoted in nnc-format §3.3, independent of the json file.
    tables = _core.tables()
    flat_init = [v for row in tables["init_sets"] for v in row]

    assert _sha256_of_values(tables["rlps_table"]) == (
        "b6ddfb9a693d736c46f24b60e698a06a6640fe518272a7c41d7320531f6d8f5a")
    assert _sha256_of_values(tables["adaptation_curve"]) == (
        "7bb887b1875061afc7eb38f587ed885d75a09c635cc24afb65647353a3aa8507")
    assert _sha256_of_values(flat_init).startswith("13aa5660")
    assert _sha256_of_values(flat_init).endswith("3528016a")
