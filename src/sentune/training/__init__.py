"""The training loop and what it needs: preparation, the frozen-layer cache, checkpoints, guards."""
