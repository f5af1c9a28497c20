// ewall-bench: EwallML's side of `make bench` (bench/run_bench.py runs the Python side in the
// same run and prints the comparison). Prints one JSON object.
//
//   ewall-bench --model models/resnet50.pt --images data/samples/bench --iterations 6
//   ewall-bench index load|search ...   (bench/index_bench.py; see IndexBench.swift)
//   ewall-bench queue --db postgres://... --items N --workers W [--vectors]   (bench/queue_bench.py; QueueBench.swift)
//   ewall-bench redis --redis URL --count N --concurrency C   (bench/redis_bench.py; RedisBench.swift)
//   ewall-bench classify score|calibrate ...   (bench/classify_bench.py; see ClassifyBench.swift)
//   ewall-bench gifts --labelled data/gift_labelled.tsv --count 100000   (make bench; see GiftBench.swift)
//   ewall-bench embedder --model M --images DIR --count N   (bench/serve_bench.py): ImageEmbedder's
//       own throughput, bytes in memory -> decode -> batches of 32 -> vectors; prints {images_per_s}
//   ewall-bench blas-check   (Tests/CLITests/BLASCoreTests.swift): FAISS's BLAS path (exact k-NN of 64
//       seeded queries among 4,000 vectors, 300-d) under whatever OpenBLAS core this process runs;
//       prints {core, replaced, ids, distances}, so runs under different cores can be compared
//   ewall-bench memory --model M --images DIR --count 5000 [--precision P]   (bench/memory_bench.py):
//       RSS after every 256 images of ImageEmbedder.embed(files:); growth early window vs late window
import CImageCodec
import EwallCLIBase
import EwallML
import Foundation

if CommandLine.arguments.dropFirst().first == "index" {
    try await IndexBench.run(Array(CommandLine.arguments.dropFirst(2)))
    exit(0)
}
if CommandLine.arguments.dropFirst().first == "queue" {
    try await QueueBench.run(Array(CommandLine.arguments.dropFirst(2)))
    exit(0)
}
if CommandLine.arguments.dropFirst().first == "redis" {
    try await RedisBench.run(Array(CommandLine.arguments.dropFirst(2)))
    exit(0)
}
if CommandLine.arguments.dropFirst().first == "blas-check" {
    BLASCore.selectAtStartup()
    var state: UInt64 = 42
    func next() -> Float { // SplitMix64 -> [-1, 1)
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return Float((z ^ (z >> 31)) >> 40) / Float(1 << 23) - 1
    }
    let d = 300
    let y = (0..<(4000 * d)).map { _ in next() }
    let q = (0..<(64 * d)).map { _ in next() }
    let found = try q.withUnsafeBufferPointer { qb in
        try y.withUnsafeBufferPointer { yb in
            try FaissIndex.exactNeighbours(queries: qb, vectors: yb, dimension: d, k: 10, metric: .l2)
        }
    }
    let out: [String: Any] = [
        "core": DistanceKernel.blasCore ?? "", "replaced": BLASCore.replaced ?? "",
        "ids": found.ids.map(Int.init), "distances": found.distances.map(Double.init),
    ]
    print(String(decoding: try JSONSerialization.data(withJSONObject: out), as: UTF8.self))
    exit(0)
}
if CommandLine.arguments.dropFirst().first == "gifts" {
    try GiftBench.run(Array(CommandLine.arguments.dropFirst(2)))
    exit(0)
}
if CommandLine.arguments.dropFirst().first == "classify" {
    try ClassifyBench.run(Array(CommandLine.arguments.dropFirst(2)))
    exit(0)
}

if CommandLine.arguments.dropFirst().first == "embedder" {
    let a = CommandLine.arguments
    func opt(_ name: String, _ fallback: String) -> String {
        a.firstIndex(of: name).flatMap { $0 + 1 < a.count ? a[$0 + 1] : nil } ?? fallback
    }
    let dir = opt("--images", "data/samples/bench")
    let count = Int(opt("--count", "256"))!
    let names = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
    let images = (0..<count).map { [UInt8](FileManager.default.contents(atPath: "\(dir)/\(names[$0 % names.count])")!) }
    let embedder = try ImageEmbedder(
        configuration: EmbedderConfiguration(model: ModelOptions(path: opt("--model", "models/resnet50.pt"))))
    _ = await embedder.embed(images: Array(images.prefix(32)))
    let start = ContinuousClock.now
    let outcomes = await embedder.embed(images: images)
    let t = ContinuousClock.now - start
    let s = Double(t.components.seconds) + Double(t.components.attoseconds) / 1e18
    let failed = outcomes.filter { if case .failure = $0.result { true } else { false } }.count
    print(
        String(
            decoding: try JSONSerialization.data(
                withJSONObject: [
                    "images": count, "failed": failed, "seconds": s, "images_per_s": Double(count) / s,
                ], options: [.sortedKeys]), as: UTF8.self))
    exit(0)
}

if CommandLine.arguments.dropFirst().first == "memory" {
    // ewall-bench memory --model M --images DIR --count 5000 [--precision P] (bench/memory_bench.py):
    // ImageEmbedder over `count` images (the folder's files reused in turn), in calls of 256;
    // current RSS after every call. Growth: max RSS over the window after warm-up (images
    // 500...1500) against the max over the last 1000 images.
    let a = CommandLine.arguments
    func opt(_ name: String, _ fallback: String) -> String {
        a.firstIndex(of: name).flatMap { $0 + 1 < a.count ? a[$0 + 1] : nil } ?? fallback
    }
    let dir = opt("--images", "data/samples/bench")
    let count = Int(opt("--count", "5000"))!
    let names = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
    let files = names.map { "\(dir)/\($0)" }
    let embedder = try ImageEmbedder(
        configuration: EmbedderConfiguration(
            model: ModelOptions(
                path: opt("--model", "models/resnet50.pt"), precision: Precision(rawValue: opt("--precision", "fp32"))!)
        ))
    func rssMiB() -> Double {
        let statm = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? "0 0"
        return Double(statm.split(separator: " ")[1])! * Double(sysconf(Int32(_SC_PAGESIZE))) / 1048576
    }
    var samples: [[Double]] = []
    var done = 0, failed = 0
    let start = ContinuousClock.now
    while done < count {
        let n = min(256, count - done)
        let outcomes = await embedder.embed(files: (0..<n).map { files[(done + $0) % files.count] })
        failed += outcomes.filter { if case .failure = $0.result { true } else { false } }.count
        done += n
        samples.append([Double(done), rssMiB()])
    }
    let t = ContinuousClock.now - start
    let s = Double(t.components.seconds) + Double(t.components.attoseconds) / 1e18
    let early = samples.filter { $0[0] > 500 && $0[0] <= 1500 }.map { $0[1] }.max() ?? 0
    let late = samples.filter { $0[0] > Double(count - 1000) }.map { $0[1] }.max() ?? 0
    print(
        String(
            decoding: try JSONSerialization.data(
                withJSONObject: [
                    "images": count, "failed": failed, "images_per_s": Double(count) / s,
                    "precision": embedder.precision.rawValue,
                    "rss_max_early_mib": early, "rss_max_late_mib": late, "growth": late / max(early, 1) - 1,
                    "samples": samples,
                ], options: [.sortedKeys]), as: UTF8.self))
    exit(0)
}

func arg(_ name: String, _ fallback: String) -> String {
    let a = CommandLine.arguments
    if let i = a.firstIndex(of: name), i + 1 < a.count { return a[i + 1] }
    return fallback
}

func peakRSSMiB() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_maxrss) / 1024
}

let modelPath = arg("--model", "models/resnet50.pt")
let imageDir = arg("--images", "data/samples/bench")
let iterations = Int(arg("--iterations", "6"))!
let threads = Int(arg("--threads", "2"))!
let files = try FileManager.default.contentsOfDirectory(atPath: imageDir).sorted().map { "\(imageDir)/\($0)" }
let bytes = files.map { [UInt8](FileManager.default.contents(atPath: $0)!) }
let clock = ContinuousClock()
var result: [String: Any] = ["images": files.count, "threads": threads, "batch": 32]

// Decode + preprocess on one thread (squash224), exact and fast JPEG paths; and the exact path
// once more with the resize's portable kernels (what the AVX2 ones gain, same run).
// (--model-only: skipped, for benches that repeat the model loop.)
let modelOnly = CommandLine.arguments.contains("--model-only")
for (key, fast, simd) in [
    ("decode_exact", false, Int32(1)), ("decode_fast_jpeg", true, 1), ("decode_exact_portable_resize", false, 0),
] where !modelOnly {
    _ = ew_img_set_resize_kernel(simd)
    let pre = Preprocessor(mode: .squash224, fastJPEG: fast)
    _ = try pre.tensor(from: bytes[0])
    let t = clock.measure { for b in bytes { _ = try! pre.tensor(from: b) } }
    let s = Double(t.components.seconds) + Double(t.components.attoseconds) / 1e18
    result[key + "_images_per_s"] = Double(bytes.count) / s
}
_ = ew_img_set_resize_kernel(1)

// Model only, batch 32, fp32, bf16 (native bfloat16 only) and int8 (where the int8 file beside
// the model exists and libtorch has onednn): preprocessed tensors in memory.
let pre = Preprocessor()
let tensors = try bytes.prefix(32).map { try pre.tensor(from: $0) }
let int8Runs = FileManager.default.fileExists(atPath: ModelOptions.int8Sibling(of: modelPath)) && TorchModel.hasInt8
for precision in [Precision.fp32, .bf16, .int8]
where precision == .fp32 || (precision == .bf16 && TorchModel.cpuHasBF16) || (precision == .int8 && int8Runs) {
    let embedder = try Embedder(options: ModelOptions(path: modelPath, precision: precision, threads: threads))
    _ = await embedder.embedBatch(tensors)
    let start = clock.now
    for _ in 0..<iterations { _ = await embedder.embedBatch(tensors) }
    let t = clock.now - start
    let s = Double(t.components.seconds) + Double(t.components.attoseconds) / 1e18
    result["model_\(precision)_images_per_s"] = Double(32 * iterations) / s
}
result["peak_rss_mib"] = peakRSSMiB()
let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
print(String(decoding: data, as: UTF8.self))
