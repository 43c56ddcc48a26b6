"""int8: calibration, ONNX Runtime quantization, diagnosis, remedy, the CPU form, NNCF beside ours, PyTorch int8."""
