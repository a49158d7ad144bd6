"""TFLite export (`tflite_lib`) and the LiteRT runner/benchmark (`tflite_runner`)."""
