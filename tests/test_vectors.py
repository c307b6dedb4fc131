"""Conformance: flwr_nncodec against vectors written by the reference NNCodec 2.1.3.

The vectors (tests/vectors/, see its README.md) hold NNCodec's bitstreams, the
encoder inputs and NNCodec's decoded arrays. No NNCodec is needed here:

* every vector decodes bit-exact to NNCodec's arrays, with the same tensor
  names in the same order (TCA sequences through ``BaseState`` advanced with
  ``update_base=True``, and also from each step's stored base);
* ``inspect`` finds every NNR unit at NNCodec's offsets, sizes and types, and
  reads the NDU header fields NNCodec's decoder saw (shape, qp, dq_flag,
  codebook size, node ids, TCA flag);
* golden round trip: our encoder on the vector's input, with the vector's
  options, gives a stream our decoder maps exactly to our reconstruction;
* where NNCodec's stream follows from its inputs alone (URQ, param_opt off),
  our encoder writes the same bytes.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    VECTORS_DIR,
    assert_bit_exact,
    codec_options,
    load_manifest,
    load_vector_arrays,
    tensors_with_prefix,
)

import flwr_nncodec as nnc

MANIFEST = load_manifest()
VECTORS = MANIFEST["vectors"]
SINGLE = sorted(n for n, v in VECTORS.items()
                if v["kind"] == "single" and "nncodec_error" not in v)
SEQUENCES = sorted(n for n, v in VECTORS.items() if v["kind"] == "sequence")
NO_REFERENCE = sorted(n for n, v in VECTORS.items() if "nncodec_error" in v)

UNIT_TYPE_CODES = {"STR": 0, "MPS": 1, "LPS": 2, "TPL": 3, "QNT": 4, "NDU": 5, "AGG": 6}


def make_base(facts: dict, arrays: dict[str, np.ndarray]) -> nnc.BaseState:
    """A BaseState holding NNCodec's approx_param_base for one step."""
    return nnc.BaseState(
        device_id=int(facts["device_id"]),
        parameters={k: np.asarray(v, np.int32) for k, v in arrays.items()},
        put_node_depth={k: int(v) for k, v in facts["put_node_depth"].items()},
        parameter_id={k: int(v) for k, v in facts["parameter_id"].items()},
    )


def assert_base_equals(base: nnc.BaseState, facts: dict, arrays: dict, where: str):
    assert int(base.device_id) == facts["device_id"], f"{where}: device_id"
    assert {k: int(v) for k, v in base.put_node_depth.items()} == \
        facts["put_node_depth"], f"{where}: put_node_depth"
    assert {k: int(v) for k, v in base.parameter_id.items()} == \
        facts["parameter_id"], f"{where}: parameter_id"
    assert sorted(base.parameters) == sorted(arrays), f"{where}: base tensor names"
    for name, expected in arrays.items():
        actual = np.asarray(base.parameters[name])
        assert actual.dtype == np.int32, f"{where}: base {name!r} dtype {actual.dtype}"
        assert_bit_exact(actual, expected, f"{where}: base {name!r}")


def assert_decoded_like_reference(decoded, facts, names, arrays, prefix, where):
    assert list(decoded) == names, f"{where}: tensor names/order {list(decoded)}"
    for name in names:
        reference = arrays[f"{prefix}out:{name}"]
        if facts[name]["dtype"] == "int32":
            assert decoded[name].dtype == np.int32, f"{where}: {name!r} dtype"
        else:
            assert decoded[name].dtype.kind == "f", f"{where}: {name!r} dtype"
        assert_bit_exact(decoded[name], reference, f"{where}: {name!r}",
                         levels=arrays.get(f"{prefix}q:{name}"))


def assert_units_like_reference(bitstream: bytes, expected_units, facts, names,
                                where, *, ndu_header=None):
    """``inspect`` agrees with NNCodec on framing and on every NDU header.

    ``facts`` are NNCodec's per-tensor decoder facts (shape, qp, dq_flag);
    ``ndu_header(name)`` gives further expected NDU fields (sequences).
    """
    units = nnc.inspect(bitstream)
    assert len(units) == len(expected_units), f"{where}: {len(units)} units"
    for index, (unit, expected) in enumerate(zip(units, expected_units)):
        here = f"{where}: unit #{index}"
        assert unit["type"] == expected["type"], f"{here} type {unit['type']}"
        assert unit["type_code"] == UNIT_TYPE_CODES[expected["type"]], here
        assert int(unit["offset"]) == expected["offset"], f"{here} offset"
        assert int(unit["size"]) == expected["size"], f"{here} size"
        assert bool(unit["long_size"]) == expected["long_size"], f"{here} size form"

    ndus = [u for u in units if u["type"] == "NDU"]
    assert [u["name"] for u in ndus] == names, f"{where}: NDU names"
    for unit in ndus:
        name = unit["name"]
        here = f"{where}: NDU {name!r}"
        tensor = facts[name]
        assert list(unit["shape"]) == tensor["shape"], f"{here} shape"
        if tensor.get("approx_method") == "skip":
            assert unit["payload_type"] == "INT", f"{here} payload type"
        else:
            assert unit["payload_type"] == "FLOAT", f"{here} payload type"
            assert int(unit["qp"]) == tensor["qp"], f"{here} qp"
            assert bool(unit["dq"]) == bool(tensor["dq_flag"]), f"{here} dq_flag"
        codebook = tensor.get("codebook_size", 0)
        assert int(unit.get("codebook_size") or 0) == codebook, f"{here} codebook"
        for field, value in (ndu_header(name) if ndu_header else {}).items():
            assert unit[field] == value, f"{here} {field}: {unit[field]} != {value}"


def with_codebook_sizes(entry: dict, arrays=None, prefix: str = "") -> dict:
    """Per-tensor decoder facts plus the size of NNCodec's decoded codebook."""
    arrays = load_vector_arrays(entry) if arrays is None else arrays
    facts = {name: dict(f) for name, f in entry["decoded"].items()}
    for name, tensor in facts.items():
        codebook = arrays.get(f"{prefix}cb:{name}")
        tensor["codebook_size"] = 0 if codebook is None else int(codebook.size)
    return facts


def read_stream(file_name: str) -> bytes:
    return (VECTORS_DIR / file_name).read_bytes()


# --------------------------------------------------------------------------
# NNCodec stream -> our decoder


@pytest.mark.parametrize("name", SINGLE)
def test_decode_matches_nncodec(name):
    entry = VECTORS[name]
    arrays = load_vector_arrays(entry)
    decoded = nnc.decode(read_stream(entry["bitstream"]))
    assert_decoded_like_reference(decoded, entry["decoded"], entry["decoded_names"],
                                  arrays, "", name)


@pytest.mark.parametrize("name", SINGLE)
def test_inspect_finds_every_unit(name):
    entry = VECTORS[name]
    inputs = list(entry["inputs"])
    assert_units_like_reference(
        read_stream(entry["bitstream"]), entry["units"], with_codebook_sizes(entry),
        entry["decoded_names"], name,
        ndu_header=lambda t: {"parameter_id": inputs.index(t), "put_node_depth": 0,
                              "device_id": 0, "tca": False,
                              "parent_node_id_present": False})


@pytest.mark.parametrize("name", SEQUENCES)
def test_sequence_decodes_with_advancing_base(name):
    entry = VECTORS[name]
    arrays = load_vector_arrays(entry)
    base = make_base(entry["initial_base"], {})

    for index, step in enumerate(entry["steps"]):
        where = f"{name} step {index}"
        stored_base = tensors_with_prefix(arrays, f"s{index}:base:")
        assert_base_equals(base, step["base_before"], stored_base, where)

        bitstream = read_stream(step["bitstream"])
        before = step["base_before"]
        inputs = list(step["inputs"])
        assert_units_like_reference(
            bitstream, step["units"], with_codebook_sizes(step, arrays, f"s{index}:"),
            step["decoded_names"], where,
            ndu_header=lambda t: {
                "parameter_id": inputs.index(t),
                "put_node_depth": before["put_node_depth"].get(t, 0) + 1,
                "device_id": entry["options"]["device_id"],
                "tca": entry["options"]["tca"] and t in before["parameters"],
                "parent_node_id_present": True})
        decoded = nnc.decode(bitstream, base=base, update_base=True)
        assert_decoded_like_reference(decoded, step["decoded"], step["decoded_names"],
                                      arrays, f"s{index}:", where)

    last = entry["steps"][-1]["base_after"]
    assert {k: int(v) for k, v in base.put_node_depth.items()} == last["put_node_depth"]


@pytest.mark.parametrize("name", SEQUENCES)
def test_sequence_step_decodes_from_stored_base(name):
    entry = VECTORS[name]
    arrays = load_vector_arrays(entry)
    for index, step in enumerate(entry["steps"]):
        base = make_base(step["base_before"],
                         tensors_with_prefix(arrays, f"s{index}:base:"))
        decoded = nnc.decode(read_stream(step["bitstream"]), base=base)
        assert_decoded_like_reference(decoded, step["decoded"], step["decoded_names"],
                                      arrays, f"s{index}:", f"{name} step {index}")
        # Without update_base the base is left as it was.
        assert_base_equals(base, step["base_before"],
                           tensors_with_prefix(arrays, f"s{index}:base:"),
                           f"{name} step {index} (no update)")


def test_base_state_round_trips_through_plain_arrays():
    entry = VECTORS[SEQUENCES[0]]
    arrays = load_vector_arrays(entry)
    step = entry["steps"][2]
    stored = tensors_with_prefix(arrays, "s2:base:")
    base = make_base(step["base_before"], stored)

    plain = base.to_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in plain.values())
    assert_base_equals(nnc.BaseState.from_arrays(plain), step["base_before"], stored,
                       "from_arrays(to_arrays())")


def test_matrix_is_complete():
    """The committed vectors cover every axis the README promises."""
    axes = [v["axes"] for v in VECTORS.values()]
    assert len(SINGLE) >= 70 and len(SEQUENCES) >= 6
    assert len(PARITY_SINGLE) >= 1 and len(PARITY_SEQUENCES) >= 2
    assert {a.get("quantiser") for a in axes} == {"urq", "dq"}
    qps = {a["qp"] for a in axes if "qp" in a}
    assert min(qps) <= -60 and max(qps) >= -10 and len(qps) >= 6
    assert {True, False} <= {a.get("row_skipping") for a in axes}
    assert {a.get("bitdepth") for a in axes} >= {4, 8}
    assert any(a.get("codebook") for a in axes)
    assert any(a.get("long_unit") for a in axes)
    assert any(a.get("dtype", "").startswith("int32") for a in axes)
    sequences = [VECTORS[n] for n in SEQUENCES]
    assert all(len(v["steps"]) >= 3 for v in sequences)
    assert any(v["options"]["tca"] for v in sequences)
    long_units = [u for v in VECTORS.values() for u in v.get("units", [])
                  if u["long_size"]]
    assert long_units and all(u["size"] >= 32768 for u in long_units)


# --------------------------------------------------------------------------
# Our encoder -> our decoder (golden round trip on the vectors' inputs)


@pytest.mark.parametrize("name", SINGLE + NO_REFERENCE)
def test_our_encoder_round_trips_vector_input(name):
    entry = VECTORS[name]
    options = codec_options(entry)
    arrays = load_vector_arrays(entry)
    params = tensors_with_prefix(arrays, "in:")

    result = nnc.encode_with_reconstruction(params, **options)
    decoded = nnc.decode(result.bitstream)

    assert list(decoded) == list(params), f"{name}: names {list(decoded)}"
    for tensor, value in decoded.items():
        assert_bit_exact(value, result.reconstruction[tensor], f"{name}: {tensor!r}")
        assert value.shape == (params[tensor].shape or (1,))


def _parity_vector(entry: dict) -> bool:
    options = entry["options"]
    return (not options["param_opt"] and not options["use_dq"]
            and options["approx_method"] == "uniform" and not options["lambda_scale"])


PARITY_SINGLE = [n for n in SINGLE if _parity_vector(VECTORS[n])]
PARITY_SEQUENCES = [n for n in SEQUENCES if _parity_vector(VECTORS[n])]


@pytest.mark.parametrize("name", PARITY_SINGLE + PARITY_SEQUENCES)
def test_our_encoder_reproduces_nncodec_bytes_without_param_opt(name):
    """Encoder parity where NNCodec's stream is fully determined by its inputs.

    With param_opt=False every eco flag is 0, and URQ with lambda_scale=0
    quantises by rounding (nnc-format Q17), so the bytes follow from the syntax
    alone. DQ is left out: the trellis may break ties between equal-error paths
    either way (both streams are valid), and eco choices are free as well.
    """
    entry = VECTORS[name]
    arrays = load_vector_arrays(entry)
    options = codec_options(entry)
    if entry["kind"] == "single":
        ours = nnc.encode(tensors_with_prefix(arrays, "in:"), **options)
        assert ours == read_stream(entry["bitstream"]), _first_difference(
            ours, read_stream(entry["bitstream"]), name)
        return

    base = make_base(entry["initial_base"], {})
    for index, step in enumerate(entry["steps"]):
        params = tensors_with_prefix(arrays, f"s{index}:in:")
        ours = nnc.encode(params, **options, base=base, update_base=True)
        reference = read_stream(step["bitstream"])
        assert ours == reference, _first_difference(ours, reference,
                                                    f"{name} step {index}")


def _first_difference(ours: bytes, reference: bytes, where: str) -> str:
    index = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b),
                 min(len(ours), len(reference)))
    return (f"{where}: {len(ours)} bytes vs NNCodec's {len(reference)}, first "
            f"difference at byte {index}")


@pytest.mark.parametrize("name", SEQUENCES)
def test_our_encoder_round_trips_sequence(name):
    entry = VECTORS[name]
    arrays = load_vector_arrays(entry)
    options = codec_options(entry)
    encoder_base = make_base(entry["initial_base"], {})
    decoder_base = make_base(entry["initial_base"], {})

    for index in range(len(entry["steps"])):
        where = f"{name} step {index}"
        params = tensors_with_prefix(arrays, f"s{index}:in:")
        result = nnc.encode_with_reconstruction(
            params, **options, base=encoder_base, update_base=True)
        decoded = nnc.decode(result.bitstream, base=decoder_base, update_base=True)

        for tensor, value in decoded.items():
            assert_bit_exact(value, result.reconstruction[tensor],
                             f"{where}: {tensor!r}")
        for tensor in set(params) - set(decoded):
            assert not np.any(result.reconstruction.get(tensor, 0)), (
                f"{where}: {tensor!r} left out of the stream but not zero")

        encoder_plain = encoder_base.to_arrays()
        decoder_plain = decoder_base.to_arrays()
        assert sorted(encoder_plain) == sorted(decoder_plain), where
        for key, value in encoder_plain.items():
            assert np.array_equal(value, decoder_plain[key]), f"{where}: base {key}"
