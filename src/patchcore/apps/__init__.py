"""What users run: the command line, the HTTP service and its web page, Ray, ONNX export."""
