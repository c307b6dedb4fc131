"""Berlin V2X app: the telko tokenizer re-implementation against SentencePiece."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1] / "simulations" / "berlin_v2x")
)

from berlin_v2x.data import serialise_rows, telekom_rows  # noqa: E402
from berlin_v2x.synthetic import SyntheticConfig, generate_table  # noqa: E402
from berlin_v2x.tokenizer import VOCAB_SIZE, load_tokenizer  # noqa: E402
from conftest import find_shared_file  # noqa: E402

TELKO_MODEL = find_shared_file("telko_tokenizer.model")


@pytest.mark.parametrize(
    "text, ids",
    [
        # "▁ time ▁ = ▁ 1 ▁ 4 ▁ 3 ▁ 2": digits are single pieces, "▁" is 236.
        ("time = 1 4 3 2", [236, 17, 236, 16, 236, 4, 236, 7, 236, 6, 236, 5]),
        # "17." is a user-defined piece and wins inside numbers.
        ("-117.25", [236, 15, 4, 229, 5, 8]),
        ("18.3", [236, 230, 6]),
        # Key pieces with underscores, value words, "-->".
        ("ping_ms = 5 --> datarate", [236, 160, 236, 16, 236, 8, 236, 14, 236, 161]),
        ("Straße des 17. Juni", [236, 172, 236, 208, 236, 229, 236, 218]),
        # Unknown characters: one <unk> per run; extra spaces squeezed.
        ("a:b,,c  ()", [236, 18, 0, 19, 0, 20, 236, 0]),
        ("", []),
    ],
)
def test_known_ids(text, ids):
    assert load_tokenizer().encode(text) == ids


def test_decode_inverts_encode_on_vocabulary_text():
    tokenizer = load_tokenizer()
    text = (
        "time = 0 9 5 9 direction = uplink device = pc4 --> Kaiserdamm-Süd Lennèstraße"
    )

    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.vocab_size == VOCAB_SIZE == 237
    with pytest.raises(ValueError, match="token id 300 outside the vocabulary of 237"):
        tokenizer.decode([300])


def test_ids_equal_sentencepiece_on_serialised_rows():
    spm = pytest.importorskip("sentencepiece")
    if TELKO_MODEL is None:
        pytest.skip("telko_tokenizer.model not found (see conftest.find_shared_file)")
    reference = spm.SentencePieceProcessor(model_file=str(TELKO_MODEL))
    tokenizer = load_tokenizer()
    table = telekom_rows(generate_table(SyntheticConfig(num_rows=400, seed=11)))
    lines = serialise_rows(table, np.arange(table.num_rows))
    # Hard cases: "17."/"18." inside numbers, adjacent user pieces, unknowns.
    lines += [
        "x = 117.18.17.5 y = -18.17 17.18. Straße) Kurfürstendamm(Schwarzbacher Straße)",
        "Platz des 18. März é è Lennèstraße (x) 1,5 a_b ümlaut ÄÖÜß \u00a0tab\there",
        "PCell_Uplink_Tx_Power_(dBm) = 127 PCell_E-ARFCN = 1300 --> --- -> ==",
    ]
    for line in lines:
        assert tokenizer.encode(line) == reference.encode(line), line
    # The vocabulary itself matches piece for piece.
    assert tokenizer.pieces == [
        reference.id_to_piece(i) for i in range(reference.vocab_size())
    ]
