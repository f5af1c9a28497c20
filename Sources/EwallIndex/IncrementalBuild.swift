import EwallCore
import EwallStore
import Foundation

/// `--incremental`: brings an existing index up to date with the store without retraining:
/// new vectors are added under new ids, changed ones (their FNV-1a hash differs from the id
/// map's) are removed and re-added, and vectors gone from the store are removed. It declines,
/// with the reason, where that would give a worse index than a full rebuild.
enum Incremental {
    enum Outcome {
        case done(IndexBuildSummary)
        case needsFullRebuild(String)
    }

    static func run(
        store: any EmbeddingStore, options: IndexBuildOptions,
        progress: @escaping @Sendable (IndexBuildProgress) -> Void
    ) async throws -> Outcome {
        let started = Date()
        let old = try options.folder.load(vectorHashes: true)
        let m = old.manifest
        let modelID = options.modelID ?? m.modelID
        let preprocessing = options.preprocessing ?? m.preprocessing
        let keyCount = try await store.resolveKey(modelID: modelID, preprocessing: preprocessing)
        let (key, n, d) = (keyCount.key, keyCount.count, keyCount.dimension)
        if key != m.key {
            return .needsFullRebuild(
                "the index holds \(m.modelID) (\(m.preprocessing)) vectors, the store's are \(key.modelID) (\(key.preprocessing))"
            )
        }
        if d != m.dimension { return .needsFullRebuild("the dimension changed from \(m.dimension) to \(d)") }
        if options.metric != m.metric {
            return .needsFullRebuild("the metric changed from \(m.metric.rawValue) to \(options.metric.rawValue)")
        }
        if m.refine != nil {
            return .needsFullRebuild(
                "the index re-ranks from \(ExactVectors.fileName), which an incremental update does not rewrite")
        }
        let wanted = try IndexBuilder.plan(options, count: n, dimension: d)
        let index = old.index
        if options.index != "auto" {
            if wanted.factory != m.factory && "IDMap2," + wanted.factory != m.factory {
                return .needsFullRebuild("--index \(options.index) differs from the index's \(m.factory)")
            }
        } else if family(wanted.factory) != family(m.factory) {
            return .needsFullRebuild(
                "the catalogue now has \(n) vectors (the index \(m.count)): --index auto picks \(wanted.factory), the index is \(m.factory)"
            )
        } else if index.kind == .ivf, let now = lists(wanted.factory),
            now > 2 * index.listCount || 2 * now < index.listCount
        {
            return .needsFullRebuild(
                "the catalogue now has \(n) vectors (the index \(m.count)): its \(index.listCount) lists trained "
                    + "on the old catalogue no longer fit (\(now) would); retraining needs a full rebuild")
        }

        var idMap = old.ids.idMap()
        var nextID = m.nextID
        var seen = Set<Int64>()
        seen.reserveCapacity(n)
        var added = 0, changed = 0, unchanged = 0
        var rng = SplitMix64(seed: options.seed)
        let queryCount = m.recall != nil ? min(options.recallQueries, n) : 0
        let queryOrdinals = Set(sample(n, queryCount, &rng))
        var queries = RecallQueries(dimension: d)
        var stale: [Int64] = []

        // The nearest lists of the vectors kept stay valid (the centroids do not change); new
        // ids get theirs as they are added.
        let nearest = try old.nearest.map {
            try NearestListsWriter(url: options.folder.nearestListsStaging, keeping: $0, rows: Int(m.nextID))
        }
        defer { if let nearest { try? FileManager.default.removeItem(at: nearest.url) } }
        let ta = Date()
        try await Stream.pages(store, key, pageSize: options.pageSize) { page in
            var newIDs: [Int64] = [], newRows: [Int] = [], newHashes: [UInt64] = []
            page.vectors.withUnsafeBufferPointer { buf in
                for r in 0..<page.count {
                    let hash = IDMap.hash(UnsafeBufferPointer(rebasing: buf[r * d..<(r + 1) * d]))
                    let pid = page.productIDs[r]
                    var id: Int64
                    if let existing = idMap.ids[pid] {
                        id = existing
                        if idMap.hashes[existing] == hash {
                            unchanged += 1
                        } else {
                            stale.append(existing)
                            id = nextID
                            nextID += 1
                            changed += 1
                            newIDs.append(id)
                            newRows.append(r)
                            newHashes.append(hash)
                        }
                    } else {
                        id = nextID
                        nextID += 1
                        added += 1
                        newIDs.append(id)
                        newRows.append(r)
                        newHashes.append(hash)
                    }
                    seen.insert(id)
                    if queryOrdinals.contains(page.firstOrdinal + r) { queries.append(page.vector(r), id: id) }
                }
            }
            if !newIDs.isEmpty {
                var x: [Float] = []
                x.reserveCapacity(newIDs.count * d)
                for r in newRows { x.append(contentsOf: page.vector(r)) }
                if let nearest {
                    try x.withUnsafeBufferPointer { try nearest.add($0, ids: newIDs, to: index) }
                } else {
                    try index.add(x, ids: newIDs)
                }
                for (i, r) in newRows.enumerated() {
                    if let oldID = idMap.ids[page.productIDs[r]] { idMap.remove(id: oldID) }
                    idMap.insert(id: newIDs[i], productID: page.productIDs[r], hash: newHashes[i])
                }
            }
            progress(
                IndexBuildProgress(phase: "comparing with the index", done: page.firstOrdinal + page.count, total: n))
        }
        // Changed vectors were re-added under new ids; their old ids go now, with the deleted ones.
        let gone = idMap.productIDs.keys.filter { !seen.contains($0) }
        let removedProducts = gone.count
        let toRemove = stale + gone
        if !toRemove.isEmpty {
            guard index.canRemove else {
                return .needsFullRebuild(
                    "\(changed) changed and \(removedProducts) deleted vectors must leave the index, and \(m.factory) cannot remove vectors"
                )
            }
            try index.remove(ids: toRemove)
            for id in gone { idMap.remove(id: id) }
        }
        var seconds = ["update": Date().timeIntervalSince(ta)]
        guard index.count == n, idMap.count == n else {
            throw IndexError(
                .mismatch,
                "after the update the index holds \(index.count) vectors and the store \(n): the store changed during the build; run it again"
            )
        }

        // Recall with the kept settings; climb the ladder again if it fell below the target.
        var search = m.search
        var recall: IndexManifest.Recall?
        if queryCount > 0 {
            let tt = Date()
            var truth = GroundTruth(queries: queries, k: IndexBuilder.recallK + 1, metric: options.metric)
            var ordinal = 0
            try await Stream.pages(store, key, pageSize: options.pageSize) { page in
                let ids = page.productIDs.map { idMap.ids[$0]! }
                try page.vectors.withUnsafeBufferPointer { try truth.merge(chunk: $0, ids: ids) }
                ordinal += page.count
                progress(IndexBuildProgress(phase: "exact neighbours for recall", done: ordinal, total: n))
            }
            let now = try Tuning.recall(
                index: index, truth: truth,
                parameters: SearchParameters(nprobe: search.nprobe, efSearch: search.efSearch))
            if now >= options.targetRecall {
                recall = IndexManifest.Recall(
                    k: IndexBuilder.recallK, measured: now, target: options.targetRecall, met: true,
                    queries: truth.queries.count,
                    curve: [.init(nprobe: search.nprobe, efSearch: search.efSearch, recall: now)])
            } else {
                (search, recall) = try Tuning.tune(
                    index: index, truth: truth, target: options.targetRecall, progress: progress)
            }
            try index.setDefaults(nprobe: search.nprobe, efSearch: search.efSearch)
            seconds["tune"] = Date().timeIntervalSince(tt)
        }

        // The filtered nprobe of the last full build stays while the unfiltered one does (an
        // update moves few vectors); re-tuned, it falls back to twice nprobe until the next full build.
        if search.nprobe != m.search.nprobe {
            search.filteredNprobe = nil
            search.secondHop = nil
        }
        let tw = Date()
        var manifest = IndexManifest(
            factory: m.factory, metric: m.metric, distance: m.distance, search: search, dimension: d,
            count: index.count,
            modelID: key.modelID, preprocessing: key.preprocessing, builtAt: isoNow(),
            buildSeconds: Date().timeIntervalSince(started), buildMode: "incremental", choice: m.choice, recall: recall,
            nextID: nextID, files: [:])
        if search.filteredNprobe != nil { manifest.filteredRecall = m.filteredRecall }
        manifest.changeSeq = options.changeSeq
        if let nearest {
            try nearest.finish(rows: nextID)
            manifest.nearest = IndexManifest.Nearest()
        }
        let written = try options.folder.publish(
            index: index, idMap: idMap, manifest: manifest, nearestLists: nearest?.url)
        seconds["write"] = Date().timeIntervalSince(tw)
        seconds["total"] = Date().timeIntervalSince(started)
        var warnings: [String] = []
        if let recall, !recall.met {
            warnings.append(
                String(
                    format: "recall@10 %.3f is below the target %.2f: a full rebuild may help", recall.measured,
                    recall.target))
        }
        return .done(
            IndexBuildSummary(
                folder: options.folder.path, mode: "incremental", fullRebuildReason: nil, factory: m.factory,
                choice: m.choice,
                metric: m.metric, modelID: key.modelID, preprocessing: key.preprocessing, dimension: d,
                count: index.count,
                added: added, changed: changed, removed: removedProducts, unchanged: unchanged, search: search,
                recall: recall,
                seconds: seconds, indexBytes: written.files["index"]?.bytes ?? 0, warnings: warnings))
    }

    /// "IVF1265,Flat" and "IDMap2,Flat" -> the kind of storage: "IVF,Flat", "Flat".
    static func family(_ factory: String) -> String {
        factory.split(separator: ",").filter { $0 != "IDMap2" }.map { part in
            String(part.prefix { !$0.isNumber })
        }.joined(separator: ",")
    }

    static func lists(_ factory: String) -> Int? {
        factory.split(separator: ",").compactMap { p in
            p.hasPrefix("IVF") ? Int(p.dropFirst(3).prefix { $0.isNumber }) : nil
        }.first
    }
}
