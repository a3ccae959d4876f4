"""ONNX export of a trained run and the onnxruntime engine that runs it (installed as `s2s.export`)."""
