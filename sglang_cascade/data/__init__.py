"""Package data: gzip copies of public traces and the cost model's calibration files."""
