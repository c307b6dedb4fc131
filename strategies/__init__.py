"""Message-API strategies that NNC-code model updates (installed as
flwr_nncodec.strategies)."""
