"""Export formats and their file names (no torch: the command line lists them in ``--help``)."""

#: Export format -> the file name an export directory holds.
FORMATS: dict[str, str] = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
