import Foundation
import HTTPTypes

/// One route: how it is registered and how the OpenAPI document describes it.
struct RouteSpec {
    var method: HTTPRequest.Method
    var path: String
    var operationID: String
    var summary: String
    /// Subject to the request time limit (API routes; not health, readiness or metrics).
    var timed: Bool
    var parameters: [[String: Any]] = []
    /// The request body's schema name in `components`, when it takes one.
    var body: String?
    /// Status -> (description, schema name in `components`, or `nil` for the error shape or text).
    var responses: [String: (String, String?)]
}

extension API {
    /// Every route the server serves.
    static func routes(adminRoutes: Bool) -> [RouteSpec] {
        let similarParams: [[String: Any]] = [
            query("k", "integer", "Results wanted, 1...1000 (default 10)."),
            query("min_similarity", "number", "Keep results with similarity 1/(1+L2) at least this (default 0.5)."),
            query("any_category", "boolean", "Do not restrict results to the query's category (default false)."),
            query("include_out_of_stock", "boolean", "Include out-of-stock products (default false)."),
        ]
        let imageErrors: [String: (String, String?)] = [
            "400": ("Malformed request (invalid_request, invalid_url).", nil),
            "413": ("Body above the size limit (body_too_large).", nil),
            "415": ("Neither JSON nor an image body (unsupported_media_type).", nil),
            "422": ("The image or its URL cannot be used (blocked_url, fetch_failed, unreadable, too_many_pixels, ...).", nil),
            "503": ("Overloaded (Retry-After), timed out, or a part is unavailable.", nil),
        ]
        var routes: [RouteSpec] = [
            RouteSpec(method: .get, path: "/api/recommendations/similar/{product_id}", operationID: "similarByProduct",
                      summary: "Products similar to a stored product (its stored vector; itself excluded).", timed: true,
                      parameters: [["name": "product_id", "in": "path", "required": true, "schema": ["type": "string"]]]
                        + similarParams,
                      responses: ["200": ("Similar products.", "SimilarResponse"),
                                  "400": ("A bad parameter (invalid_request).", nil),
                                  "404": ("Unknown product (unknown_product) or no vector (no_vector).", nil),
                                  "503": ("No index loaded, overloaded or timed out.", nil)]),
            RouteSpec(method: .post, path: "/api/recommendations/similar", operationID: "similarByImage",
                      summary: "Products similar to an image (URL or bytes), embedded on the fly.", timed: true,
                      parameters: similarParams, body: "ImageRequest",
                      responses: imageErrors.merging(["200": ("Similar products.", "SimilarResponse")]) { a, _ in a }),
            RouteSpec(method: .post, path: "/api/recommendations/classify", operationID: "classify",
                      summary: "The category of a stored product (product_id), or of a title and/or an image.", timed: true,
                      body: "ImageRequest",
                      responses: imageErrors.merging(["200": ("The category and why.", "ClassifyResponse"),
                                                      "404": ("Unknown product (unknown_product).", nil)]) { a, _ in a }),
            RouteSpec(method: .post, path: "/api/embeddings", operationID: "embed",
                      summary: "The L2-normalised vector of an image (URL or bytes) and the model that made it.", timed: true,
                      body: "ImageRequest",
                      responses: imageErrors.merging(["200": ("The vector.", "EmbeddingResponse")]) { a, _ in a }),
            RouteSpec(method: .get, path: "/healthz", operationID: "healthz", summary: "The process is alive.", timed: false,
                      responses: ["200": ("Alive.", "Health")]),
            RouteSpec(method: .get, path: "/readyz", operationID: "readyz",
                      summary: "Model, store and index loaded and consistent.", timed: false,
                      responses: ["200": ("Ready.", "Readiness"), "503": ("Not ready; problems says why.", "Readiness")]),
            RouteSpec(method: .get, path: "/metrics", operationID: "metrics",
                      summary: "Prometheus metrics: requests, latencies, batch sizes, queue depth, index size and age.",
                      timed: false, responses: ["200": ("Prometheus text format 0.0.4.", "Text")]),
            RouteSpec(method: .get, path: "/openapi.json", operationID: "openapi", summary: "This document.", timed: false,
                      responses: ["200": ("OpenAPI 3.1.", "Document")]),
        ]
        if adminRoutes {
            routes.append(RouteSpec(
                method: .post, path: "/admin/reload-index", operationID: "reloadIndex",
                summary: "Reload the index folder now and swap it in atomically (callers on loopback only).", timed: true,
                responses: ["200": ("Reloaded.", "Reload"), "403": ("Not from loopback (forbidden).", nil),
                            "503": ("The folder holds no loadable index; the previous one stays (index_unavailable).", nil)]))
        }
        return routes
    }

    private static func query(_ name: String, _ type: String, _ description: String) -> [String: Any] {
        ["name": name, "in": "query", "required": false, "description": description, "schema": ["type": type]]
    }
}

/// The OpenAPI 3.1 document, generated from the same ``RouteSpec`` list the router registers.
enum OpenAPIDocument {
    static func make(routes: [RouteSpec]) -> [String: Any] {
        var paths: [String: [String: Any]] = [:]
        for r in routes {
            var op: [String: Any] = ["operationId": r.operationID, "summary": r.summary]
            if !r.parameters.isEmpty { op["parameters"] = r.parameters }
            if let body = r.body {
                op["requestBody"] = ["required": true, "content": [
                    "application/json": ["schema": ref(body)],
                    "image/*": ["schema": ["type": "string", "format": "binary"]],
                    "application/octet-stream": ["schema": ["type": "string", "format": "binary"]],
                ]]
            }
            var responses: [String: Any] = [:]
            for (status, (description, schema)) in r.responses {
                var response: [String: Any] = ["description": description]
                let name = schema ?? "Error"
                let type = name == "Text" ? "text/plain" : "application/json"
                response["content"] = [type: ["schema": name == "Text" ? ["type": "string"] : ref(name)]]
                if status == "503" { response["headers"] = ["Retry-After": ["schema": ["type": "integer"]]] }
                responses[status] = response
            }
            op["responses"] = responses
            paths[r.path, default: [:]][r.method.rawValue.lowercased()] = op
        }
        return [
            "openapi": "3.1.0",
            "info": ["title": "ewall-serve", "version": "1",
                     "description": "Similar products, category classification and image embeddings (EwallML). "
                        + "Errors are {\"error\": {\"code\", \"message\"}} with a stable code."],
            "paths": paths,
            "components": ["schemas": schemas],
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

    static var schemas: [String: Any] {
        let allCodes = APIError.codes.values.flatMap { $0 }.sorted()
        return [
            "Error": object(["error": object(["code": ["type": "string", "enum": allCodes], "message": string],
                                             required: ["code", "message"])], required: ["error"]),
            "ImageRequest": object([
                "product_id": string, "image_url": string, "image_base64": string, "title": string, "brand": string,
                "category": string, "exclude_product_id": string, "k": integer, "min_similarity": number,
                "any_category": boolean, "include_out_of_stock": boolean,
            ]),
            "SimilarProduct": object(["product_id": string, "similarity": number, "cosine": number, "distance": number,
                                      "category": nullableString, "in_stock": ["type": ["boolean", "null"]],
                                      "title": nullableString],
                                     required: ["product_id", "similarity", "cosine", "distance"]),
            "SimilarResponse": object([
                "product_id": nullableString, "category": nullableString, "k": integer, "min_similarity": number,
                "same_category": boolean, "in_stock_only": boolean, "results": array(ref("SimilarProduct")),
                "eligible": integer, "notes": array(string),
                "index": object(["factory": string, "count": integer, "built_at": string]), "warning": string,
            ], required: ["results", "k", "min_similarity", "same_category", "in_stock_only", "eligible", "notes", "index"]),
            "ClassifyResponse": object([
                "product_id": nullableString, "category": string,
                "decided_by": ["type": "string", "enum": ["embedding", "keyword", "none"]],
                "method": string, "threshold": number, "best": ["type": ["object", "null"]],
                "runner_up": ["type": ["object", "null"]], "margin": ["type": ["number", "null"]],
                "references_used": integer, "embedding_skipped": nullableString, "keyword": ["type": ["object", "null"]],
                "rules_version": nullableString, "explanation": string, "warning": string,
            ], required: ["category", "decided_by", "explanation"]),
            "EmbeddingResponse": object([
                "model_id": string, "preprocessing": string, "dimension": integer, "vector": array(number),
                "image": object(["format": string, "width": integer, "height": integer]), "warning": string,
            ], required: ["model_id", "preprocessing", "dimension", "vector", "image"]),
            "Health": object(["status": string], required: ["status"]),
            "Readiness": object([
                "ready": boolean, "model": boolean, "store": boolean, "index": boolean, "consistent": boolean,
                "problems": array(string), "index_count": integer, "index_built_at": nullableString, "model_id": string,
                "pretrained": boolean,
            ], required: ["ready", "model", "store", "index", "consistent", "problems"]),
            "Reload": object(["reloaded": boolean, "factory": string, "count": integer, "built_at": string],
                             required: ["reloaded", "count"]),
            "Document": ["type": "object"],
        ]
    }
}
