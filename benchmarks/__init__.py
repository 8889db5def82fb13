"""Speed benchmarks of DyMo selection and subset training; run them as ``python -m benchmarks.<name>``."""
