"""Framework bridges: numpy .npz layers (``npz``), PyTorch modules (``torch``: layer discovery,
streamed calibration Grams, write-back, the torch.nn.utils.prune convention); ONNX later."""
