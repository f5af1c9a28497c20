/// What sort of failure an error is: how a caller should react to it, and the HTTP status and
/// exit status it maps to. Every error type of EwallML says which (``EwallFailure``).
public enum FailureKind: String, Sendable, Hashable, Codable {
    /// The product, job or file asked for does not exist (HTTP 404).
    case notFound
    /// The request or configuration itself is malformed: a missing field, a bad flag or value
    /// (HTTP 400; exit status 64, as for a command-line usage error).
    case invalidRequest
    /// Well-formed, but its input cannot be used: an image that does not decode, a URL that is
    /// refused or cannot be fetched (HTTP 422).
    case unprocessable
    /// Too much work is queued; try again later (HTTP 503).
    case overloaded
    /// A part the call needs is not there or not answering: the store, the index, the model,
    /// Redis (HTTP 503).
    case unavailable
    /// A bug or an unexpected failure of a native part (HTTP 500).
    case `internal`

    /// The HTTP status a server answers with.
    public var httpStatus: Int {
        switch self {
        case .notFound: 404
        case .invalidRequest: 400
        case .unprocessable: 422
        case .overloaded, .unavailable: 503
        case .internal: 500
        }
    }

    /// The exit status a command ends with: 64 for a usage error, else 2 (systemic). A job whose
    /// items failed one by one ends with 1 instead; that is a count, not an error.
    public var exitStatus: Int32 { self == .invalidRequest ? 64 : 2 }
}

/// The one shape of an EwallML error: a stable snake_case code that scripts and clients branch
/// on, a message a person can act on (no credentials, no internals), and a ``FailureKind``.
/// Each module keeps its own error type (``ImageError``, ``InferenceError``, `StoreError`,
/// `IndexError`, ...) with its own codes; all of them conform, so a server or a command maps any
/// of them to a status in one place.
public protocol EwallFailure: Error, Sendable, CustomStringConvertible {
    /// Stable, snake_case (`truncated`, `store_unavailable`, `unknown_product`, ...).
    var failureCode: String { get }
    /// Safe to show a user: what went wrong and, where there is one, what to do.
    var message: String { get }
    var kind: FailureKind { get }
}

extension ImageError: EwallFailure {
    public var failureCode: String { code.rawValue }
    public var kind: FailureKind {
        switch code {
        case .backendUnavailable: .unavailable
        case .outOfMemory: .internal
        default: .unprocessable
        }
    }
}

extension InferenceError: EwallFailure {
    public var failureCode: String { code.rawValue }
    public var kind: FailureKind {
        switch code {
        case .modelNotFound, .notTorchScript, .unsupportedModel, .precisionUnavailable, .deviceUnavailable,
            .backendUnavailable:
            .unavailable
        case .invalidConfiguration: .invalidRequest
        default: .internal
        }
    }
}

extension ItemFailure: EwallFailure {
    public var failureCode: String { code }
    public var kind: FailureKind { stage == .infer ? .internal : .unprocessable }
}

extension InputError: EwallFailure {
    public var failureCode: String { "invalid_input" }
    public var message: String { reason }
    public var kind: FailureKind { .invalidRequest }
}
