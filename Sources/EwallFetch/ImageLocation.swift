import EwallCore
import Foundation

/// Where an image is: an `http(s)://` URL, or a local file given as `file://` or a plain path.
public enum ImageLocation: Sendable, Hashable {
    case http(URL)
    case file(String)

    /// Parses a manifest's `image_url`. Relative plain paths are resolved against
    /// `baseDirectory` (the manifest's folder) when given. A URL that breaks `rules` (a NUL or
    /// other control character, too long) is `invalid_url`, never fetched.
    public static func parse(
        _ text: String, baseDirectory: String? = nil,
        rules: InputRules = InputRules()
    ) -> Result<ImageLocation, FetchError> {
        if let problem = rules.problem(text, as: .imageURL) {
            return .failure(FetchError(FailureClass.invalidURL, problem))
        }
        let s = text.trimmingCharacters(in: .whitespaces)
        if s.isEmpty { return .failure(FetchError(FailureClass.invalidURL, "the image URL is empty")) }
        let lower = s.lowercased()
        if lower.hasPrefix("http://") || lower.hasPrefix("https://") {
            guard let url = URL(string: s), let host = url.host, !host.isEmpty else {
                return .failure(FetchError(FailureClass.invalidURL, "'\(s)' is not a valid http(s) URL"))
            }
            return .success(.http(url))
        }
        if lower.hasPrefix("file://") {
            guard let url = URL(string: s), !url.path.isEmpty else {
                return .failure(FetchError(FailureClass.invalidURL, "'\(s)' is not a valid file:// URL"))
            }
            return .success(.file(url.path))
        }
        if let colon = s.firstIndex(of: ":"),
            s[s.startIndex..<colon].allSatisfy({ $0.isLetter || $0.isNumber || "+.-".contains($0) }),
            s[s.startIndex].isLetter
        {
            let scheme = s[s.startIndex..<colon]
            return .failure(
                FetchError(
                    FailureClass.invalidURL,
                    "unsupported URL scheme '\(scheme):' (use http://, https://, file:// or a path)"))
        }
        if s.hasPrefix("/") || baseDirectory == nil { return .success(.file(s)) }
        return .success(.file(URL(fileURLWithPath: baseDirectory!).appendingPathComponent(s).path))
    }

    /// The host requests are limited by (`nil` for files).
    public var host: String? {
        if case .http(let url) = self { return url.host?.lowercased() } else { return nil }
    }
}
