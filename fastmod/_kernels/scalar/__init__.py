"""fastmod's kernel modules compiled for the 'scalar' instruction-set level (see fastmod/_kernels/__init__.py)."""
