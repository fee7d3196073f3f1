"""Training on the host: the numpy reference of Skip2-LoRA and its baselines (the contract the
board is tested against), pre-training in torch, the experiments behind RESULTS.md."""
