"""nnc-quickstart: federated digits with NNC-coded model traffic."""
