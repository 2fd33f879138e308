"""Framework bridges: numpy .npz layers (``npz``), PyTorch modules (``torch``: layer discovery,
streamed calibration Grams, write-back, the torch.nn.utils.prune convention), structured
write-back (``torch_structured``) and the training-time companions (``finetune``,
``prune_while_training``, ``diff_threshold``, sharing ``training``); ONNX later."""
