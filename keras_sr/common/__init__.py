"""The dependency-free layer: what both sides of the framework boundary need.

Modules here import only the standard library, NumPy and OpenCV (installed on both sides), never
TensorFlow, torch or another `keras_sr` package, so `teacher_bridge` (torch) and `keras_sr`
(TensorFlow) share one implementation of each:

    record_schema  the TFRecord contract (keys, encoding, framing, record-file listing, shard resume)
    fileio         atomic file writes; the JSON files (summaries, settings) every job writes and reads
    image_io       image decoding (8-bit as stored, or any file as 8-bit RGB + alpha) and encoding, RGB order
    bad_images     the --on_bad_image policy: skip (listed with reasons) or fail, one for every job
    metrics        PSNR/SSIM with the SR papers' conventions
    progress       durations and ETAs as printed by long jobs
"""
