"""Batches and packing: scored responses with their advantages and aggregation weights, cut into
micro-batches (padded or packed) in the loss kernels' layout."""
