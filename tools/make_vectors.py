"""Write NNC conformance vectors with the reference NNCodec 2.1.3.

Run with the side venv's python (numpy<2, nncodec==2.1.3):

    .venv-nncodec/bin/python tools/make_vectors.py [--out tests/vectors]

Per vector it writes three files into the output folder:

* ``<name>.nnc`` (single bitstream) or ``<name>.<step>.nnc`` (sequence step):
  the bytes NNCodec's encoder produced;
* ``<name>.npz``: plain numeric arrays only (loads with allow_pickle=False):
  ``in:<tensor>`` the encoder input, ``out:<tensor>`` NNCodec's decoded array,
  ``q:<tensor>`` NNCodec's decoded integers before reconstruction (levels,
  reconstruction indices under DQ, codebook indices minus the zero offset),
  ``cb:<tensor>`` the decoded codebook (codebook tensors only); sequences
  prefix every key with ``s<step>:`` and add ``s<step>:base:<tensor>``, the
  decoder's integer TCA base before that step;
* the entry for it in ``manifest.json``: options in flwr_nncodec's naming, the
  exact keyword arguments given to ``nncodec.nnc.compress``, tensor names and
  shapes, per-NDU qp / dq_flag from NNCodec's decoder, unit framing, and for
  sequences the base state (device_id, put_node_depth, parameter_id) per step.

Everything is deterministic (fixed seeds, NNCodec's encoder has no randomness).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import logging
import sys
import types
from pathlib import Path

import numpy as np

log = logging.getLogger("make_vectors")

UNIT_TYPE_NAMES = {0: "STR", 1: "MPS", 2: "LPS", 3: "TPL", 4: "QNT", 5: "NDU", 6: "AGG"}

# Options in flwr_nncodec's naming; the encoder defaults that the vectors pin.
BASE_OPTIONS = {
    "qp": -32,
    "qp_density": 2,
    "nonweight_qp": -75,
    "use_dq": True,
    "row_skipping": True,
    "param_opt": True,
    "bitdepth": None,
    "approx_method": "uniform",
    "lambda_scale": 0.0,
    "compress_differences": False,
    "tca": False,
    "device_id": 0,
}


def import_nncodec_compression() -> types.ModuleType:
    """Import ``nncodec.nnc.compression``, tolerating a CPU torch + CUDA torchvision.

    NNCodec imports torchvision at module level (for its dataset helpers). The
    torchvision wheel that pip resolves next to the CPU build of torch is a CUDA
    build whose compiled ops cannot load; its fake-tensor registrations then
    raise RuntimeError on import. Those registrations are irrelevant to coding,
    so on that specific failure we import torchvision without them.
    """
    try:
        import torchvision  # noqa: F401
    except RuntimeError as error:
        log.warning("torchvision ops unavailable (%s); importing without them", error)
        for module_name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[module_name]
        stub_name = "torchvision._meta_registrations"
        sys.modules[stub_name] = types.ModuleType(stub_name)
        import torchvision  # noqa: F401

    from nncodec.nnc import compression

    return compression


def nncodec_kwargs(options: dict) -> dict:
    """Map flwr_nncodec option names to ``nncodec.nnc.compress`` keywords."""
    codebook_mode = options.get("nncodec_codebook_mode")
    if codebook_mode is None:
        codebook_mode = 2 if options["approx_method"] == "codebook" else 0

    return {
        "qp": options["qp"],
        "qp_density": options["qp_density"],
        "nonweight_qp": options["nonweight_qp"],
        "use_dq": options["use_dq"],
        "row_skipping": options["row_skipping"],
        "param_opt": options["param_opt"],
        "lambda_scale": options["lambda_scale"],
        "int_quant_bw": options["bitdepth"] or False,
        "codebook_mode": codebook_mode,
        "compress_differences": options["compress_differences"],
        "tca": options["tca"],
        "device_id": options["device_id"],
    }


def split_units(bitstream: bytes) -> list[dict]:
    """NNR unit framing (offset, size, type, long-size flag) of a whole stream."""
    units = []
    offset = 0
    while offset < len(bitstream):
        long_size = bitstream[offset] >> 7
        size_bytes = 4 if long_size else 2
        size = int.from_bytes(bitstream[offset:offset + size_bytes], "big")
        size &= (1 << (8 * size_bytes - 1)) - 1
        unit_type = bitstream[offset + size_bytes] >> 2
        units.append({
            "offset": offset,
            "size": size,
            "type": UNIT_TYPE_NAMES.get(unit_type, str(unit_type)),
            "long_size": bool(long_size),
        })
        if size < size_bytes + 1:
            raise ValueError(f"unit at byte {offset} has impossible size {size}")
        offset += size
    if offset != len(bitstream):
        raise ValueError(f"units end at byte {offset}, stream has {len(bitstream)}")
    return units


class Reference:
    """NNCodec's compress / decompress, keeping the decoder's integers."""

    def __init__(self):
        self.compression = import_nncodec_compression()
        from nncodec.nnc_core import approximator

        self._approximator = approximator
        self._original_rec = approximator.rec
        self._snapshot: dict | None = None

        def rec_with_snapshot(approx_data):
            # Called by decompress() once, right before reconstruction.
            self._snapshot = {
                "parameters": {
                    k: np.array(v, copy=True)
                    for k, v in approx_data["parameters"].items()
                },
                "qp": dict(approx_data.get("qp", {})),
                "dq_flag": dict(approx_data.get("dq_flag", {})),
                "approx_method": dict(approx_data.get("approx_method", {})),
                "codebooks": {
                    k: np.array(v, copy=True)
                    for k, v in approx_data.get("codebooks", {}).items()
                },
                "codebook_zero_offsets": dict(
                    approx_data.get("codebook_zero_offsets", {})
                ),
            }
            return self._original_rec(approx_data)

        approximator.rec = rec_with_snapshot

    def encode(self, params: dict, options: dict, base: dict | None) -> bytes:
        kwargs = nncodec_kwargs(options)
        with contextlib.redirect_stdout(io.StringIO()):
            bitstream = self.compression.compress(
                params,
                bitstream_path=None,
                return_bitstream=True,
                approx_param_base=base,
                update_base_param=base is not None,
                **kwargs,
            )
        return bytes(bitstream)

    def decode(self, bitstream: bytes, base: dict | None) -> tuple[dict, dict]:
        self._snapshot = None
        with contextlib.redirect_stdout(io.StringIO()):
            decoded = self.compression.decompress(
                bytearray(bitstream),
                approx_param_base=base,
                update_base_param=base is not None,
            )
        return dict(decoded), self._snapshot


# --------------------------------------------------------------------------
# Inputs


def gaussian(rng, shape, std=0.05):
    return rng.normal(0.0, std, shape).astype(np.float32)


def with_zero_rows(x, rows):
    x = x.copy()
    x[list(rows)] = 0.0
    return x


def with_outliers(rng, x, count, magnitude):
    x = x.copy()
    flat = x.reshape(-1)
    positions = rng.choice(flat.size, size=count, replace=False)
    signs = rng.choice([-1.0, 1.0], size=count)
    magnitudes = magnitude * rng.uniform(0.5, 1.0, count)
    flat[positions] = (signs * magnitudes).astype(np.float32)
    return x


def model_core(rng):
    """A small multi-tensor model: 2-D weight with zero rows, bias, 4-D conv."""
    return {
        "fc.weight": with_zero_rows(gaussian(rng, (12, 20)), [2, 3, 9]),
        "fc.bias": gaussian(rng, (20,), 0.02),
        "conv.weight": with_zero_rows(gaussian(rng, (4, 3, 3, 3), 0.1), [1]),
    }


def small_levels(rng, shape, values, scale):
    """Inputs drawn from a few multiples of ``scale`` (codebook-friendly)."""
    return (rng.choice(values, size=shape) * scale).astype(np.float32)


# --------------------------------------------------------------------------
# The matrix


class CaseList(list):
    """(name, axes, options, params) tuples; options start from BASE_OPTIONS."""

    def add(self, name, axes, params, **option_overrides):
        self.append((name, axes, {**BASE_OPTIONS, **option_overrides}, params))


def grid_cases(cases: CaseList) -> None:
    """Quantiser x qp x row skipping, on a multi-tensor model."""
    for use_dq in (False, True):
        for qp in (-60, -50, -44, -38, -32, -26, -18, -10):
            for row_skipping in (True, False):
                rng = np.random.default_rng(1000 + qp * 4 + 2 * use_dq + row_skipping)
                quantiser = "dq" if use_dq else "urq"
                rs = "rs" if row_skipping else "nors"
                cases.add(
                    f"grid_{quantiser}_qp{-qp}_{rs}",
                    {"quantiser": quantiser, "qp": qp, "row_skipping": row_skipping,
                     "shape": "multi", "model": "multi"},
                    model_core(rng),
                    qp=qp, use_dq=use_dq, row_skipping=row_skipping,
                )


def shape_cases(cases: CaseList) -> None:
    """Shapes, one tensor each (nonweight_qp = qp so 1-D tensors are not tiny)."""
    shapes = {
        "1x1": (1, 1), "7x1": (7, 1), "1x13": (1, 13), "2x3": (2, 3),
        "1d_1": (1,), "1d_37": (37,), "3x5x7x2": (3, 5, 7, 2),
        "5x1x3": (5, 1, 3), "scalar": (),
    }
    for use_dq in (False, True):
        quantiser = "dq" if use_dq else "urq"
        for shape_name, shape in shapes.items():
            rng = np.random.default_rng(2000 + len(cases))
            cases.add(
                f"shape_{shape_name}_{quantiser}",
                {"quantiser": quantiser, "shape": shape_name, "qp": -38},
                {"t": gaussian(rng, shape, 0.2)},
                qp=-38, nonweight_qp=-38, use_dq=use_dq,
            )


def zero_cases(cases: CaseList) -> None:
    """All-zero tensors and all-zero rows."""
    for use_dq in (False, True):
        quantiser = "dq" if use_dq else "urq"
        rng = np.random.default_rng(3000 + use_dq)
        cases.add(
            f"zeros_{quantiser}",
            {"quantiser": quantiser, "zeros": "tensors+rows", "model": "multi"},
            {
                "w": with_zero_rows(gaussian(rng, (6, 9)), [0, 4, 5]),
                "z2d": np.zeros((5, 8), np.float32),
                "z1d": np.zeros((11,), np.float32),
                "zrow_last": with_zero_rows(gaussian(rng, (4, 4)), [3]),
                "sub_step": np.full((3, 4), 1e-5, np.float32),
            },
            use_dq=use_dq,
        )
        cases.add(
            f"zeros_only_{quantiser}_nors",
            {"quantiser": quantiser, "zeros": "tensor", "row_skipping": False},
            {"z": np.zeros((4, 6), np.float32)},
            use_dq=use_dq, row_skipping=False,
        )


def outlier_cases(cases: CaseList) -> None:
    """Outliers: long Exp-Golomb remainders, and a value that overflows int32 at
    the requested qp (NNCodec raises qp until it fits, then signals that qp)."""
    for use_dq in (False, True):
        quantiser = "dq" if use_dq else "urq"
        rng = np.random.default_rng(4000 + use_dq)
        cases.add(
            f"outliers_{quantiser}",
            {"quantiser": quantiser, "outliers": "large", "qp": -50},
            {
                "w": with_outliers(rng, gaussian(rng, (16, 16)), 6, 40.0),
                "b": with_outliers(rng, gaussian(rng, (9,)), 2, 3.0),
            },
            qp=-50, use_dq=use_dq,
        )
        big = gaussian(rng, (4, 5))
        big[1, 2] = 3.0e6
        cases.add(
            f"outliers_int32_overflow_{quantiser}",
            {"quantiser": quantiser, "outliers": "qp_raised", "qp": -60},
            {"w": big},
            qp=-60, use_dq=use_dq,
        )


def integer_cases(cases: CaseList) -> None:
    """int32 tensors (NNR_PT_INT), alone and mixed with float tensors."""
    rng = np.random.default_rng(5000)
    ints_2d = rng.integers(-300, 300, (6, 7)).astype(np.int32)
    ints_2d[[1, 4]] = 0
    cases.add(
        "int32_mixed_dq",
        {"quantiser": "dq", "dtype": "int32+float32", "model": "multi"},
        {
            "emb.weight": gaussian(rng, (5, 8)),
            "counts": ints_2d,
            "steps": np.array([0, 1, -1, 2**20, -(2**20), 7], np.int32),
            "big": np.array([[2**30, -(2**30)], [123456789, 0]], np.int32),
        },
    )
    cases.add(
        "int32_only_urq_nors",
        {"quantiser": "urq", "dtype": "int32", "row_skipping": False},
        {"n": rng.integers(-5, 6, (3, 9)).astype(np.int32)},
        use_dq=False, row_skipping=False,
    )


def bitdepth_cases(cases: CaseList) -> None:
    """Bit depth (integer-aligned qp per tensor)."""
    for bitdepth in (4, 8):
        for use_dq in (False, True):
            quantiser = "dq" if use_dq else "urq"
            rng = np.random.default_rng(6000 + bitdepth + use_dq)
            cases.add(
                f"bitdepth{bitdepth}_{quantiser}",
                {"quantiser": quantiser, "bitdepth": bitdepth, "model": "multi"},
                {
                    "w": with_outliers(rng, gaussian(rng, (10, 12)), 3, 1.0),
                    "positive": np.abs(gaussian(rng, (6, 6))),
                    "b": gaussian(rng, (12,)),
                },
                bitdepth=bitdepth, use_dq=use_dq,
            )


def codebook_cases(cases: CaseList) -> None:
    """Codebook: approx_method='codebook' (NNCodec codebook_mode 2 keeps the
    codebook only when it is smaller) and codebook_mode 1 (always codebook)."""
    for use_dq in (False, True):
        quantiser = "dq" if use_dq else "urq"
        rng = np.random.default_rng(7000 + use_dq)
        step = 2.0 ** -6
        cb_params = {
            "few": small_levels(rng, (16, 16), [-40, -3, 0, 0, 0, 5, 17, 90], step),
            "sym": small_levels(rng, (8, 10), [-7, 7, 0], step),
            "pos": small_levels(rng, (6, 5), [1, 2, 9], step),
            "neg": small_levels(rng, (5, 6), [-1, -4, -12], step),
            "gauss": gaussian(rng, (7, 9), 0.05),
        }
        for mode in (2, 1):
            cases.add(
                f"codebook_mode{mode}_{quantiser}",
                {"quantiser": quantiser, "codebook": f"mode{mode}", "model": "multi"},
                cb_params,
                approx_method="codebook", nncodec_codebook_mode=mode,
                qp=-24, nonweight_qp=-24, use_dq=use_dq,
            )
        cases.add(
            f"codebook_mode1_{quantiser}_param_opt_off",
            {"quantiser": quantiser, "codebook": "mode1", "param_opt": False,
             "model": "multi"},
            cb_params,
            approx_method="codebook", nncodec_codebook_mode=1,
            qp=-24, nonweight_qp=-24, use_dq=use_dq, param_opt=False,
        )
        cases.add(
            f"codebook_single_value_{quantiser}",
            {"quantiser": quantiser, "codebook": "size1"},
            {"c": np.full((4, 6), 0.25, np.float32), "one": small_levels(
                rng, (3, 3), [0, 3], step)},
            approx_method="codebook", nncodec_codebook_mode=1,
            qp=-24, use_dq=use_dq,
        )


def long_unit_cases(cases: CaseList) -> None:
    """A unit over 32 KiB (long nnr_unit_size)."""
    rng = np.random.default_rng(8000)
    cases.add(
        "long_unit_urq",
        {"quantiser": "urq", "long_unit": True, "qp": -46},
        {"big.weight": gaussian(rng, (176, 176), 0.1), "b": gaussian(rng, (5,))},
        qp=-46, use_dq=False,
    )


def encoder_variant_cases(cases: CaseList) -> None:
    """Encoder-side variants that change the levels the decoder sees."""
    for use_dq in (False, True):
        quantiser = "dq" if use_dq else "urq"
        rng = np.random.default_rng(9000 + use_dq)
        cases.add(
            f"param_opt_off_{quantiser}",
            {"quantiser": quantiser, "param_opt": False, "model": "multi"},
            model_core(rng),
            param_opt=False, use_dq=use_dq,
        )
        cases.add(
            f"rdoq_lambda1_{quantiser}",
            {"quantiser": quantiser, "lambda_scale": 1.0, "model": "multi"},
            model_core(rng),
            lambda_scale=1.0, use_dq=use_dq,
        )
        cases.add(
            f"nonweight_qp_none_{quantiser}",
            {"quantiser": quantiser, "nonweight_qp": None, "model": "multi"},
            model_core(rng),
            nonweight_qp=None, qp=-30, use_dq=use_dq,
        )

    for density in (1, 3):
        rng = np.random.default_rng(9100 + density)
        cases.add(
            f"qp_density{density}_dq",
            {"quantiser": "dq", "qp_density": density, "model": "multi"},
            model_core(rng),
            qp_density=density, qp=-20 * density, nonweight_qp=-30 * density,
        )


def single_cases() -> CaseList:
    """Every single-stream vector, in a fixed order (seeds depend on it)."""
    cases = CaseList()
    grid_cases(cases)
    shape_cases(cases)
    zero_cases(cases)
    outlier_cases(cases)
    integer_cases(cases)
    bitdepth_cases(cases)
    codebook_cases(cases)
    long_unit_cases(cases)
    encoder_variant_cases(cases)
    return cases


def sequence_cases():
    """(name, axes, options, steps) for differential / TCA sequences."""
    cases = []
    for tca in (True, False):
        for use_dq in (False, True):
            for row_skipping in (False, True):
                if not tca and row_skipping:
                    continue
                quantiser = "dq" if use_dq else "urq"
                mode = "tca" if tca else "diff"
                rs = "rs" if row_skipping else "nors"
                seed = 10000 + 4 * tca + 2 * use_dq + row_skipping
                rng = np.random.default_rng(seed)
                steps = []
                for step in range(4):
                    update = {
                        "l1.weight": with_zero_rows(
                            gaussian(rng, (10, 14), 0.02), rng.choice(10, 3, False)
                        ),
                        "l1.bias": gaussian(rng, (14,), 0.01),
                        "conv": gaussian(rng, (3, 2, 3, 3), 0.03),
                    }
                    if step == 2:
                        update["conv"] = np.zeros_like(update["conv"])
                    if step >= 1:
                        update["late"] = gaussian(rng, (4, 6), 0.02)
                    steps.append(update)
                options = {
                    **BASE_OPTIONS, "compress_differences": True, "tca": tca,
                    "use_dq": use_dq, "row_skipping": row_skipping, "qp": -40,
                    "device_id": 3 if tca else 0, "update_base": True,
                }
                axes = {"quantiser": quantiser, "sequence": mode,
                        "row_skipping": row_skipping, "steps": len(steps)}
                cases.append((f"seq_{mode}_{quantiser}_{rs}", axes, options, steps))
                if tca:
                    cases.append((
                        f"seq_{mode}_{quantiser}_{rs}_param_opt_off",
                        {**axes, "param_opt": False},
                        {**options, "param_opt": False},
                        steps,
                    ))
    return cases


# --------------------------------------------------------------------------
# Writing


def describe_decoded(decoded, snapshot, arrays, prefix):
    """Store NNCodec's output arrays and integers; return per-tensor facts."""
    tensors = {}
    for name, value in decoded.items():
        value = np.asarray(value)
        arrays[f"{prefix}out:{name}"] = value
        facts = {"shape": list(value.shape), "dtype": str(value.dtype)}
        if snapshot is not None and name in snapshot["parameters"]:
            arrays[f"{prefix}q:{name}"] = snapshot["parameters"][name].astype(np.int32)
            method = snapshot["approx_method"].get(name)
            facts["approx_method"] = method
            if name in snapshot["qp"]:
                facts["qp"] = int(snapshot["qp"][name])
            if name in snapshot["dq_flag"]:
                facts["dq_flag"] = int(snapshot["dq_flag"][name])
            if name in snapshot["codebooks"]:
                codebook = snapshot["codebooks"][name].astype(np.int32)
                arrays[f"{prefix}cb:{name}"] = codebook
                facts["codebook_zero_offset"] = int(
                    snapshot["codebook_zero_offsets"][name]
                )
        tensors[name] = facts
    return tensors


def base_facts(base: dict) -> dict:
    return {
        "device_id": int(base["device_id"]),
        "put_node_depth": {k: int(v) for k, v in base["put_node_depth"].items()},
        "parameter_id": {k: int(v) for k, v in base["parameter_id"].items()},
        "parameters": sorted(base["parameters"]),
    }


def write_single(ref, out_dir, name, axes, options, params):
    arrays = {f"in:{k}": v for k, v in params.items()}
    entry = {
        "kind": "single",
        "axes": axes,
        "options": dict(options),
        "nncodec_kwargs": nncodec_kwargs(options),
        "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                   for k, v in params.items()},
    }
    try:
        bitstream = ref.encode(params, options, None)
    except BaseException as error:  # NNCodec raises SystemExit on bad input
        entry["nncodec_error"] = f"encode: {type(error).__name__}: {error}"
        log.warning("%s: NNCodec encode failed: %s", name, entry["nncodec_error"])
        np.savez_compressed(out_dir / f"{name}.npz", **arrays)
        entry["arrays"] = f"{name}.npz"
        return entry

    (out_dir / f"{name}.nnc").write_bytes(bitstream)
    entry["bitstream"] = f"{name}.nnc"
    entry["sha256"] = hashlib.sha256(bitstream).hexdigest()
    entry["units"] = split_units(bitstream)
    try:
        decoded, snapshot = ref.decode(bitstream, None)
    except BaseException as error:
        entry["nncodec_error"] = f"decode: {type(error).__name__}: {error}"
        log.warning("%s: NNCodec decode failed: %s", name, entry["nncodec_error"])
        np.savez_compressed(out_dir / f"{name}.npz", **arrays)
        entry["arrays"] = f"{name}.npz"
        return entry

    entry["decoded"] = describe_decoded(decoded, snapshot, arrays, "")
    entry["decoded_names"] = list(decoded)
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    entry["arrays"] = f"{name}.npz"
    return entry


def write_sequence(ref, out_dir, name, axes, options, steps):
    arrays = {}
    empty_base = {"parameters": {}, "put_node_depth": {}, "device_id": 0,
                  "parameter_id": {}}
    encoder_base = copy.deepcopy(empty_base)
    decoder_base = copy.deepcopy(empty_base)
    entry = {
        "kind": "sequence",
        "axes": axes,
        "options": dict(options),
        "nncodec_kwargs": {**nncodec_kwargs(options), "update_base_param": True},
        "initial_base": base_facts(empty_base),
        "steps": [],
    }
    for index, params in enumerate(steps):
        prefix = f"s{index}:"
        for k, v in params.items():
            arrays[f"{prefix}in:{k}"] = v
        for k, v in decoder_base["parameters"].items():
            arrays[f"{prefix}base:{k}"] = np.asarray(v, np.int32)
        step_entry = {
            "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                       for k, v in params.items()},
            "base_before": base_facts(decoder_base),
        }
        bitstream = ref.encode(params, options, encoder_base)
        file_name = f"{name}.{index}.nnc"
        (out_dir / file_name).write_bytes(bitstream)
        step_entry["bitstream"] = file_name
        step_entry["sha256"] = hashlib.sha256(bitstream).hexdigest()
        step_entry["units"] = split_units(bitstream)

        decoded, snapshot = ref.decode(bitstream, decoder_base)
        step_entry["decoded"] = describe_decoded(decoded, snapshot, arrays, prefix)
        step_entry["decoded_names"] = list(decoded)
        step_entry["base_after"] = base_facts(decoder_base)
        if base_facts(encoder_base) != base_facts(decoder_base):
            raise RuntimeError(f"{name} step {index}: NNCodec bases diverged")
        entry["steps"].append(step_entry)

    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    entry["arrays"] = f"{name}.npz"
    return entry


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent.parent
                                             / "tests" / "vectors"))
    parser.add_argument("--only", default=None, help="substring filter on names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("*.nnc")) + list(out_dir.glob("*.npz")):
        if args.only is None:
            old.unlink()

    ref = Reference()
    import nncodec

    manifest = {
        "generator": "tools/make_vectors.py",
        "nncodec_version": getattr(nncodec, "__version__", "2.1.3"),
        "numpy_version": np.__version__,
        "vectors": {},
    }
    for name, axes, options, params in single_cases():
        if args.only and args.only not in name:
            continue
        entry = write_single(ref, out_dir, name, axes, options, params)
        manifest["vectors"][name] = entry
        log.info("%s: %s", name, manifest["vectors"][name].get("nncodec_error", "ok"))
    for name, axes, options, steps in sequence_cases():
        if args.only and args.only not in name:
            continue
        entry = write_sequence(ref, out_dir, name, axes, options, steps)
        manifest["vectors"][name] = entry
        log.info("%s: ok", name)

    with open(out_dir / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=False)
        f.write("\n")

    total = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    count = len(manifest["vectors"])
    log.info("%d vectors, %.1f KiB in %s", count, total / 1024, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
