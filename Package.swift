// swift-tools-version:6.0
//
// EwallML: image embeddings and classification for Swift servers.
// Layout (see README "Where things live"):
//   CImageCodec   C: sniff, JPEG/PNG/WebP decode with limits, EXIF orientation, resampling kernels
//   CTorchLoader  C: owns ew_torch.h (what the executables call) and ew_torch_backend.h (the table a
//                 backend exports); implements the first by dlopening a backend on first use
//   CTorchShim    C++ over libtorch: the torch backend, libewall_torch.so (product ewall_torch), loaded at
//                 run time; implements ew_torch_backend.h
//   CFaissShim    C++ behind a pure-C header: build, train, add, remove, search, read/write FAISS indexes;
//                 accel/: our distance kernels and the FAISS index types that use them
//   EwallCore     pure Swift: errors, model card, configuration, vectors
//   EwallImaging  decoding and preprocessing to a CHW float tensor
//   EwallInference the embedder: where a batch is formed (BatchFormer), worker thread, precision
//   CSQLite       the system SQLite library (module map only)
//   EwallFetch    fetching image bytes: HTTP(S) with per-host limits and retries, file:// and paths
//   EwallStore    the embedding store: SQLite (embedded default) and PostgreSQL behind one protocol
//   EwallIndex    the FAISS index: auto choice, build/incremental from the store, atomic folder, similar products
//   CHiredis      the system hiredis (module map only)
//   EwallRedis    Redis: the embedding cache + per-product view, shared fetch limits, batch status mirror
//   CBLAS         the system CBLAS (OpenBLAS; module map only)
//   EwallClassifier the category classifier: references, BLAS scoring, keyword rules, calibration, apply
//   EwallEmbedding ImageEmbedder: files/bytes -> vectors (decode threads + the embedder)
//   EwallJob      the batch job: pipeline stages, local job (manifest -> store), shared job, Queue/ (PostgreSQL)
//   CLibPQ        the system libpq (module map only): the replication protocol for ewall sync
//   EwallSync     the live catalogue: ewall sync (pgoutput change capture into the store's change feed)
//   EwallML       the façade (Exports.swift re-exports the modules) + Service/ EwallService (embed, similar,
//                 classify, reload; dynamic batching) + Transfer/ (import, export)
//   EwallServer   the HTTP server (Hummingbird 2) on EwallML's public API; ewall-serve runs it
//   ewall, ewall-embed, rebuild-faiss-index, ewall-serve   thin CLIs
import PackageDescription

let package = Package(
    name: "EwallML",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "EwallML", targets: ["EwallML"]),
        .executable(name: "ewall", targets: ["ewall"]),
        .executable(name: "ewall-embed", targets: ["ewall-embed"]),
        .executable(name: "rebuild-faiss-index", targets: ["rebuild-faiss-index"]),
        .executable(name: "ewall-bench", targets: ["ewall-bench"]),
        .executable(name: "ewall-serve", targets: ["ewall-serve"]),
        // The torch backend, libewall_torch.so: the only thing linked against libtorch. The executables
        // load it at run time beside themselves (or from $EWALL_TORCH_BACKEND); `make build
        // LIBTORCH=/path` puts one built against another libtorch in its place.
        .library(name: "ewall_torch", type: .dynamic, targets: ["CTorchShim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.25.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.25.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.9.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
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
        // ew_torch.h (pure C) for everyone else: finds and dlopens libewall_torch.so on the first
        // call that needs torch; no libtorch at link time.
        .target(
            name: "CTorchLoader",
            linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("pthread")]
        ),
        // The backend behind it: ew_torch.h's functions over libtorch, exported as one table
        // (CTorchLoader/include/ew_torch_backend.h). Nothing depends on it; the ewall_torch product builds it.
        .target(
            name: "CTorchShim",
            publicHeadersPath: ".", // no headers of its own: it implements CTorchLoader's ew_torch_backend.h
            cxxSettings: [.headerSearchPath("../CTorchLoader/include")],
            linkerSettings: [
                .linkedLibrary("torch"),
                .linkedLibrary("torch_cpu"),
                .linkedLibrary("c10"),
            ]
        ),
        .target(
            name: "CFaissShim",
            cxxSettings: [.headerSearchPath("compat")],
            linkerSettings: [
                .linkedLibrary("faiss"), // Debian ships libfaiss.a only; it needs BLAS, LAPACK, OpenMP
                .linkedLibrary("lapack"),
                .linkedLibrary("blas"),
                .linkedLibrary("gomp"),
            ]
        ),
        .systemLibrary(name: "CSQLite", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CHiredis", providers: [.apt(["libhiredis-dev"])]),
        .systemLibrary(name: "CLibPQ", providers: [.apt(["libpq-dev"])]),
        .target(name: "EwallCore"),
        .target(name: "EwallImaging", dependencies: ["EwallCore", "CImageCodec"]),
        .target(
            name: "EwallInference",
            dependencies: ["EwallCore", "EwallImaging", "CTorchLoader"]
        ),
        .target(
            name: "EwallFetch",
            dependencies: [
                "EwallCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "EwallStore",
            dependencies: [
                "EwallCore", "CSQLite",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "EwallIndex",
            dependencies: [
                "EwallCore", "EwallStore", "CFaissShim",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .systemLibrary(name: "CBLAS", providers: [.apt(["libopenblas-dev"])]),
        // Redis (hiredis on threads of its own): the embedding cache, shared fetch limits, batch status.
        .target(
            name: "EwallRedis",
            dependencies: [
                "EwallCore", "EwallFetch", "CHiredis",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "EwallClassifier",
            dependencies: [
                "EwallCore", "EwallStore", "CBLAS",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // ImageEmbedder: files and bytes in, vectors out (decode threads + the embedder).
        .target(
            name: "EwallEmbedding",
            dependencies: [
                "EwallCore", "EwallImaging", "EwallInference", "EwallFetch",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The batch job: the pipeline's stages, the local job over a manifest, the shared job and
        // its PostgreSQL queue (Queue/: where a job is claimed).
        .target(
            name: "EwallJob",
            dependencies: [
                "EwallCore", "EwallFetch", "EwallStore", "EwallRedis", "EwallEmbedding", "EwallInference",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // The live catalogue: `ewall sync` follows the platform's product table by logical
        // decoding (libpq's replication protocol, pgoutput) into the store's change feed.
        .target(
            name: "EwallSync",
            dependencies: [
                "EwallCore", "EwallStore", "EwallIndex", "EwallEmbedding", "EwallJob", "EwallClassifier", "CLibPQ",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The façade (Exports.swift re-exports the modules above) and EwallService.
        .target(
            name: "EwallML",
            dependencies: [
                "EwallCore", "EwallImaging", "EwallInference", "EwallFetch", "EwallStore", "EwallIndex",
                "EwallClassifier", "EwallRedis", "EwallEmbedding", "EwallJob", "EwallSync",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // The HTTP server (Hummingbird 2) over EwallML's public API only; `ewall-serve` runs it.
        .target(
            name: "EwallServer",
            dependencies: [
                "EwallCore", "EwallML",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Flags, exit codes and output shared by every executable; no libtorch.
        .target(
            name: "EwallCLIBase",
            dependencies: [
                "EwallStore", "EwallIndex",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // ...and those of the commands that embed.
        .target(
            name: "EwallCLI",
            dependencies: [
                "EwallML", "EwallCLIBase", "EwallRedis",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "ewall",
            dependencies: [
                "EwallML", "EwallCLI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "ewall-embed",
            dependencies: [
                "EwallML", "EwallCLI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "rebuild-faiss-index",
            dependencies: [
                "EwallIndex", "EwallStore", "EwallCLIBase",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "ewall-serve",
            dependencies: [
                "EwallServer", "EwallCLI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // `make bench`: our side of the benchmark (bench/run_bench.py runs Python's in the same run).
        .executableTarget(name: "ewall-bench", dependencies: ["EwallML", "EwallRedis", "EwallCLIBase"]),
        // Fixture paths and vector maths shared by the test targets.
        // The loopback HTTP server and the throwaway PostgreSQL server the tests start themselves.
        .target(
            name: "EwallTestSupport",
            dependencies: [
                "EwallCore", "EwallStore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/Support"),
        .testTarget(name: "EwallImagingTests", dependencies: ["EwallImaging", "EwallTestSupport"]),
        .testTarget(name: "EwallInferenceTests", dependencies: ["EwallInference", "EwallTestSupport"]),
        .testTarget(
            name: "EwallMLTests",
            dependencies: ["EwallML", "EwallTestSupport", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "EwallJobTests", dependencies: ["EwallJob", "EwallML", "EwallRedis", "EwallTestSupport"]),
        .testTarget(name: "EwallFetchTests", dependencies: ["EwallFetch", "EwallTestSupport"]),
        .testTarget(name: "EwallStoreTests", dependencies: ["EwallStore", "EwallTestSupport"]),
        .testTarget(name: "EwallIndexTests", dependencies: ["EwallIndex", "EwallStore", "EwallTestSupport"]),
        .testTarget(name: "EwallClassifierTests", dependencies: ["EwallClassifier", "EwallStore", "EwallTestSupport"]),
        .testTarget(
            name: "EwallServerTests",
            dependencies: [
                "EwallServer", "EwallRedis", "EwallTestSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]),
        .testTarget(
            name: "EwallRedisTests",
            dependencies: [
                "EwallRedis", "EwallML", "EwallTestSupport", .product(name: "Metrics", package: "swift-metrics"),
            ]),
        .testTarget(
            name: "EwallSyncTests",
            dependencies: [
                "EwallSync", "EwallIndex", "EwallStore", "EwallClassifier", "EwallRedis", "EwallTestSupport",
            ]),
        .testTarget(
            name: "CLITests", dependencies: ["EwallStore", "EwallIndex", "EwallJob", "EwallSync", "EwallTestSupport"]),
    ],
    cxxLanguageStandard: .cxx17
)
