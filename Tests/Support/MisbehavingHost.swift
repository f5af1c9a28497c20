/// The ways an image host misbehaves, each served at its own fixed path by
/// `TestHTTPServer.misbehaving`. "Image n" is `images[n % images.count]` there.
public enum Misbehaviour: String, CaseIterable, Sendable {
    /// 404.
    case missing = "/missing.jpg"
    /// 500 on the first request, then image 0.
    case flaky = "/flaky.jpg"
    /// 429 with `Retry-After: 1` on the first request, then image 1.
    case busy = "/busy.jpg"
    /// 503, always.
    case down = "/down.jpg"
    /// 503 with `Retry-After: 5`, always.
    case downForLong = "/down-for-long.jpg"
    /// Image 2 after the server's `slowDelay`.
    case slow = "/slow.jpg"
    /// Accepts, then says nothing for 20 s (past every timeout the tests set).
    case hang = "/hang.jpg"
    /// Image 0 after 150 ms.
    case tenth = "/tenth.jpg"
    /// 3 MiB with a Content-Length.
    case hugeDeclared = "/huge-declared.jpg"
    /// 3 MiB in chunks, no Content-Length.
    case hugeChunked = "/huge-chunked.jpg"
    /// 302 to `/loop-b`, which 302s back here.
    case redirectLoop = "/loop-a"
    /// 301 to image 0's path.
    case moved = "/moved"
    /// An HTML page labelled image/jpeg.
    case fake = "/fake.jpg"
    /// The first half of a JPEG, labelled image/jpeg.
    case truncated = "/truncated.jpg"

    public var path: String { rawValue }
}

extension TestHTTPServer {
    /// The path of `images[i]` on a `misbehaving` server.
    public static func imagePath(_ i: Int) -> String { "/img/\(i).jpg" }

    /// A host that serves `images` (as image/jpeg, at `imagePath(i)`) and every `Misbehaviour` at
    /// its path; `other`, asked first, answers a test's own paths. Anything else is a 404.
    public static func misbehaving(
        images: [[UInt8]], slowDelay: Duration,
        other: @escaping @Sendable (Request) -> Response? = { _ in nil }
    ) throws -> TestHTTPServer {
        precondition(!images.isEmpty, "a misbehaving host needs at least one image")
        let html = (try? Fixtures.bytes(Fixtures.image("html_pretending_to_be.jpg"))) ?? []
        let half = (try? Fixtures.bytes(Fixtures.image("truncated_half.jpg"))) ?? []
        let jpeg = [("Content-Type", "image/jpeg")]
        let loopBack = "/loop-b"
        return try TestHTTPServer { req in
            if let response = other(req) { return response }
            if req.path.hasPrefix("/img/"), let i = Int(req.path.dropFirst(5).prefix(while: \.isNumber)),
                i < images.count
            {
                return .init(headers: jpeg, body: images[i])
            }
            if req.path == loopBack {
                return .init(status: 302, headers: [("Location", Misbehaviour.redirectLoop.path)])
            }
            guard let misbehaviour = Misbehaviour(rawValue: req.path) else { return .init(status: 404) }
            let image = { (n: Int) in images[n % images.count] }
            switch misbehaviour {
            case .missing: return .init(status: 404)
            case .flaky: return req.hit == 1 ? .init(status: 500) : .init(body: image(0))
            case .busy:
                return req.hit == 1 ? .init(status: 429, headers: [("Retry-After", "1")]) : .init(body: image(1))
            case .down: return .init(status: 503)
            case .downForLong: return .init(status: 503, headers: [("Retry-After", "5")])
            case .slow: return .init(body: image(2), delay: slowDelay)
            case .hang: return .init(body: image(0), delay: .seconds(20))
            case .tenth: return .init(body: image(0), delay: .milliseconds(150))
            case .hugeDeclared: return .init(body: [UInt8](repeating: 0xFF, count: 3 << 20))
            case .hugeChunked: return .init(body: [UInt8](repeating: 0xFF, count: 3 << 20), chunked: true)
            case .redirectLoop: return .init(status: 302, headers: [("Location", loopBack)])
            case .moved: return .init(status: 301, headers: [("Location", imagePath(0))])
            case .fake: return .init(headers: jpeg, body: html)
            case .truncated: return .init(headers: jpeg, body: half)
            }
        }
    }

    public func url(image i: Int) -> String { url(Self.imagePath(i)) }
    public func url(_ misbehaviour: Misbehaviour) -> String { url(misbehaviour.path) }
    public func hits(_ misbehaviour: Misbehaviour) -> Int { hits(misbehaviour.path) }
    public func times(_ misbehaviour: Misbehaviour) -> [ContinuousClock.Instant] { times(misbehaviour.path) }
}
