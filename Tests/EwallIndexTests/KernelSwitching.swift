import Testing

/// Suites that switch the process-wide distance kernel (`DistanceKernel.use`). Every kernel gives
/// FAISS's answers within float rounding, but not bit for bit, so a suite comparing two searches
/// bit for bit must not see another suite switch the kernel between them: the suites nested here
/// run one test at a time, also under a parallel `swift test`. Suites elsewhere that compare bit
/// for bit (CompressedIndexTests' memory-mapped index, the server's coalescing) can still see a
/// switch when run in parallel with these; `make test` runs `--no-parallel`, as should any run
/// that mixes them.
@Suite("Process-wide distance kernel", .serialized)
enum KernelSwitching {}
