"""Video data: decoding, dataset layouts, the synthetic dataset, Grain pipelines."""
