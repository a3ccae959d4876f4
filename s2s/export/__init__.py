"""ONNX export of a trained run: the graphs, the parity gate against PyTorch, and the vocabulary map (the engine that runs the result is `s2s.engine`)."""
