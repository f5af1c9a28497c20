import EwallCore
import EwallStore
import Foundation

/// Moving vectors in and out of the store.
///
/// - Import: the platform's Django table (`embedding_vector` as a JSON array of 2048 floats,
///   with `product_id`, `image_url`, `model_version`), exported as JSON Lines. Imported vectors
///   are stored under the key (`model_version`, preprocessing) and never mixed with ours.
/// - Export: JSON Lines of the same shape (so an export imports back), or a float32 `.npy`
///   matrix with the product ids beside it (`FILE.ids.txt`, one per line, row order).
public enum VectorTransfer {
    /// What an import did.
    public struct ImportSummary: Sendable, Codable {
        public var imported = 0
        public var badLines = 0
        /// Vectors per model version.
        public var byModel: [String: Int] = [:]
        /// Vectors whose L2 norm is not 1 (stored as given; similarity assumes unit vectors).
        public var notUnitNorm = 0

        enum CodingKeys: String, CodingKey {
            case imported, badLines = "bad_lines", byModel = "by_model", notUnitNorm = "not_unit_norm"
        }
    }

    /// Imports a JSON Lines file of the Django shape: one object per line with `product_id`,
    /// `image_url`, `embedding_vector` (an array, or a string holding one), `model_version`,
    /// and optional `title`, `category`, `in_stock`. A bad line is reported and skipped;
    /// vectors of one model version must all have one dimension. Writes 256 lines per
    /// transaction.
    public static func importSeed(
        path: String, into store: any EmbeddingStore, preprocessing: String,
        rules: InputRules = InputRules(),
        onProblem: @Sendable (ManifestProblem) -> Void = { _ in }
    ) async throws -> ImportSummary {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw ManifestError("cannot open \(path): no such file or not readable")
        }
        defer { try? handle.close() }
        var summary = ImportSummary()
        var dims: [String: Int] = [:]
        var products: [Product] = []
        var batch = WriteBatch()
        func flush() async throws {
            try await store.upsertProducts(products, source: .import)
            try await store.write(batch)
            products.removeAll()
            batch = WriteBatch()
        }
        var lineNumber = 0
        for line in LineReader(handle: handle) {
            lineNumber += 1
            if line.allSatisfy({ $0 == 32 || $0 == 9 || $0 == 13 }) { continue }
            switch parseSeedLine(line, line: lineNumber, rules: rules) {
            case .failure(let problem):
                summary.badLines += 1
                onProblem(problem)
            case .success(let (product, embedding)):
                if let d = dims[embedding.key.modelID], d != embedding.vector.count {
                    summary.badLines += 1
                    onProblem(
                        ManifestProblem(
                            line: lineNumber, productID: product.id, imageURL: embedding.imageURL,
                            message: "embedding_vector has \(embedding.vector.count) values; earlier vectors of "
                                + "model_version '\(embedding.key.modelID)' have \(d)"))
                    continue
                }
                dims[embedding.key.modelID] = embedding.vector.count
                var e = embedding
                e.key.preprocessing = preprocessing
                let norm = e.vector.reduce(0) { $0 + Double($1) * Double($1) }.squareRoot()
                if abs(norm - 1) > 1e-3 { summary.notUnitNorm += 1 }
                products.append(product)
                batch.embeddings.append(e)
                batch.ledger.append(
                    LedgerEntry(
                        productID: e.productID, imageURL: e.imageURL, key: e.key, status: .embedded,
                        attempts: 0))
                summary.imported += 1
                summary.byModel[e.key.modelID, default: 0] += 1
                if batch.embeddings.count >= 256 { try await flush() }
            }
        }
        try await flush()
        return summary
    }

    static func parseSeedLine(
        _ bytes: [UInt8], line: Int,
        rules: InputRules = InputRules()
    ) -> Result<(Product, StoredEmbedding), ManifestProblem> {
        func problem(_ m: String, _ id: String? = nil) -> Result<(Product, StoredEmbedding), ManifestProblem> {
            .failure(
                ManifestProblem(line: line, productID: id.map(ManifestReader.printable), imageURL: nil, message: m))
        }
        if let p = InputRules.utf8Problem(bytes) { return problem("the line \(p)") }
        guard let obj = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any] else {
            return problem("not a JSON object")
        }
        func text(_ k: String) -> String? {
            switch obj[k] {
            case let s as String: return s.isEmpty ? nil : s
            case let n as NSNumber: return n.stringValue
            default: return nil
            }
        }
        guard let id = text("product_id") else { return problem("missing product_id") }
        guard let url = text("image_url") else { return problem("missing image_url", id) }
        guard let model = text("model_version") else { return problem("missing model_version", id) }
        if let p = rules.problem(id, as: .productID) ?? rules.problem(url, as: .imageURL) { return problem(p, id) }
        if model.utf8.contains(0) || model.unicodeScalars.contains(where: { InputRules.controlName($0) != nil }) {
            return problem("model_version contains a control character", id)
        }
        var raw = obj["embedding_vector"]
        if let s = raw as? String { raw = try? JSONSerialization.jsonObject(with: Data(s.utf8)) }
        guard let array = raw as? [Any], !array.isEmpty else {
            return problem("embedding_vector is missing or not an array of numbers", id)
        }
        var vector = [Float]()
        vector.reserveCapacity(array.count)
        for v in array {
            guard let n = v as? NSNumber, n.doubleValue.isFinite else {
                return problem("embedding_vector holds a value that is not a finite number", id)
            }
            vector.append(n.floatValue)
        }
        var product = Product(id: id, title: text("title"), category: text("category"))
        if let p = rules.problem(product) { return problem(p, id) }
        if let s = text("in_stock") {
            guard let b = ManifestReader.bool(s) else { return problem("in_stock '\(s)' is not a boolean", id) }
            product.inStock = b
        }
        return .success(
            (
                product,
                StoredEmbedding(
                    productID: id, imageURL: url, key: ModelKey(modelID: model, preprocessing: ""),
                    vector: vector)
            ))
    }

    /// Writes every vector of `key` as JSON Lines of the import shape (plus `preprocessing`
    /// and `image_sha256`), in product-id order, streaming. Returns the number of lines.
    public static func exportJSONL(from store: any EmbeddingStore, key: ModelKey, to path: String) async throws -> Int {
        let out = try Self.create(path)
        defer { try? out.close() }
        var count = 0
        try await forEachPage(store, key: key) { rows in
            var chunk = Data()
            for row in rows {
                var obj: [String: Any] = [
                    "product_id": row.embedding.productID, "image_url": row.embedding.imageURL,
                    "model_version": key.modelID, "preprocessing": key.preprocessing,
                    "embedding_vector": row.embedding.vector.map { Double($0) },
                ]
                if let sha = row.embedding.imageSHA256 { obj["image_sha256"] = sha }
                if let p = row.product {
                    if let t = p.title { obj["title"] = t }
                    if let c = p.category { obj["category"] = c }
                    if let s = p.inStock { obj["in_stock"] = s }
                }
                chunk += try JSONSerialization.data(
                    withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes])
                chunk += Data("\n".utf8)
            }
            try out.write(contentsOf: chunk)
            count += rows.count
        }
        return count
    }

    /// Writes every vector of `key` as a float32 `[n, dim]` `.npy` file and the product ids,
    /// one per line in row order, to `path` with `.ids.txt` appended (`vectors.npy.ids.txt`).
    /// Returns `n`.
    public static func exportNpy(
        from store: any EmbeddingStore, key: ModelKeyCount, to path: String
    ) async throws -> Int {
        let out = try Self.create(path)
        defer { try? out.close() }
        let ids = try Self.create(path + ".ids.txt")
        defer { try? ids.close() }
        let dim = key.dimension
        try out.write(contentsOf: Npy.header(rows: key.count, cols: dim))
        var count = 0
        try await forEachPage(store, key: key.key) { rows in
            var values = [Float]()
            values.reserveCapacity(rows.count * dim)
            var names = ""
            for row in rows {
                guard row.embedding.vector.count == dim else {
                    throw StoreError(
                        .incompatible,
                        "\(row.embedding.productID) has \(row.embedding.vector.count) dimensions, not \(dim)")
                }
                values += row.embedding.vector
                names += row.embedding.productID + "\n"
            }
            try out.write(contentsOf: values.withUnsafeBytes { Data($0) })
            try ids.write(contentsOf: Data(names.utf8))
            count += rows.count
        }
        if count != key.count {
            // Rows were added or removed while exporting: the header says what was written.
            try out.seek(toOffset: 0)
            try out.write(contentsOf: Npy.header(rows: count, cols: dim))
        }
        return count
    }

    private static func forEachPage(
        _ store: any EmbeddingStore, key: ModelKey,
        _ body: ([EmbeddingRow]) throws -> Void
    ) async throws {
        var after: String?
        while true {
            let page = try await store.embeddings(key: key, after: after, limit: 512)
            if page.isEmpty { return }
            try body(page)
            after = page.last?.embedding.productID
        }
    }

    private static func create(_ path: String) throws -> FileHandle {
        guard FileManager.default.createFile(atPath: path, contents: nil) else {
            throw ManifestError("cannot create \(path)")
        }
        return try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    }
}

/// The lines of a file as bytes, read in 1 MiB chunks (bounded memory for any file size).
struct LineReader: Sequence, IteratorProtocol {
    let handle: FileHandle
    private var buffer: [UInt8] = []
    private var position = 0
    private var eof = false

    init(handle: FileHandle) {
        self.handle = handle
    }

    mutating func next() -> [UInt8]? {
        while true {
            if let nl = buffer[position...].firstIndex(of: 10) {
                let line = Array(buffer[position..<nl])
                position = nl + 1
                return line
            }
            if eof {
                if position < buffer.count {
                    let line = Array(buffer[position...])
                    position = buffer.count
                    return line
                }
                return nil
            }
            buffer.removeFirst(position)
            position = 0
            let chunk = handle.readData(ofLength: 1 << 20)
            if chunk.isEmpty { eof = true } else { buffer += chunk }
        }
    }
}
