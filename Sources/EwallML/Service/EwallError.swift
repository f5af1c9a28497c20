import EwallCore
import EwallFetch
import EwallIndex
import EwallStore

/// Why an ``EwallService`` call did not answer: a stable ``code`` a client can branch on, a
/// message a person can act on, and a ``kind`` a server maps to an HTTP status.
public struct EwallError: EwallFailure, Hashable {
    /// What sort of failure this is (``FailureKind``); ``EwallServer`` maps it to a status code.
    public typealias Kind = FailureKind

    public var kind: Kind
    /// Stable, snake_case: `unknown_product`, `no_vector`, `invalid_request`, `invalid_input` (a
    /// product id, URL or text that breaks ``EwallConfiguration/inputRules``), `blocked_url`,
    /// `fetch_failed`, an image code such as `unreadable` or `too_many_pixels`, `overloaded`,
    /// `index_unavailable`, `model_mismatch`, `store_unavailable`, `shutting_down`, `internal`.
    public var code: String
    public var message: String
    /// For ``Kind/overloaded``: when a retry is likely to be accepted.
    public var retryAfter: Duration?

    public init(_ kind: Kind, _ code: String, _ message: String, retryAfter: Duration? = nil) {
        self.kind = kind
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
    }

    public var description: String { "\(code): \(message)" }

    static func unknownProduct(_ id: String) -> EwallError {
        EwallError(.notFound, "unknown_product", "unknown product '\(id)'")
    }

    static func invalid(_ message: String) -> EwallError { EwallError(.invalidRequest, "invalid_request", message) }

    /// A value refused by ``InputRules``: `invalid_input`, with the reason (which field, what is wrong).
    init(_ e: InputError) {
        self.init(.invalidRequest, "invalid_input", e.reason)
    }

    /// An image that failed to decode or preprocess: its own code (`unreadable`, `too_large`, ...).
    init(_ failure: ItemFailure) {
        switch failure.stage {
        case .infer: self.init(.internal, failure.code, failure.message)
        default: self.init(.unprocessable, failure.code, failure.message)
        }
    }

    /// A fetch failure: a refused URL keeps its code; anything else is `fetch_failed` with the class.
    init(fetching url: String, _ e: FetchError) {
        switch e.code {
        case FailureClass.blockedURL: self.init(.unprocessable, e.code, e.message)
        case FailureClass.invalidURL: self.init(.invalidRequest, e.code, e.message)
        case FailureClass.tooLarge: self.init(.unprocessable, e.code, "\(url): \(e.message)")
        default: self.init(.unprocessable, "fetch_failed", "cannot fetch \(url): \(e.code): \(e.message)")
        }
    }

    init(_ e: IndexError) {
        switch e.code {
        case .unknownProduct: self.init(.notFound, "unknown_product", e.message)
        case .noVector: self.init(.notFound, "no_vector", e.message)
        case .argument: self.init(.invalidRequest, "invalid_request", e.message)
        case .mismatch: self.init(.unavailable, "model_mismatch", e.message)
        default: self.init(.internal, "index_error", e.message)
        }
    }

    init(_ e: StoreError) {
        self.init(.unavailable, "store_unavailable", e.message)
    }
}

extension EwallError {
    public var failureCode: String { code }
}
