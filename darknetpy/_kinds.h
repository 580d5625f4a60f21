/* The C kernels that layer kinds bring in headers of their own, darknetpy/_<kind>.h, beside their
 * layer files (whose numpy references join kernels.py's table through kernels.register).
 * _kernels.c includes this list three times: twice for the kernels, K()-named, after _steps.h
 * (baseline and AVX2+FMA), and once with KIND_WRAPPERS defined, for their Python functions and
 * KIND_METHODS, the entries of the module's method table. A new kind adds its header here and its
 * entries to KIND_METHODS. */
#include "_sru.h"

#ifdef KIND_WRAPPERS
#define KIND_METHODS SRU_METHODS
#endif
