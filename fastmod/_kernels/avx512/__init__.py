"""fastmod's kernel modules compiled for the 'avx512' instruction-set level (see fastmod/_kernels/__init__.py)."""
