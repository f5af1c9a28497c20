import EwallCore
import EwallStore
import Foundation

// What a search holds per product, as flat arrays indexed by the index's int64 id: at 10^6-10^7
// products, Swift dictionaries of strings cost several hundred bytes per product (measured: 1M
// products, 825 MB beside a 40 MB index); these columns cost the strings' bytes plus ~30.

/// Strings in one UTF-8 buffer: the i-th is `bytes[offsets[i]..<offsets[i+1]]`.
struct StringColumn: Sendable {
    private(set) var bytes: [UInt8] = []
    private(set) var offsets: [UInt32] = [0]

    var count: Int { offsets.count - 1 }

    mutating func append<C: Collection>(_ utf8: C) throws where C.Element == UInt8 {
        guard bytes.count + utf8.count <= Int(UInt32.max) else {
            throw IndexError(.memory, "more than 4 GiB of product ids or titles: one string column cannot hold them")
        }
        bytes.append(contentsOf: utf8)
        offsets.append(UInt32(bytes.count))
    }

    mutating func reserve(strings: Int, bytes total: Int) {
        offsets.reserveCapacity(strings + 1)
        bytes.reserveCapacity(total)
    }

    func string(_ i: Int) -> String {
        bytes.withUnsafeBufferPointer { String(decoding: $0[Int(offsets[i])..<Int(offsets[i + 1])], as: UTF8.self) }
    }

    func isEmpty(_ i: Int) -> Bool { offsets[i] == offsets[i + 1] }

    func equals(_ i: Int, _ utf8: UnsafeBufferPointer<UInt8>) -> Bool {
        let (a, b) = (Int(offsets[i]), Int(offsets[i + 1]))
        guard b - a == utf8.count else { return false }
        return bytes.withUnsafeBufferPointer { all in
            utf8.count == 0 || memcmp(all.baseAddress! + a, utf8.baseAddress!, utf8.count) == 0
        }
    }

    /// Whether strings i and j are equal.
    func same(_ i: Int, _ j: Int) -> Bool {
        bytes.withUnsafeBufferPointer { all in
            equals(i, UnsafeBufferPointer(rebasing: all[Int(offsets[j])..<Int(offsets[j + 1])]))
        }
    }

    func hash(_ i: Int) -> UInt64 {
        bytes.withUnsafeBufferPointer { all in
            UnsafeBufferPointer(rebasing: all[Int(offsets[i])..<Int(offsets[i + 1])]).withMemoryRebound(
                to: UInt8.self, fnv)
        }
    }
}

/// FNV-1a of some bytes: the lookup hash of product ids.
func fnv(_ utf8: UnsafeBufferPointer<UInt8>) -> UInt64 {
    var h = FNV1a64()
    h.combine(UnsafeRawBufferPointer(utf8))
    return h.value
}

/// The id map as a search holds it: product id <-> int64 id, both ways, in flat arrays
/// (`id_map.tsv` read straight into them, no dictionary). Ids are dense from 0 (the builder
/// numbers vectors by ordinal; an incremental build leaves gaps where it removed some).
public struct ProductIDTable: Sendable {
    /// Product id of each int64 id (empty where the id is unused).
    private var names = StringColumn()
    /// Which ids are in use.
    public private(set) var present: IDBitmap
    /// Open addressing over `names` by FNV-1a of the product id: slot -> id, -1 empty.
    private var slots: [Int32] = []
    /// Each id's vector hash (FNV-1a of its floats), kept only when asked (incremental builds).
    private var vectorHashes: [UInt64]?
    public private(set) var count = 0

    /// One more than the largest id.
    public var capacity: Int { names.count }

    public func productID(_ id: Int64) -> String? {
        guard present.contains(id) else { return nil }
        return names.string(Int(id))
    }

    public func id(of productID: String) -> Int64? {
        guard !slots.isEmpty else { return nil }
        var key = productID
        return key.withUTF8 { utf8 -> Int64? in
            let mask = slots.count - 1
            var s = Int(truncatingIfNeeded: fnv(utf8)) & mask
            while true {
                let id = Int(slots[s])
                if id < 0 { return nil }
                if names.equals(id, utf8) { return Int64(id) }
                s = (s + 1) & mask
            }
        }
    }

    /// The ids in use, ascending.
    public var ids: [Int64] { (0..<Int64(capacity)).filter(present.contains) }

    /// The dictionary form an incremental build changes (needs the vector hashes).
    func idMap() -> IDMap {
        var map = IDMap()
        for id in ids { map.insert(id: id, productID: names.string(Int(id)), hash: vectorHashes?[Int(id)] ?? 0) }
        return map
    }

    /// Reads `id_map.tsv` (see ``IDMap``). Ids must ascend, as every build writes them.
    static func read(_ data: Data, keepVectorHashes: Bool) throws -> ProductIDTable {
        var names = StringColumn()
        var hashes: [UInt64] = []
        var inUse: [Int] = []
        let decoder = JSONDecoder()
        var lineNumber = 0
        try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            let all = raw.bindMemory(to: UInt8.self)
            names.reserve(strings: all.count / 24, bytes: all.count / 2)
            var start = 0
            while start < all.count {
                let end = all[start...].firstIndex(of: 0x0A) ?? all.count
                defer { start = end + 1 }
                lineNumber += 1
                if lineNumber == 1 || end == start { continue }
                let line = all[start..<end]
                guard let t1 = line.firstIndex(of: 0x09), let t2 = line[(t1 + 1)...].firstIndex(of: 0x09),
                    let id = Int(String(decoding: line[start..<t1], as: UTF8.self)), id >= 0,
                    let hash = UInt64(String(decoding: line[(t1 + 1)..<t2], as: UTF8.self), radix: 16)
                else {
                    throw IndexError(.manifest, "id_map.tsv line \(lineNumber) is malformed")
                }
                guard id >= names.count else {
                    throw IndexError(.manifest, "id_map.tsv line \(lineNumber): id \(id) is out of order (ids ascend)")
                }
                guard id < Int(Int32.max) else {
                    throw IndexError(.manifest, "id_map.tsv line \(lineNumber): id \(id) is too large")
                }
                while names.count < id {
                    try names.append(EmptyCollection<UInt8>())
                    if keepVectorHashes { hashes.append(0) }
                }
                let quoted = line[(t2 + 1)...]
                // Ids without escapes ("abc") are the bytes between the quotes; others go through JSON.
                if quoted.count >= 2, quoted.first == 0x22, quoted.last == 0x22, !quoted.contains(0x5C) {
                    try names.append(quoted.dropFirst().dropLast())
                } else {
                    guard let s = try? decoder.decode(String.self, from: Data(quoted)) else {
                        throw IndexError(
                            .manifest, "id_map.tsv line \(lineNumber): the product id is not a JSON string")
                    }
                    try names.append(Array(s.utf8))
                }
                if keepVectorHashes { hashes.append(hash) }
                inUse.append(id)
            }
        }
        var table = ProductIDTable(names: names, present: IDBitmap(capacity: names.count))
        for id in inUse { table.present.insert(Int64(id)) }
        table.count = inUse.count
        table.vectorHashes = keepVectorHashes ? hashes : nil
        table.slots = [Int32](
            repeating: -1, count: 1 << (Int.bitWidth - (max(2, inUse.count * 2) - 1).leadingZeroBitCount))
        let mask = table.slots.count - 1
        for id in inUse {
            var s = Int(truncatingIfNeeded: table.names.hash(id)) & mask
            while table.slots[s] >= 0 {
                if table.names.same(Int(table.slots[s]), id) {
                    throw IndexError(.manifest, "id_map.tsv names product \(table.names.string(id)) twice")
                }
                s = (s + 1) & mask
            }
            table.slots[s] = Int32(id)
        }
        return table
    }

    private init(names: StringColumn, present: IDBitmap) {
        self.names = names
        self.present = present
    }
}

/// The filter and display columns of the indexed products: category (a small code per id),
/// stock and title, read page by page from the store.
struct ProductColumns: Sendable {
    /// Category code per id: 0 none, else 1 + index into `categoryNames`.
    private var category: [UInt16]
    private(set) var categoryNames: [String] = []
    private var categoryCodes: [String: UInt16] = [:]
    /// Products the store has (and the index holds).
    private(set) var present: IDBitmap
    /// Present and in stock, or stock unknown (the platform counts unknown as in stock).
    private(set) var inStock: IDBitmap
    /// Stock known (to tell `nil` from `true` in answers).
    private var stockKnown: IDBitmap
    private var titles = StringColumn()
    /// Row of each id's title in `titles` (products arrive in the store's order, not by id);
    /// UInt32.max: no title.
    private var titleRow: [UInt32]
    /// Per category: its products, and those in stock (what the default filters allow).
    private(set) var byCategory: [IDBitmap] = []
    private(set) var byCategoryInStock: [IDBitmap] = []
    /// The members of each of those bitmaps, counted once by ``finish()`` (a search asks on
    /// every request, and counting 1M bits each time is 15,625 popcounts).
    private(set) var presentCount = 0, inStockCount = 0
    private(set) var byCategoryCount: [Int] = [], byCategoryInStockCount: [Int] = []
    /// Products flagged as gifts (`gift_flags`): a bitmap beside stock and category.
    private(set) var gift: IDBitmap
    private(set) var giftCount = 0
    /// The filters above with gifts left out: what a search allows unless it asks for gifts.
    private(set) var withoutGifts = Filters()

    /// One set of the filter bitmaps, with their counts.
    struct Filters: Sendable {
        var present = IDBitmap(capacity: 0), inStock = IDBitmap(capacity: 0)
        var byCategory: [IDBitmap] = [], byCategoryInStock: [IDBitmap] = []
        var presentCount = 0, inStockCount = 0
        var byCategoryCount: [Int] = [], byCategoryInStockCount: [Int] = []
    }

    init(capacity: Int) {
        gift = IDBitmap(capacity: capacity)
        category = [UInt16](repeating: 0, count: capacity)
        present = IDBitmap(capacity: capacity)
        inStock = IDBitmap(capacity: capacity)
        stockKnown = IDBitmap(capacity: capacity)
        titleRow = [UInt32](repeating: .max, count: capacity)
    }

    var count: Int { present.count }

    /// Marks a product as a gift (before ``finish()``).
    mutating func markGift(_ id: Int64) { gift.insert(id) }

    /// A replica's change to one product's gift flag (``refreshWithoutGifts()`` after the batch).
    mutating func setGift(_ id: Int64, _ isGift: Bool) {
        if isGift { gift.insert(id) } else { gift.remove(id) }
    }

    func isGift(_ id: Int64) -> Bool { gift.contains(id) }

    /// The ids a search may return and how many: every present product, or those of one category
    /// (`category` code), in stock or not, gifts left out unless `includeGifts`.
    func allowed(category: Int?, inStockOnly: Bool, includeGifts: Bool) -> (IDBitmap, Int) {
        if includeGifts {
            guard let c = category else { return inStockOnly ? (inStock, inStockCount) : (present, presentCount) }
            return inStockOnly ? (byCategoryInStock[c], byCategoryInStockCount[c]) : (byCategory[c], byCategoryCount[c])
        }
        let f = withoutGifts
        guard let c = category else { return inStockOnly ? (f.inStock, f.inStockCount) : (f.present, f.presentCount) }
        return inStockOnly
            ? (f.byCategoryInStock[c], f.byCategoryInStockCount[c]) : (f.byCategory[c], f.byCategoryCount[c])
    }

    /// Records one product under `id` (in any id order).
    mutating func set(_ id: Int64, _ p: Product) throws {
        let i = Int(id)
        present.insert(id)
        if let known = p.inStock {
            stockKnown.insert(id)
            if known { inStock.insert(id) }
        } else {
            inStock.insert(id)
        }
        if let c = p.category {
            if let code = categoryCodes[c] {
                category[i] = code
            } else {
                guard categoryNames.count < Int(UInt16.max) else {
                    throw IndexError(.memory, "more than 65,534 categories")
                }
                categoryNames.append(c)
                let code = UInt16(categoryNames.count)
                categoryCodes[c] = code
                category[i] = code
            }
        }
        if let t = p.title {
            titleRow[i] = UInt32(titles.count)
            try titles.append(t.utf8)
        }
    }

    /// A replica's change to one indexed product (`nil`: deleted, unlisted, or its vector now
    /// lives in the delta): its bits, counts and columns follow, copy-on-write.
    mutating func update(_ id: Int64, _ p: Product?) throws {
        let i = Int(id)
        if present.contains(id) {
            presentCount -= 1
            let wasIn = inStock.contains(id)
            if wasIn { inStockCount -= 1 }
            let c = Int(category[i])
            if c != 0 {
                byCategory[c - 1].remove(id)
                byCategoryCount[c - 1] -= 1
                if wasIn {
                    byCategoryInStock[c - 1].remove(id)
                    byCategoryInStockCount[c - 1] -= 1
                }
            }
            present.remove(id)
            inStock.remove(id)
            stockKnown.remove(id)
            category[i] = 0
            titleRow[i] = .max
        }
        guard let p else { return }
        try set(id, p)
        presentCount += 1
        let isIn = inStock.contains(id)
        if isIn { inStockCount += 1 }
        let c = Int(category[i])
        if c != 0 {
            while byCategory.count < categoryNames.count {
                byCategory.append(IDBitmap(capacity: present.capacity))
                byCategoryInStock.append(IDBitmap(capacity: present.capacity))
                byCategoryCount.append(0)
                byCategoryInStockCount.append(0)
            }
            byCategory[c - 1].insert(id)
            byCategoryCount[c - 1] += 1
            if isIn {
                byCategoryInStock[c - 1].insert(id)
                byCategoryInStockCount[c - 1] += 1
            }
        }
    }

    /// Builds the per-category bitmaps once every product is in.
    mutating func finish() {
        byCategory = categoryNames.map { _ in IDBitmap(capacity: present.capacity) }
        for i in 0..<category.count where category[i] != 0 { byCategory[Int(category[i]) - 1].insert(Int64(i)) }
        byCategoryInStock = byCategory.map { $0.intersection(inStock) }
        presentCount = present.count
        inStockCount = inStock.count
        byCategoryCount = byCategory.map(\.count)
        byCategoryInStockCount = byCategoryInStock.map(\.count)
        gift = gift.intersection(present)
        refreshWithoutGifts()
    }

    /// The gift-free copies of the filters, from the filters as they are now (after
    /// ``finish()``, and after a replica's ``update(_:_:)``s).
    mutating func refreshWithoutGifts() {
        giftCount = gift.intersection(present).count
        if giftCount == 0 {
            withoutGifts = Filters(
                present: present, inStock: inStock, byCategory: byCategory, byCategoryInStock: byCategoryInStock,
                presentCount: presentCount, inStockCount: inStockCount, byCategoryCount: byCategoryCount,
                byCategoryInStockCount: byCategoryInStockCount)
        } else {
            var f = Filters()
            f.present = present.subtracting(gift)
            f.inStock = inStock.subtracting(gift)
            f.byCategory = byCategory.map { $0.subtracting(gift) }
            f.byCategoryInStock = byCategoryInStock.map { $0.subtracting(gift) }
            f.presentCount = f.present.count
            f.inStockCount = f.inStock.count
            f.byCategoryCount = f.byCategory.map(\.count)
            f.byCategoryInStockCount = f.byCategoryInStock.map(\.count)
            withoutGifts = f
        }
    }

    func categoryCode(_ name: String) -> Int? { categoryCodes[name].map { Int($0) - 1 } }

    func categoryName(_ id: Int64) -> String? {
        let c = category[Int(id)]
        return c == 0 ? nil : categoryNames[Int(c) - 1]
    }

    func stock(_ id: Int64) -> Bool? { stockKnown.contains(id) ? inStock.contains(id) : nil }

    func title(_ id: Int64) -> String? {
        let row = titleRow[Int(id)]
        return row == .max ? nil : titles.string(Int(row))
    }
}
