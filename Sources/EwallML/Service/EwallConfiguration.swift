import EwallClassifier
import EwallCore
import EwallFetch
import EwallIndex
import EwallInference
import EwallRedis
import EwallStore
import Foundation

/// Everything an ``EwallService`` is built from, with the defaults a server wants.
///
/// ```swift
/// var configuration = EwallConfiguration(modelPath: "models/resnet50.pt")
/// configuration.storeURL = "postgres://ewall@db/ewall"
/// configuration.limits.maxBatchWait = .milliseconds(3)
/// ```
public struct EwallConfiguration: Sendable {
    /// The TorchScript model (with its model card beside it). Loaded once.
    public var modelPath: String
    /// The embedding store: `sqlite:PATH` (default `sqlite:data/ewall.sqlite`) or `postgres://...`.
    public var storeURL: String
    /// The index folder `rebuild-faiss-index` publishes (default `data/faiss`). The service runs
    /// without one (embeddings and classification work; similar products answer `index_unavailable`).
    public var indexPath: String
    /// The keyword rules for the classifier's fallback (default `data/category_rules.json`);
    /// `nil`: no keyword step.
    public var rulesPath: String?
    /// The gift rules (default `data/gift_rules.json`; see docs/gifts.md): gifts and samples are
    /// answered `gift` by the classifier and by `POST /api/gifts/check`. `nil`: no gift detector
    /// (gift flags stored by `ewall gifts --apply` still apply).
    public var giftRulesPath: String? = "data/gift_rules.json"
    /// The classifier's method, threshold and reference counts (the platform's by default).
    public var classifier: ClassifierConfiguration
    /// How images become tensors. Must match the vectors in the store and index.
    public var preprocessing: PreprocessingMode
    /// libtorch precision: `auto` by default (the fastest precision whose vectors keep fp32's
    /// answers, measured on ``calibration``; see ``EmbedderConfiguration/precisionGuard``).
    public var precision: Precision
    /// `auto`'s calibration photos; nil: the folder beside the model (`make model` fills it).
    public var calibration: String?
    /// `auto`'s thresholds.
    public var precisionGuard = PrecisionGuard()
    /// libtorch intra-op threads (default 2).
    public var threads: Int
    /// Batches the model runs at once, sharing ``threads`` (default 1; see
    /// ``ModelOptions/streams``). A busy server with `streams == threads` keeps that many
    /// single-threaded batches in the model.
    public var streams = 1
    /// Similar-products batches searched at once, each on a thread of its own (default: the
    /// active cores, at most 4; see ``SimilarCoalescer``). Above 1, OpenBLAS is set to one
    /// thread for the process, so each search thread runs its own coarse pass: its pool
    /// threads, spinning between the server's many small calls, cost a third of a busy
    /// server's CPU per request (100k products, 2 cores: 1.15 -> 0.77 ms).
    public var searchThreads = EwallConfiguration.defaultSearchThreads
    /// ``searchThreads``' default: the active cores, at most 4.
    public static var defaultSearchThreads: Int { min(4, max(1, ProcessInfo.processInfo.activeProcessorCount)) }
    /// Where the model runs (default `auto`: CUDA when the loaded libtorch has it and a device
    /// is present, else the CPU).
    public var device: ComputeDevice = .auto
    /// Where `precision: .auto` caches its measurements (per model and int8 file sha256, CPU
    /// model and flags, libtorch, threads, batch size and calibration photos); `nil`, the
    /// default: no cache, so every start measures.
    public var precisionCachePath: String?
    /// Sizes, batching and queue limits.
    public var limits: Limits
    /// The address check for caller-supplied image URLs. The default refuses loopback, private,
    /// link-local, multicast and reserved addresses, and every scheme but http(s). `nil` turns
    /// the check off (only for trusted callers).
    public var urlPolicy: AddressPolicy?
    /// How often the index folder is checked for a newer index (default every 2 s); `nil`: only
    /// ``EwallService/reloadIndex()`` reloads it.
    public var indexWatchInterval: Duration?
    /// How often the store's change feed (written by `ewall sync`) is read and applied to the
    /// loaded index: stock, category, listed flags and deletes without index work, new vectors
    /// searched beside the index (default every 100 ms; `nil`: never). Stores without a live
    /// catalogue have an empty feed, and reading it costs one small query.
    public var catalogueFollowInterval: Duration? = .milliseconds(100)
    /// Map the index's IVF lists from its file instead of loading them (default `false`): the
    /// kernel pages lists in as searches touch them, so an index larger than RAM can serve, at
    /// the cost of disk reads on cold lists. Other kinds load fully either way.
    public var indexMemoryMapped = false
    /// The rules product ids, image URLs, titles, brands and categories must meet (valid
    /// UTF-8, no control characters but tab, LF and CR in text, byte limits; ``InputRules`` by
    /// default). A value that breaks one is refused with `invalid_input` and the reason, never
    /// truncated or cleaned.
    public var inputRules: InputRules
    /// The platform's Redis (`nil`, the default: none). With it, image queries look up the
    /// embedding cache (model key + preprocessing + sha256 of the bytes) before a forward pass
    /// and fill it after, so replicas share one another's work. Redis down or slow is a miss
    /// and a metric, never an error.
    public var redis: RedisConfiguration?

    /// Limits on what one request may cost, and on how requests are batched.
    public struct Limits: Sendable, Hashable {
        /// Image bytes, fetched or uploaded (default 10 MiB).
        public var maxImageBytes: Int
        /// Decoded pixels, checked from the header before decoding (default 40 megapixels).
        public var maxImagePixels: Int
        /// Images per forward pass: concurrent embeds are coalesced up to this (default 32).
        public var maxBatchSize: Int
        /// How long the first image of a batch waits for others when the model is idle
        /// (default 5 ms). A quiet server pays at most this much latency; a busy one fills batches.
        public var maxBatchWait: Duration
        /// Images waiting for the model beyond which new embeds are refused as overloaded
        /// (default 256, about 8 batches).
        public var maxQueuedImages: Int
        /// Time to fetch one image URL, all attempts included (default 10 s).
        public var fetchTimeout: Duration
        /// Threads that decode images (`nil`, the default: the cores the model's threads leave
        /// over, at least 1, as for the batch job).
        public var decodeThreads: Int?

        public init(
            maxImageBytes: Int = 10 << 20, maxImagePixels: Int = 40_000_000, maxBatchSize: Int = 32,
            maxBatchWait: Duration = .milliseconds(5), maxQueuedImages: Int = 256,
            fetchTimeout: Duration = .seconds(10), decodeThreads: Int? = nil
        ) {
            self.maxImageBytes = maxImageBytes
            self.maxImagePixels = maxImagePixels
            self.maxBatchSize = maxBatchSize
            self.maxBatchWait = maxBatchWait
            self.maxQueuedImages = maxQueuedImages
            self.fetchTimeout = fetchTimeout
            self.decodeThreads = decodeThreads
        }
    }

    public init(
        modelPath: String, storeURL: String = StoreLocation.defaultURL, indexPath: String = IndexFolder.defaultPath,
        rulesPath: String? = "data/category_rules.json", classifier: ClassifierConfiguration = .init(),
        preprocessing: PreprocessingMode = .squash224, precision: Precision = .auto, threads: Int = 2,
        limits: Limits = Limits(), urlPolicy: AddressPolicy? = AddressPolicy(),
        indexWatchInterval: Duration? = .seconds(2), inputRules: InputRules = InputRules()
    ) {
        self.modelPath = modelPath
        self.storeURL = storeURL
        self.indexPath = indexPath
        self.rulesPath = rulesPath
        self.classifier = classifier
        self.preprocessing = preprocessing
        self.precision = precision
        self.threads = threads
        self.limits = limits
        self.urlPolicy = urlPolicy
        self.indexWatchInterval = indexWatchInterval
        self.inputRules = inputRules
    }

    /// The embedder's configuration this implies.
    var embedder: EmbedderConfiguration {
        EmbedderConfiguration(
            model: ModelOptions(
                path: modelPath, precision: precision, threads: threads, batchSize: limits.maxBatchSize,
                precisionCachePath: precisionCachePath, device: device, streams: streams),
            preprocessing: preprocessing,
            limits: ImageLimits(maxPixels: limits.maxImagePixels, maxBytes: limits.maxImageBytes),
            decodeThreads: limits.decodeThreads, calibration: calibration, precisionGuard: precisionGuard)
    }

    /// The fetcher's configuration this implies: callers' URLs, so no files, few retries.
    var fetch: FetchConfiguration {
        FetchConfiguration(
            perHostLimit: 16, connectTimeout: min(.seconds(5), limits.fetchTimeout),
            requestTimeout: limits.fetchTimeout, maxAttempts: 2, backoffBase: .milliseconds(100),
            backoffMax: .milliseconds(500), maxRetryAfter: .seconds(1), maxBytes: limits.maxImageBytes,
            maxRedirects: 5, userAgent: FetchConfiguration.defaultUserAgent, allowFiles: false,
            addressPolicy: urlPolicy,
            // One request's image, retry included, within one fetch timeout: a caller waits no longer.
            itemDeadline: limits.fetchTimeout)
    }
}
