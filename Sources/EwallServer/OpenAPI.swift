import EwallML
import Foundation
import HTTPTypes

/// The operations the server serves; ``API`` dispatches on this, the document names them.
enum Operation: String, Sendable, CaseIterable {
    case similarByProduct, similarByImage, classify, giftCheck, embed, healthz, readyz, metrics, openapi, reloadIndex
}

/// One route: how it is registered and how the OpenAPI document describes it.
struct RouteSpec {
    var method: HTTPRequest.Method
    var path: String
    var operation: Operation
    var summary: String
    /// Subject to the request time limit (API routes; not health, readiness or metrics).
    var timed: Bool
    var parameters: [[String: Any]] = []
    /// The JSON request body's schema name in `components` (the route also takes the image
    /// itself as `image/*` or `application/octet-stream`), when it takes a body.
    var body: String?
    /// Status -> (description, schema name in `components`, or `nil` for the error shape).
    var responses: [String: (String, String?)]
}

/// The limits the document states, as the running server applies them.
struct DocumentedLimits {
    var maxBodyBytes: Int
    var maxImageBytes: Int
    var maxImagePixels: Int
    /// The decoder's smallest side (``ImageLimits/minSide``; the service keeps the default).
    var minImageSide: Int
    var rules: InputRules

    init(
        server: ServerConfiguration = ServerConfiguration(), limits: EwallConfiguration.Limits = .init(),
        rules: InputRules = InputRules()
    ) {
        maxBodyBytes = server.maxBodyBytes
        maxImageBytes = limits.maxImageBytes
        maxImagePixels = limits.maxImagePixels
        minImageSide = ImageLimits().minSide
        self.rules = rules
    }

    var image: String {
        "JPEG, PNG or WebP; at most \(maxImageBytes) bytes and \(maxImagePixels) pixels, at least \(minImageSide) px "
            + "on each side: a smaller image (a 1x1 tracking pixel, a placeholder) is refused with 422 too_small, "
            + "as its vector would carry nothing"
    }

    var id: String {
        "at most \(rules.maxIDBytes) UTF-8 bytes, not empty, no control characters (else 400 invalid_input)"
    }

    var text: String {
        "at most \(rules.maxTextBytes) UTF-8 bytes, no control characters but tab, LF and CR (else 400 invalid_input)"
    }
}

extension API {
    /// Every route the server serves.
    static func routes(adminRoutes: Bool, limits: DocumentedLimits = DocumentedLimits()) -> [RouteSpec] {
        let k = SimilarParameters.kRange, minSimilarity = SimilarParameters.minSimilarityRange
        let defaults = SimilarParameters.defaults
        let similarParams: [[String: Any]] = [
            query(
                "k", ["type": "integer", "minimum": k.lowerBound, "maximum": k.upperBound, "default": defaults.k],
                "Results wanted, \(k.lowerBound)...\(k.upperBound) (default \(defaults.k))."),
            query(
                "min_similarity",
                [
                    "type": "number", "minimum": minSimilarity.lowerBound,
                    "maximum": minSimilarity.upperBound, "default": defaults.minSimilarity,
                ],
                "Keep results with similarity 1/(1+L2) at least this, \(minSimilarity.lowerBound)..."
                    + "\(minSimilarity.upperBound) (default \(defaults.minSimilarity))."),
            query(
                "any_category", ["type": "boolean", "default": !defaults.sameCategory],
                "Do not restrict results to the query's category (default \(!defaults.sameCategory))."),
            query(
                "include_out_of_stock", ["type": "boolean", "default": !defaults.inStockOnly],
                "Include out-of-stock products (default \(!defaults.inStockOnly))."),
            query(
                "include_gifts", ["type": "boolean", "default": defaults.includeGifts],
                "Include gifts and samples (flagged by `ewall gifts --apply`; default \(defaults.includeGifts): "
                    + "gifts are never recommended; for the back office)."),
        ]
        let bad400 =
            "Malformed request (invalid_request: not the JSON this route takes, a parameter out of its bounds, "
            + "a malformed %-escape, no image), a value that breaks the input rules (invalid_input: a control character, "
            + "too long, not UTF-8), or an unusable image URL (invalid_url)."
        let overloaded503 =
            "Overloaded or timed out (Retry-After says when to retry), or a part is unavailable "
            + "(index_unavailable, model_mismatch, store_unavailable, shutting_down)."
        let imageErrors: [String: (String, String?)] = [
            "400": (bad400, nil),
            "413": ("The body is larger than \(limits.maxBodyBytes) bytes (body_too_large).", nil),
            "415": ("Neither JSON nor an image body (unsupported_media_type).", nil),
            "422": (
                "The image or its URL cannot be used: blocked_url, fetch_failed, not_an_image, unsupported_format, "
                    + "truncated, corrupt, too_many_pixels, too_small (a side under \(limits.minImageSide) px), "
                    + "too_large, unreadable.", nil
            ),
            "503": (overloaded503, nil),
        ]
        let productID: [String: Any] = [
            "name": "product_id", "in": "path", "required": true, "schema": ["type": "string", "minLength": 1],
            "description": "The product's id, percent-encoded (RFC 3986) as one path segment: a space is %20, a / is "
                + "%2F, Hangul is its UTF-8 bytes (%EB%8D%B0...). Decoded once; \(limits.id). A % not followed by two "
                + "hex digits is 400 invalid_request.",
        ]
        var routes: [RouteSpec] = [
            RouteSpec(
                method: .get, path: "/api/recommendations/similar/{product_id}", operation: .similarByProduct,
                summary: "Products similar to a stored product (its stored vector; itself excluded).", timed: true,
                parameters: [productID] + similarParams,
                responses: [
                    "200": ("Similar products.", "SimilarResponse"),
                    "400": (bad400, nil),
                    "404": ("Unknown product (unknown_product) or no vector (no_vector).", nil),
                    "503": (overloaded503, nil),
                ]),
            RouteSpec(
                method: .post, path: "/api/recommendations/similar", operation: .similarByImage,
                summary: "Products similar to an image (URL or bytes), embedded on the fly.", timed: true,
                parameters: similarParams + [
                    query(
                        "category", ["type": "string"],
                        "With an image body: the same-category rule's category "
                            + "(in JSON: the body's field); \(limits.text)."),
                    query(
                        "exclude_product_id", ["type": "string"],
                        "With an image body: a product never "
                            + "returned (in JSON: the body's field); \(limits.id)."),
                ],
                body: "SimilarImageRequest",
                responses: imageErrors.merging(["200": ("Similar products.", "SimilarResponse")]) { a, _ in a }),
            RouteSpec(
                method: .post, path: "/api/recommendations/classify", operation: .classify,
                summary: "The category of a stored product (product_id), or of a title and/or an image.", timed: true,
                parameters: [
                    query(
                        "title", ["type": "string"],
                        "With an image body: the product's title (in JSON: the "
                            + "body's field); \(limits.text)."),
                    query("brand", ["type": "string"], "With an image body: the brand; \(limits.text)."),
                ],
                body: "ClassifyRequest",
                responses: imageErrors.merging([
                    "200": ("The category and why.", "ClassifyResponse"),
                    "404": ("Unknown product (unknown_product).", nil),
                ]) { a, _ in a }),
            RouteSpec(
                method: .post, path: "/api/gifts/check", operation: .giftCheck,
                summary: "Whether one product is a gift or sample (title, price, supply price, image), by the gift "
                    + "rules: zero price, then words, then the image's resemblance to a registered gift.",
                timed: true,
                parameters: [
                    query(
                        "title", ["type": "string"],
                        "With an image body: the product's title (in JSON: the body's field); \(limits.text)."),
                    query(
                        "price", ["type": "number", "minimum": 0],
                        "With an image body: the product's price (in JSON: the body's field)."),
                ],
                body: "GiftCheckRequest",
                responses: imageErrors.merging([
                    "200": ("The decision, in the platform's shape, and which step decided.", "GiftCheckResponse"),
                    "503": (overloaded503 + " gift_rules_unavailable: the server has no gift rules.", nil),
                ]) { a, _ in a }),
            RouteSpec(
                method: .post, path: "/api/embeddings", operation: .embed,
                summary: "The L2-normalised vector of an image (URL or bytes) and the model that made it.", timed: true,
                body: "EmbedRequest",
                responses: imageErrors.merging(["200": ("The vector.", "EmbeddingResponse")]) { a, _ in a }),
            RouteSpec(
                method: .get, path: "/healthz", operation: .healthz, summary: "The process is alive.", timed: false,
                responses: ["200": ("Alive.", "Health")]),
            RouteSpec(
                method: .get, path: "/readyz", operation: .readyz,
                summary: "Model, store and index loaded and consistent.", timed: false,
                responses: ["200": ("Ready.", "Readiness"), "503": ("Not ready; problems says why.", "Readiness")]),
            RouteSpec(
                method: .get, path: "/metrics", operation: .metrics,
                summary: "Prometheus metrics: requests, latencies, batch sizes, queue depth, index size and age, "
                    + "connections open, refused and timed out.",
                timed: false, responses: ["200": ("Prometheus text format 0.0.4.", "Text")]),
            RouteSpec(
                method: .get, path: "/openapi.json", operation: .openapi, summary: "This document.", timed: false,
                responses: ["200": ("OpenAPI 3.1.", "Document")]),
        ]
        if adminRoutes {
            routes.append(
                RouteSpec(
                    method: .post, path: "/admin/reload-index", operation: .reloadIndex,
                    summary: "Reload the index folder now and swap it in atomically (callers on loopback only).",
                    timed: true,
                    responses: [
                        "200": ("Reloaded.", "Reload"), "403": ("Not from loopback (forbidden).", nil),
                        "503": (
                            "The folder holds no loadable index; the previous one stays (index_unavailable); "
                                + "or overloaded or timed out.", nil
                        ),
                    ]))
        }
        return routes
    }

    private static func query(_ name: String, _ schema: [String: Any], _ description: String) -> [String: Any] {
        ["name": name, "in": "query", "required": false, "description": description, "schema": schema]
    }
}

/// The OpenAPI 3.1 document, generated from the same ``RouteSpec`` list the router registers.
enum OpenAPIDocument {
    static func make(routes: [RouteSpec], limits: DocumentedLimits) -> [String: Any] {
        var paths: [String: [String: Any]] = [:]
        for r in routes {
            var op: [String: Any] = ["operationId": r.operation.rawValue, "summary": r.summary]
            if !r.parameters.isEmpty { op["parameters"] = r.parameters }
            if let body = r.body {
                let image: [String: Any] = [
                    "type": "string", "format": "binary",
                    "description": "The image itself (not empty): \(limits.image).",
                ]
                op["requestBody"] = [
                    "required": true,
                    "description":
                        "JSON (application/json, UTF-8: a charset other than utf-8 is 415; each key once), or the "
                        + "image itself as the body (then the other fields are query parameters). Any other "
                        + "Content-Type, or none, is 415 unsupported_media_type. At most \(limits.maxBodyBytes) "
                        + "bytes (else 413, and the connection is closed).",
                    "content": [
                        "application/json": ["schema": ref(body)],
                        "image/*": ["schema": image],
                        "application/octet-stream": ["schema": image],
                    ],
                ]
            }
            var responses: [String: Any] = [:]
            for (status, (description, schema)) in r.responses {
                var response: [String: Any] = ["description": description]
                let name = schema ?? "Error"
                let type = name == "Text" ? "text/plain" : "application/json"
                response["content"] = [type: ["schema": name == "Text" ? ["type": "string"] : ref(name)]]
                if status == "503" && schema == nil {
                    response["headers"] = ["Retry-After": retryAfter]
                }
                responses[status] = response
            }
            op["responses"] = responses
            paths[r.path, default: [:]][r.method.rawValue.lowercased()] = op
            if r.method == .get {
                // HEAD wherever GET is (RFC 9110 §9.3.2): GET's status and headers, no body.
                var head = op
                head["operationId"] = r.operation.rawValue + "Head"
                head["summary"] = "HEAD of GET \(r.path): the same status and headers, no body."
                head["responses"] = responses.mapValues { response -> Any in
                    var response = response as! [String: Any]
                    response["content"] = nil
                    return response
                }
                paths[r.path, default: [:]]["head"] = head
            }
        }
        return [
            "openapi": "3.1.0",
            "info": ["title": "ewall-serve", "version": "1", "description": description(limits)],
            "paths": paths,
            "components": [
                "schemas": schemas(limits),
                "responses": [
                    "MethodNotAllowed": [
                        "description": "The path is served, not with this method (method_not_allowed).",
                        "headers": [
                            "Allow": [
                                "required": true, "description": "The methods the path serves.",
                                "schema": ["type": "string"],
                            ]
                        ],
                        "content": ["application/json": ["schema": ref("Error")]],
                    ]
                ],
            ],
        ]
    }

    static func description(_ limits: DocumentedLimits) -> String {
        """
        Similar products, category classification and image embeddings (EwallML). Errors are \
        {"error": {"code", "message"}} with a stable code. A path answers a method it does not list with 405 \
        method_not_allowed and an Allow header naming the methods it serves (components.responses.MethodNotAllowed); \
        a path not listed (an empty segment, as in //api, included) answers 404 route_not_found. HEAD is served \
        wherever GET is. A query parameter given twice is 400 invalid_request. Malformed HTTP is answered with the \
        same error shape (400, 414 uri_too_long, 431 headers_too_large, 501 not_implemented for an unknown method, \
        505 http_version_not_supported) and the connection closed. Path parameters are percent-decoded once. Every id and text \
        field meets the same rules (\(limits.text); ids \(limits.rules.maxIDBytes) bytes, URLs \
        \(limits.rules.maxURLBytes) bytes). Connections: a request head must be complete within the header timeout \
        of the connection's start (or of the request's first byte), and an idle connection is closed after the idle \
        timeout; beyond the connection cap new connections are closed on arrival.
        """
    }

    static var retryAfter: [String: Any] {
        [
            "required": true, "description": "Seconds to wait before retrying.",
            "schema": ["type": "integer", "minimum": 1],
        ]
    }

    static func ref(_ name: String) -> [String: Any] { ["$ref": "#/components/schemas/\(name)"] }

    static func object(_ properties: [String: Any], required: [String] = []) -> [String: Any] {
        var o: [String: Any] = ["type": "object", "properties": properties]
        if !required.isEmpty { o["required"] = required }
        return o
    }

    static var string: [String: Any] { ["type": "string"] }
    static var nullableString: [String: Any] { ["type": ["string", "null"]] }
    static var integer: [String: Any] { ["type": "integer"] }
    static var number: [String: Any] { ["type": "number"] }
    static var boolean: [String: Any] { ["type": "boolean"] }
    static func array(_ items: [String: Any]) -> [String: Any] { ["type": "array", "items": items] }
    static func required(_ names: String...) -> [String: Any] { ["required": names] }

    static func schemas(_ limits: DocumentedLimits) -> [String: Any] {
        let allCodes = APIError.codes.values.flatMap { $0 }.sorted()
        let k = SimilarParameters.kRange, minSimilarity = SimilarParameters.minSimilarityRange
        let anImage: [[String: Any]] = [required("image_url"), required("image_base64")]
        return [
            "Error": object(
                [
                    "error": object(
                        ["code": ["type": "string", "enum": allCodes], "message": string],
                        required: ["code", "message"])
                ], required: ["error"]),
            "ImageRequest": object([
                "product_id": [
                    "type": "string", "minLength": 1, "description": "A stored product's id; \(limits.id).",
                ],
                "image_url": [
                    "type": "string", "format": "uri", "minLength": 1,
                    "description": "An absolute http or https URL of the image (\(limits.image)); fetched "
                        + "only if every address its host resolves to is public (else 422 blocked_url); at most "
                        + "\(limits.rules.maxURLBytes) UTF-8 bytes, no control characters (else 400 invalid_input); "
                        + "another scheme, or no host, is 400 invalid_url.",
                ],
                "image_base64": [
                    "type": "string", "contentEncoding": "base64", "minLength": 1,
                    "description": "The image's bytes, base64 (\(limits.image)); not empty (an empty string is "
                        + "400 invalid_request, \"empty image\").",
                ],
                "title": ["type": "string", "description": "The product's title; \(limits.text)."],
                "brand": ["type": "string", "description": "The product's brand; \(limits.text)."],
                "category": ["type": "string", "description": "The same-category rule's category; \(limits.text)."],
                "exclude_product_id": [
                    "type": "string", "minLength": 1,
                    "description": "A product never returned; \(limits.id).",
                ],
                "k": ["type": "integer", "minimum": k.lowerBound, "maximum": k.upperBound],
                "min_similarity": [
                    "type": "number", "minimum": minSimilarity.lowerBound, "maximum": minSimilarity.upperBound,
                ],
                "any_category": boolean, "include_out_of_stock": boolean, "include_gifts": boolean,
                "price": ["type": "number", "minimum": 0, "description": "The product's price (gift check)."],
                "supply_price": [
                    "type": "number", "minimum": 0, "description": "The product's supply price (gift check).",
                ],
            ]),
            "SimilarImageRequest": [
                "description": "An image, as image_url or image_base64 (exactly one), and the similar-products "
                    + "parameters (they win over the query's).",
                "allOf": [ref("ImageRequest")], "oneOf": anImage,
            ],
            "EmbedRequest": [
                "description": "An image, as image_url or image_base64 (exactly one).",
                "allOf": [ref("ImageRequest")], "oneOf": anImage,
            ],
            "ClassifyRequest": [
                "description": "product_id alone (a stored product), or a title and/or an image (image_url or "
                    + "image_base64, not both), with an optional brand.",
                "allOf": [ref("ImageRequest")],
                "not": required("image_url", "image_base64"),
                "oneOf": [
                    [
                        "required": ["product_id"],
                        "not": ["anyOf": [required("title"), required("image_url"), required("image_base64")]],
                    ],
                    [
                        "not": required("product_id"),
                        "anyOf": [
                            ["required": ["title"], "properties": ["title": ["minLength": 1]]],
                            required("image_url"), required("image_base64"),
                        ],
                    ],
                ],
            ],
            "SimilarProduct": object(
                [
                    "product_id": string, "similarity": number, "cosine": number, "distance": number,
                    "category": nullableString, "in_stock": ["type": ["boolean", "null"]],
                    "title": nullableString,
                ],
                required: ["product_id", "similarity", "cosine", "distance"]),
            "SimilarResponse": object(
                [
                    "product_id": nullableString, "category": nullableString, "k": integer, "min_similarity": number,
                    "same_category": boolean, "in_stock_only": boolean, "results": array(ref("SimilarProduct")),
                    "eligible": integer, "notes": array(string),
                    "index": object(["factory": string, "count": integer, "built_at": string]), "warning": string,
                ],
                required: [
                    "results", "k", "min_similarity", "same_category", "in_stock_only", "eligible", "notes", "index",
                ]),
            "ClassifyResponse": object(
                [
                    "product_id": nullableString, "category": string,
                    "decided_by": ["type": "string", "enum": ["embedding", "keyword", "gift", "none"]],
                    "method": string, "threshold": number, "best": ["type": ["object", "null"]],
                    "runner_up": ["type": ["object", "null"]], "margin": ["type": ["number", "null"]],
                    "references_used": integer, "embedding_skipped": nullableString,
                    "keyword": ["type": ["object", "null"]],
                    "rules_version": nullableString, "explanation": string, "warning": string,
                    "gift": object(
                        [
                            "decided_by": string, "gift_type": nullableString, "classification_reason": string,
                            "explanation": string,
                        ], required: ["decided_by", "classification_reason", "explanation"]),
                ], required: ["category", "decided_by", "explanation"]),
            "GiftCheckRequest": [
                "description": "A title, a price or supply price, and/or an image (image_url or image_base64, not "
                    + "both), with an optional brand; no product_id.",
                "allOf": [ref("ImageRequest"), ["not": required("product_id")]],
                "not": required("image_url", "image_base64"),
                "anyOf": [
                    ["required": ["title"], "properties": ["title": ["minLength": 1]]],
                    required("price"), required("supply_price"), required("image_url"), required("image_base64"),
                ],
            ],
            "GiftCheckResponse": object(
                [
                    "product_type": ["type": "string", "enum": ["GIFT", "PRODUCT"]],
                    "gift_type": [
                        "type": ["string", "null"], "enum": ["ZERO_PRICE", "MASTER", "KEYWORD", "IMAGE", NSNull()],
                    ],
                    "classification_reason": string, "is_revenue": boolean,
                    "decided_by": ["type": "string", "enum": GiftStep.allCases.map(\.rawValue)],
                    "resembles": ["type": ["object", "null"]], "explanation": string, "rules_version": string,
                    "term": nullableString, "set_aside": array(["type": "object"]), "warning": string,
                ],
                required: ["product_type", "gift_type", "classification_reason", "is_revenue", "decided_by"]),
            "EmbeddingResponse": object(
                [
                    "model_id": string, "preprocessing": string, "dimension": integer, "vector": array(number),
                    "image": object(["format": string, "width": integer, "height": integer]), "warning": string,
                ], required: ["model_id", "preprocessing", "dimension", "vector", "image"]),
            "Health": object(["status": string], required: ["status"]),
            "Readiness": object(
                [
                    "ready": boolean, "model": boolean, "store": boolean, "index": boolean, "consistent": boolean,
                    "problems": array(string), "index_count": integer, "index_built_at": nullableString,
                    "model_id": string,
                    "pretrained": boolean,
                ], required: ["ready", "model", "store", "index", "consistent", "problems"]),
            "Reload": object(
                ["reloaded": boolean, "factory": string, "count": integer, "built_at": string],
                required: ["reloaded", "count"]),
            "Document": ["type": "object"],
        ]
    }
}
