/* FAISS's headers include <omp.h>. Debian's FAISS is built with GCC's OpenMP (libgomp), whose
   omp.h lives in GCC's private include folder, which clang does not search. Forward to it. */
#if __has_include("/usr/lib/gcc/x86_64-linux-gnu/12/include/omp.h")
#include "/usr/lib/gcc/x86_64-linux-gnu/12/include/omp.h"
#elif __has_include("/usr/lib/gcc/x86_64-linux-gnu/13/include/omp.h")
#include "/usr/lib/gcc/x86_64-linux-gnu/13/include/omp.h"
#elif __has_include("/usr/lib/gcc/x86_64-linux-gnu/14/include/omp.h")
#include "/usr/lib/gcc/x86_64-linux-gnu/14/include/omp.h"
#else
#error "omp.h not found: install libgomp's headers (Debian: libgcc-12-dev)"
#endif
