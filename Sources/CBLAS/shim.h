// The system CBLAS (Debian's libopenblas-dev, through the libblas.so alternative that FAISS
// links too). Only the header; EwallClassifier's Matrix wraps the one call it needs (sgemm).
#include <cblas.h>
