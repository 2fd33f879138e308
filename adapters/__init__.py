"""Framework bridges: numpy .npz now; PyTorch and ONNX in later issues."""
