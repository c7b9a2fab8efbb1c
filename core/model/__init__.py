"""Tier 1's network and its training: attention pooling, prompts and pseudo-embeddings, the loss, the local training loop, attributions, and weights as named arrays.

Modules: attention, augment, fusion, tier1, tier1_loss, train, attribution, weights, device."""
