"""Using a trained model: the Classifier, file prediction, sharded prediction, ONNX export."""
