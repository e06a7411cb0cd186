# The one place that knows how many threads fastmod uses, for OpenMP and for BLAS.
cdef int num_threads() noexcept nogil
cdef int threads_for(Py_ssize_t work, Py_ssize_t grain) noexcept nogil
cdef int blas_get_num_threads() noexcept nogil
cdef void blas_set_num_threads(int n) noexcept nogil
