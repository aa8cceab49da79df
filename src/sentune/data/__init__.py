"""Readers, sources, splits, text preprocessing and batching: everything between a file and a batch of token ids."""
