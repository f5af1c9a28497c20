import Foundation

/// Which model and which preprocessing made a vector. Vectors with different keys are never
/// compared or mixed: stores, exports and indexes always work on one key at a time.
public struct ModelKey: Hashable, Sendable, Codable, CustomStringConvertible {
    /// `name@sha256-prefix` from the model card (or the `model_version` of imported vectors).
    public var modelID: String
    /// A ``PreprocessingMode`` raw value (`squash224`, `resize256-crop224`).
    public var preprocessing: String

    public init(modelID: String, preprocessing: String) {
        self.modelID = modelID
        self.preprocessing = preprocessing
    }

    public var description: String { "\(modelID) (\(preprocessing))" }
}

/// Who set a product's category. The classifier never overwrites a person's choice;
/// categories from a manifest or an import count as a person's.
public enum CategorySource: String, Sendable, Codable {
    case manifest, `import`, classifier
}

/// A product's metadata, as given by a manifest or an import. `nil` means "not given":
/// storing it never erases what the store already knows.
public struct Product: Hashable, Sendable, Codable {
    public var id: String
    public var title: String?
    public var category: String?
    public var inStock: Bool?
    public var brand: String?
    public var price: Double?
    /// Who set ``category``, as read from a store. Ignored when storing: the caller of
    /// `upsertProducts(_:source:)` says who is setting it.
    public var categorySource: CategorySource?

    /// The category that means "don't know": never a reference, always open to the classifier.
    public static let genericCategory = "generic"

    public init(
        id: String, title: String? = nil, category: String? = nil, inStock: Bool? = nil,
        brand: String? = nil, price: Double? = nil, categorySource: CategorySource? = nil
    ) {
        self.id = id
        self.title = title
        self.category = category
        self.inStock = inStock
        self.brand = brand
        self.price = price
        self.categorySource = categorySource
    }

    /// A category a person chose: set, not `generic`, and not set by the classifier. The
    /// classifier takes its references from these and never overwrites them.
    public var hasPersonSetCategory: Bool {
        guard let category, !category.isEmpty, category != Self.genericCategory else { return false }
        return categorySource != .classifier
    }
}

/// The classifier's last answer for one product, as the store keeps it: what `--apply` wrote,
/// and the cache key that says whether it still holds.
public struct ClassificationRecord: Sendable, Hashable {
    public var productID: String
    public var category: String
    /// `embedding`, `keyword` or `none`.
    public var decidedBy: String
    /// The scoring method (`mean-refs`, `centroid`, `knn`).
    public var method: String
    /// The winning embedding score, when the embedding step decided.
    public var score: Double?
    /// Digest of everything the answer depends on besides the product: rules file, references,
    /// model, method and parameters. A different stamp means the record is stale.
    public var stamp: String
    /// Digest of the product's own inputs: its vector, title and brand.
    public var inputHash: String
    /// The full explanation, JSON.
    public var explanation: String
    public var classifiedAt: Date

    public init(
        productID: String, category: String, decidedBy: String, method: String, score: Double?,
        stamp: String, inputHash: String, explanation: String, classifiedAt: Date = Date()
    ) {
        self.productID = productID
        self.category = category
        self.decidedBy = decidedBy
        self.method = method
        self.score = score
        self.stamp = stamp
        self.inputHash = inputHash
        self.explanation = explanation
        self.classifiedAt = classifiedAt
    }
}

/// One product image's vector and what it was made from.
public struct StoredEmbedding: Sendable, Hashable {
    public var productID: String
    public var imageURL: String
    public var key: ModelKey
    /// Float32, L2-normalised for vectors this library makes (imports are stored as given).
    public var vector: [Float]
    /// SHA-256 of the image bytes, hex; `nil` for imported vectors.
    public var imageSHA256: String?
    public var width: Int?
    public var height: Int?
    public var bytes: Int?
    /// The Content-Type the server sent (recorded, not trusted: the decoder sniffs bytes).
    public var contentType: String?

    public init(
        productID: String, imageURL: String, key: ModelKey, vector: [Float], imageSHA256: String? = nil,
        width: Int? = nil, height: Int? = nil, bytes: Int? = nil, contentType: String? = nil
    ) {
        self.productID = productID
        self.imageURL = imageURL
        self.key = key
        self.vector = vector
        self.imageSHA256 = imageSHA256
        self.width = width
        self.height = height
        self.bytes = bytes
        self.contentType = contentType
    }
}

/// The ledger's record of the last attempt at one product image under one ``ModelKey``.
public struct LedgerEntry: Sendable, Hashable {
    public enum Status: String, Sendable, Codable { case embedded, failed }

    public var productID: String
    public var imageURL: String
    public var key: ModelKey
    public var status: Status
    /// A ``FailureClass`` raw value when `status == .failed`.
    public var errorClass: String?
    public var httpStatus: Int?
    public var attempts: Int
    public var lastError: String?
    public var lastTried: Date

    public init(
        productID: String, imageURL: String, key: ModelKey, status: Status, errorClass: String? = nil,
        httpStatus: Int? = nil, attempts: Int, lastError: String? = nil, lastTried: Date = Date()
    ) {
        self.productID = productID
        self.imageURL = imageURL
        self.key = key
        self.status = status
        self.errorClass = errorClass
        self.httpStatus = httpStatus
        self.attempts = attempts
        self.lastError = lastError
        self.lastTried = lastTried
    }
}

/// The stable error classes of the batch job, as stored in the ledger and the failures file.
/// Image and model classes are ``ImageError/Code`` and ``InferenceError/Code`` raw values.
public enum FailureClass {
    public static let http4xx = "http_4xx"
    /// 429 Too Many Requests: transient, retried honouring `Retry-After`.
    public static let http429 = "http_429"
    public static let http5xx = "http_5xx"
    /// A status outside 2xx/4xx/5xx that was not a followed redirect (1xx, 3xx without Location).
    public static let httpOther = "http_other"
    public static let timeout = "timeout"
    public static let connection = "connection"
    public static let tooLarge = ImageError.Code.tooLarge.rawValue
    public static let redirectLoop = "redirect_loop"
    /// The URL parsed but cannot be fetched (unsupported scheme, no host).
    public static let invalidURL = "invalid_url"
    /// Refused by the address policy (a server fetching callers' URLs): a non-http(s) scheme,
    /// or a host resolving to a loopback, private, link-local, multicast or reserved address.
    public static let blockedURL = "blocked_url"
    public static let unreadable = ImageError.Code.unreadable.rawValue
    /// A manifest row that cannot be processed (missing id, bad URL, duplicate id with another URL).
    public static let badRow = "bad_row"

    /// Failures worth retrying later (`--retry-failed`): the network or the server, not the image.
    public static let transient: Set<String> = [timeout, connection, http5xx, http429]

    public static func isTransient(_ code: String) -> Bool { transient.contains(code) }
}

/// The guard's figures that let vectors of a lower precision (or the fast JPEG decode) share a
/// model key with fp32's (docs/precision.md, "Vectors never mix silently").
///
/// Vectors are kept apart by their model key unless the guard admitted them: a precision
/// forced by name is stored under its own preprocessing id (`squash224+int8`, `squash224+dct`),
/// while one `--precision auto` chose because its drift kept the answers is stored under fp32's
/// key, and the job that writes it first records here the figures that allowed it, per CPU.
public struct PrecisionAdmission: Sendable, Hashable {
    /// The key the admitted vectors share with fp32's.
    public var key: ModelKey
    /// What made them: `bf16`, `int8`, `fp32+dct`, `int8+dct`, ...
    public var madeWith: String
    /// The CPU (model name) that measured and decided.
    public var cpu: String
    /// The decision with its measurements, JSON (``PrecisionDecision`` as `ewall precision --json` prints it).
    public var figures: String
    public var recordedAt: Date

    public init(key: ModelKey, madeWith: String, cpu: String, figures: String, recordedAt: Date = Date()) {
        self.key = key
        self.madeWith = madeWith
        self.cpu = cpu
        self.figures = figures
        self.recordedAt = recordedAt
    }
}
