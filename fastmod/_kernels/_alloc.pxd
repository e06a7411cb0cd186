# The kernels' one allocator for scratch memory (see _alloc.pyx): malloc with a test-only
# failure hook. A kernel checks the result, frees what it holds and returns -1; its def entry
# point raises MemoryError with the GIL.
cdef void* fm_malloc(size_t nbytes) noexcept nogil
