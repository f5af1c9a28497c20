// swift-tools-version:6.0
//
// EwallML: image embeddings and classification for Swift servers.
// Layout (see README "Where things live"):
//   CImageCodec   C: sniff, JPEG/PNG/WebP decode with limits, EXIF orientation, resampling kernels
//   CTorchShim    C++ behind a pure-C header: load TorchScript, run a batch into a caller buffer
//   EwallCore     pure Swift: errors, model card, configuration, vectors
//   EwallImaging  decoding and preprocessing to a CHW float tensor
//   EwallInference the embedder: batching, worker thread, precision
//   EwallML       the public surface: files/bytes -> vectors
//   ewall         thin CLI
import PackageDescription

let package = Package(
    name: "EwallML",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "EwallML", targets: ["EwallML"]),
        .executable(name: "ewall", targets: ["ewall"]),
        .executable(name: "ewall-bench", targets: ["ewall-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        .target(
            name: "CImageCodec",
            linkerSettings: [
                .linkedLibrary("turbojpeg"),
                .linkedLibrary("png16"),
                .linkedLibrary("webp"),
                .linkedLibrary("m"),
            ]
        ),
        .target(
            name: "CTorchShim",
            linkerSettings: [
                .linkedLibrary("torch"),
                .linkedLibrary("torch_cpu"),
                .linkedLibrary("c10"),
            ]
        ),
        .target(name: "EwallCore"),
        .target(name: "EwallImaging", dependencies: ["EwallCore", "CImageCodec"]),
        .target(
            name: "EwallInference",
            dependencies: ["EwallCore", "EwallImaging", "CTorchShim"]
        ),
        .target(
            name: "EwallML",
            dependencies: [
                "EwallCore", "EwallImaging", "EwallInference",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "ewall",
            dependencies: [
                "EwallML",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // `make bench`: our side of the benchmark (bench/run_bench.py runs Python's in the same run).
        .executableTarget(name: "ewall-bench", dependencies: ["EwallML"]),
        // Fixture paths and vector maths shared by the test targets.
        .target(name: "EwallTestSupport", dependencies: ["EwallCore"], path: "Tests/Support"),
        .testTarget(name: "EwallImagingTests", dependencies: ["EwallImaging", "EwallTestSupport"]),
        .testTarget(name: "EwallInferenceTests", dependencies: ["EwallInference", "EwallTestSupport"]),
        .testTarget(
            name: "EwallMLTests",
            dependencies: ["EwallML", "EwallTestSupport", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "CLITests", dependencies: ["EwallTestSupport"]),
    ],
    cxxLanguageStandard: .cxx17
)
