import EwallML
import EwallRedis
import EwallServer
import EwallTestSupport
import Foundation
import Testing

/// Every route over real HTTP against one in-process server on a loopback port.
@Suite("ewall-serve routes", .serialized)
struct RouteTests {
    static let server = Task<RunningServer, any Error> { try await RunningServer.start() }

    func server() async throws -> (RunningServer, PhotoCatalogue) {
        (try await Self.server.value, try await PhotoCatalogue.shared.value)
    }

    @Test("GET similar/{id}: the platform's rules, the same answer as the library")
    func similarByID() async throws {
        let (s, cat) = try await server()
        let r = try await HTTP.call(.GET, "\(s.base)/api/recommendations/similar/p01?min_similarity=0")
        #expect(r.status == 200)
        let results = try #require(r.json["results"] as? [[String: Any]])
        #expect(!results.isEmpty && results.count <= 10)
        for x in results {
            let id = try #require(x["product_id"] as? String)
            let i = Int(id.dropFirst())!
            #expect(id != "p01")
            #expect(x["category"] as? String == PhotoCatalogue.category(1))
            #expect(PhotoCatalogue.inStock(i))
            let d = try #require(x["distance"] as? Double), sim = try #require(x["similarity"] as? Double)
            #expect(abs(sim - 1 / (1 + d)) < 1e-9)
            // The distance between the two stored vectors, computed here.
            let exact = zip(cat.vectors["p01"]!, cat.vectors[id]!).reduce(0.0) {
                $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1)
            }
            #expect(abs(d - exact.squareRoot()) < 1e-3)
        }
        #expect(r.json["warning"] as? String != nil, "random-init model: the answer must say so")
        let library = try await s.service.similar(productID: "p01", query: SimilarQuery(minSimilarity: 0))
        #expect(results.map { $0["product_id"] as! String } == library.results.map(\.productID))

        let any = try await HTTP.call(
            .GET,
            "\(s.base)/api/recommendations/similar/p01?min_similarity=0&any_category=true&include_out_of_stock=true&k=19"
        )
        let all = try #require(any.json["results"] as? [[String: Any]])
        #expect(all.count == 19)
        #expect(Set(all.compactMap { $0["category"] as? String }).count == 4)
        #expect(all.contains { ($0["in_stock"] as? Bool) == false })

        let k3 = try await HTTP.call(
            .GET, "\(s.base)/api/recommendations/similar/p01?k=3&min_similarity=0&any_category=1")
        #expect((k3.json["results"] as? [Any])?.count == 3)
    }

    @Test("GET similar/{id}: 404 unknown_product, 400 for bad parameters")
    func similarErrors() async throws {
        let (s, _) = try await server()
        let unknown = try await HTTP.call(.GET, "\(s.base)/api/recommendations/similar/no-such-product")
        #expect(unknown.status == 404)
        #expect(unknown.errorCode == "unknown_product")
        #expect(unknown.header("content-type")?.hasPrefix("application/json") == true)
        for q in ["k=0", "k=abc", "k=5000", "min_similarity=2", "min_similarity=x", "any_category=maybe"] {
            let r = try await HTTP.call(.GET, "\(s.base)/api/recommendations/similar/p01?\(q)")
            #expect(r.status == 400, "\(q)")
            #expect(r.errorCode == "invalid_request", "\(q)")
        }
        let route = try await HTTP.call(.GET, "\(s.base)/api/nothing-here")
        #expect(route.status == 404)
        #expect(route.errorCode == "route_not_found")
    }

    @Test("POST similar: an image as bytes, as base64 JSON, or as an allowed URL finds its own product first")
    func similarByImage() async throws {
        let (_, cat) = try await server()
        let www = try TestHTTPServer { req in .file(cat.photos[6]) }
        defer { www.shutdown() }
        let s = try await RunningServer.start(directory: try cat.copy()) { config, _ in
            config.urlPolicy = AddressPolicy(allowHosts: ["127.0.0.1"])
        }
        defer { Task { try? await s.stop() } }
        let bytes = try Fixtures.bytes(cat.photos[6])
        let raw = try await HTTP.call(
            .POST, "\(s.base)/api/recommendations/similar?any_category=true&min_similarity=0",
            body: bytes, contentType: "image/jpeg")
        #expect(raw.status == 200)
        let first = try #require((raw.json["results"] as? [[String: Any]])?.first)
        #expect(first["product_id"] as? String == "p06")
        #expect(try #require(first["distance"] as? Double) < 1e-3)

        let b64 = try await HTTP.call(
            .POST, "\(s.base)/api/recommendations/similar",
            json: [
                "image_base64": Data(bytes).base64EncodedString(), "category": "jeans",
                "exclude_product_id": "p06", "min_similarity": 0,
            ])
        #expect(b64.status == 200)
        let results = try #require(b64.json["results"] as? [[String: Any]])
        #expect(!results.isEmpty)
        #expect(results.allSatisfy { $0["category"] as? String == "jeans" && $0["product_id"] as? String != "p06" })

        let byURL = try await HTTP.call(
            .POST, "\(s.base)/api/recommendations/similar",
            json: ["image_url": www.url("/p.jpg"), "any_category": true, "min_similarity": 0])
        #expect(byURL.status == 200)
        #expect(((byURL.json["results"] as? [[String: Any]])?.first?["product_id"] as? String) == "p06")
        #expect(www.hits("/p.jpg") == 1)
    }

    @Test("POST classify: by product id, by title (keywords), by image; 404 and 400")
    func classify() async throws {
        let (s, _) = try await server()
        let byID = try await HTTP.call(.POST, "\(s.base)/api/recommendations/classify", json: ["product_id": "p03"])
        #expect(byID.status == 200)
        let library = try await s.service.classify(productID: "p03")
        #expect(byID.json["category"] as? String == library.category)
        #expect(byID.json["decided_by"] as? String == library.decidedBy.rawValue)
        #expect(byID.json["explanation"] as? String == library.explanation)

        let title = try await HTTP.call(
            .POST, "\(s.base)/api/recommendations/classify", json: ["title": "노스페이스 눕시 다운 자켓"])
        #expect(title.status == 200)
        #expect(title.json["category"] as? String == "down")
        #expect(title.json["decided_by"] as? String == "keyword")

        let none = try await HTTP.call(.POST, "\(s.base)/api/recommendations/classify", json: ["title": "gift card"])
        #expect(none.json["category"] as? String == "generic")
        #expect(none.json["decided_by"] as? String == "none")

        let cat = try await PhotoCatalogue.shared.value
        let image = try await HTTP.call(
            .POST, "\(s.base)/api/recommendations/classify?title=x",
            body: try Fixtures.bytes(cat.photos[2]), contentType: "image/jpeg")
        #expect(image.status == 200)
        #expect(image.json["decided_by"] as? String == "embedding") // random-init cosines are all high
        #expect(image.json["warning"] as? String != nil)

        let unknown = try await HTTP.call(.POST, "\(s.base)/api/recommendations/classify", json: ["product_id": "nope"])
        #expect(unknown.status == 404)
        #expect(unknown.errorCode == "unknown_product")
        let empty = try await HTTP.call(.POST, "\(s.base)/api/recommendations/classify", json: [String: String]())
        #expect(empty.status == 400)
        let both = try await HTTP.call(
            .POST, "\(s.base)/api/recommendations/classify", json: ["product_id": "p03", "title": "x"])
        #expect(both.status == 400)
    }

    @Test("POST embeddings: the stored vector of the same photo; 422 for bad images, 413, 415, 400")
    func embeddings() async throws {
        let (s, cat) = try await server()
        let r = try await HTTP.call(
            .POST, "\(s.base)/api/embeddings", body: try Fixtures.bytes(cat.photos[4]),
            contentType: "application/octet-stream")
        #expect(r.status == 200)
        let vector = try #require(r.json["vector"] as? [Double]).map(Float.init)
        #expect(vector.count == 2048)
        #expect(abs(VectorMath.norm(vector) - 1) < 1e-4)
        #expect(VectorMath.cosine(vector, cat.vectors["p04"]!) > 0.99999)
        #expect(r.json["model_id"] as? String == cat.key.modelID)
        #expect(r.json["dimension"] as? Int == 2048)

        for (file, code) in [
            ("truncated_in_header.jpg", "truncated"), ("text.txt", "not_an_image"),
            ("header_60000x60000.jpg", "too_many_pixels"), ("tiny_8x8.png", "too_small"),
            ("drawing.svg", "unsupported_format"),
        ] {
            let bad = try await HTTP.call(
                .POST, "\(s.base)/api/embeddings", body: try Fixtures.bytes(Fixtures.image(file)),
                contentType: "image/jpeg")
            #expect(bad.status == 422, "\(file)")
            #expect(bad.errorCode == code, "\(file): \(bad.text)")
        }
        let big = try await HTTP.call(
            .POST, "\(s.base)/api/embeddings", body: [UInt8](repeating: 7, count: 3 << 20),
            contentType: "image/jpeg")
        #expect(big.status == 413)
        #expect(big.errorCode == "body_too_large")
        let form = try await HTTP.call(
            .POST, "\(s.base)/api/embeddings", body: Array("a=b".utf8), contentType: "text/plain")
        #expect(form.status == 415)
        #expect(form.errorCode == "unsupported_media_type")
        let broken = try await HTTP.call(
            .POST, "\(s.base)/api/embeddings", body: Array("{\"image_url\": ".utf8),
            contentType: "application/json")
        #expect(broken.status == 400)
        #expect(broken.errorCode == "invalid_request")
        let notB64 = try await HTTP.call(.POST, "\(s.base)/api/embeddings", json: ["image_base64": "!!!"])
        #expect(notB64.status == 400)
        let nothing = try await HTTP.call(.POST, "\(s.base)/api/embeddings", json: ["title": "x"])
        #expect(nothing.status == 400)
        // The server kept answering after every bad input.
        #expect(try await HTTP.call(.GET, "\(s.base)/healthz").status == 200)
    }

    @Test("healthz, readyz and metrics")
    func health() async throws {
        let (s, _) = try await server()
        let h = try await HTTP.call(.GET, "\(s.base)/healthz")
        #expect(h.status == 200 && h.json["status"] as? String == "ok")
        let r = try await HTTP.call(.GET, "\(s.base)/readyz")
        #expect(r.status == 200)
        #expect(r.json["ready"] as? Bool == true)
        #expect(r.json["index_count"] as? Int == PhotoCatalogue.count)
        #expect(r.json["pretrained"] as? Bool == false)
        _ = try await HTTP.call(
            .POST, "\(s.base)/api/embeddings",
            body: try Fixtures.bytes((try await PhotoCatalogue.shared.value).photos[0]), contentType: "image/jpeg")
        let m = try await HTTP.call(.GET, "\(s.base)/metrics")
        #expect(m.status == 200)
        #expect(m.header("content-type")?.hasPrefix("text/plain") == true)
        for series in [
            "ewall_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}",
            "ewall_http_request_duration_seconds_bucket", "ewall_embed_batch_size_bucket{le=\"1.0\"}",
            "ewall_embed_queue_depth", "ewall_embed_queue_wait_seconds_count", "ewall_index_vectors 20",
            "ewall_index_age_seconds", "ewall_index_reloads_total",
        ] {
            #expect(m.text.contains(series), "\(series) missing from /metrics")
        }
        // The index's age is real: built a moment ago, not 0 and not unknown.
        let age = try #require(s.service.indexStatus.ageSeconds)
        #expect(age > 0 && age < 3600)
        let gauge = try #require(m.text.split(separator: "\n").first { $0.hasPrefix("ewall_index_age_seconds ") })
        #expect((Double(gauge.split(separator: " ").last!) ?? 0) > 0)
        // Route patterns, not URLs: a product id never becomes a label.
        #expect(m.text.contains("route=\"/api/recommendations/similar/{product_id}\""))
        #expect(!m.text.contains("no-such-product"))
    }

    @Test("readyz is 503 with the reason when there is no index; similar answers index_unavailable")
    func notReady() async throws {
        let cat = try await PhotoCatalogue.shared.value
        let dir = try cat.copy()
        try FileManager.default.removeItem(at: dir.appendingPathComponent("faiss"))
        let s = try await RunningServer.start(directory: dir)
        defer { Task { try? await s.stop() } }
        let r = try await HTTP.call(.GET, "\(s.base)/readyz")
        #expect(r.status == 503)
        #expect(r.json["ready"] as? Bool == false)
        #expect((r.json["problems"] as? [String])?.contains { $0.contains("no index") } == true)
        let sim = try await HTTP.call(.GET, "\(s.base)/api/recommendations/similar/p01")
        #expect(sim.status == 503)
        #expect(sim.errorCode == "index_unavailable")
        #expect(sim.header("retry-after") != nil)
        // Classification and embeddings work without an index.
        #expect(
            try await HTTP.call(.POST, "\(s.base)/api/recommendations/classify", json: ["product_id": "p02"]).status
                == 200)
    }

    @Test("POST /api/gifts/check answers in the platform's shape; classify answers gift with the reason")
    func gifts() async throws {
        let (s, _) = try await server()
        let word = try await HTTP.call(
            .POST, "\(s.base)/api/gifts/check", json: ["title": "[사은품] 로고 파우치", "price": 1000])
        #expect(word.status == 200, "\(word.text)")
        let w = word.json
        #expect(w["product_type"] as? String == "GIFT" && w["gift_type"] as? String == "KEYWORD")
        #expect(w["classification_reason"] as? String == "키워드 '사은품' 포함 (자동분류)")
        #expect(w["is_revenue"] as? Bool == false && w["decided_by"] as? String == "keyword")
        let free = try await HTTP.call(.POST, "\(s.base)/api/gifts/check", json: ["title": "울 코트", "supply_price": 0])
        #expect(free.json["gift_type"] as? String == "ZERO_PRICE")
        #expect(free.json["classification_reason"] as? String == "공급가 0원 (자동분류)")
        let product = try await HTTP.call(
            .POST, "\(s.base)/api/gifts/check", json: ["title": "울 코트 (사은품 포함)", "price": 189_000])
        #expect(product.json["product_type"] as? String == "PRODUCT" && product.json["gift_type"] is NSNull)
        #expect(((product.json["set_aside"] as? [[String: Any]])?.first?["why"] as? String)?.contains("포함") == true)
        let bad = try await HTTP.call(.POST, "\(s.base)/api/gifts/check", json: ["title": "x", "price": -1])
        #expect(bad.status == 400)
        let none = try await HTTP.call(.POST, "\(s.base)/api/gifts/check", json: [:])
        #expect(none.status == 400)
        let classify = try await HTTP.call(
            .POST, "\(s.base)/api/recommendations/classify", json: ["title": "비매품 핸드크림 30ml"])
        #expect(classify.status == 200)
        #expect(classify.json["category"] as? String == "gift" && classify.json["decided_by"] as? String == "gift")
        let reason = (classify.json["gift"] as? [String: Any])?["classification_reason"] as? String
        #expect(reason == "키워드 '비매품' 포함 (자동분류)")
    }

    @Test("The OpenAPI document lists exactly the served routes, and each answers with a documented status")
    func openAPI() async throws {
        let (s, cat) = try await server()
        let doc = try await HTTP.call(.GET, "\(s.base)/openapi.json").json
        #expect(doc["openapi"] as? String == "3.1.0")
        let paths = try #require(doc["paths"] as? [String: [String: Any]])
        var operations: [String] = []
        for (path, methods) in paths { for m in methods.keys { operations.append("\(m.uppercased()) \(path)") } }
        #expect(
            Set(operations) == [
                "GET /api/recommendations/similar/{product_id}", "POST /api/recommendations/similar",
                "POST /api/recommendations/classify", "POST /api/gifts/check", "POST /api/embeddings", "GET /healthz",
                "GET /readyz", "GET /metrics",
                "GET /openapi.json", "POST /admin/reload-index",
                // HEAD wherever GET is.
                "HEAD /api/recommendations/similar/{product_id}", "HEAD /healthz", "HEAD /readyz", "HEAD /metrics",
                "HEAD /openapi.json",
            ])
        let image = Data(try Fixtures.bytes(cat.photos[1])).base64EncodedString()
        let bodies: [String: Any] = [
            "/api/recommendations/similar": ["image_base64": image],
            "/api/recommendations/classify": ["product_id": "p01"],
            "/api/embeddings": ["image_base64": image],
            "/api/gifts/check": ["title": "[사은품] 파우치", "price": 1000],
        ]
        for (path, methods) in paths {
            for (method, op) in methods {
                let concrete = path.replacingOccurrences(of: "{product_id}", with: "p01")
                let r = try await HTTP.call(
                    method == "get" ? .GET : method == "head" ? .HEAD : .POST, s.base + concrete,
                    json: method == "post" ? (bodies[path] ?? [:]) : nil)
                let documented = try #require(((op as? [String: Any])?["responses"] as? [String: Any])?.keys)
                #expect(documented.contains(String(r.status)), "\(method) \(path) answered \(r.status), undocumented")
                #expect(r.status == 200, "\(method) \(path): \(r.text.prefix(200))")
            }
        }
        // Every error code the tests above saw is in the document's enum.
        let codes = Set(
            (((doc["components"] as? [String: Any])?["schemas"] as? [String: Any])?["Error"] as? [String: Any])
                .flatMap { (($0["properties"] as? [String: Any])?["error"] as? [String: Any]) }
                .flatMap { (($0["properties"] as? [String: Any])?["code"] as? [String: Any])?["enum"] as? [String] }
                ?? [])
        for code in [
            "unknown_product", "invalid_request", "route_not_found", "body_too_large", "unsupported_media_type",
            "blocked_url", "truncated", "not_an_image", "too_many_pixels", "too_small", "unsupported_format",
            "overloaded", "timeout", "index_unavailable", "forbidden", "invalid_input", "method_not_allowed",
        ] {
            #expect(codes.contains(code), "\(code) is not documented")
        }
    }
}

@Suite(
    "ewall-serve with Redis", .serialized,
    .enabled(if: RedisServer.available, "needs Debian's redis-server (make deps)"))
struct RedisRouteTests {
    @Test(
        "the second embed of the same photo is a cache hit, bit for bit; hits, misses and lookup latency are on /metrics"
    )
    func cacheMetrics() async throws {
        let redis = try RedisServer()
        let s = try await RunningServer.start { config, _ in
            config.redis = RedisConfiguration(location: try! RedisLocation(parsing: redis.url()))
        }
        let photo = try Fixtures.bytes(try Fixtures.photos()[4])
        func embed() async throws -> [Double] {
            let r = try await HTTP.call(
                .POST, "\(s.base)/api/embeddings", body: photo, contentType: "application/octet-stream")
            #expect(r.status == 200)
            return try #require(r.json["vector"] as? [Double])
        }
        let first = try await embed()
        for _ in 0..<100 where (s.service.cacheStatistics?.writes ?? 0) == 0 {
            try await Task.sleep(for: .milliseconds(10))
        }
        let second = try await embed()
        #expect(first == second)
        #expect(s.service.cacheStatistics?.hits == 1 && s.service.cacheStatistics?.misses == 1)
        let m = try await HTTP.call(.GET, "\(s.base)/metrics")
        for series in [
            "ewall_redis_cache_hits_total 1", "ewall_redis_cache_misses_total 1", "ewall_redis_lookup_seconds_bucket",
        ] {
            #expect(m.text.contains(series), "\(series) missing from /metrics")
        }
        try await s.stop()
    }
}
