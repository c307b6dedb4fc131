"""EuCNC 2025 reproduction: federated tiny language models on Berlin V2X.

Modules: schema (columns, areas), textformat (row -> text), tokenizer (telko
ids without SentencePiece), synthetic (stand-in data), data (parquet, split,
shards), model (TLM), training (local steps, metrics, generation), config
(presets, run config), experiment/outputs (server side), client_app and
server_app (Flower), local (in-process runner).
"""
