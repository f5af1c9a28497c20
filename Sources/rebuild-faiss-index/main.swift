import ArgumentParser
import EwallCLIBase
import EwallIndex
import EwallStore
import Foundation

/// `rebuild-faiss-index`: builds the FAISS index folder from the store. Parses flags into
/// ``IndexBuildOptions`` and calls ``IndexBuilder``; all work is in EwallIndex. Links no libtorch.
@main
struct RebuildFaissIndex: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rebuild-faiss-index",
        abstract:
            "Build the FAISS index of the store's vectors: the right index for the catalogue's size, tuned for recall.",
        discussion: """
            Reads every vector of one model id + preprocessing from the store, streaming, and \
            writes an index folder: image_index.faiss (readable by Python's faiss.read_index), \
            manifest.json (factory, metric, search parameters, dim, count, model, recall, \
            checksums) and id_map.tsv (int64 id, vector hash, product id as JSON).

            --index auto picks by catalogue size and --max-memory: Flat below 5,000 vectors; \
            IVF-Flat (nlist about 4*sqrt(N), at least 39 points per list) while float vectors \
            fit; IVF-SQ8, then IVF-PQ, when they do not. Compressed kinds (SQ, PQ) re-rank: \
            their codes find 4x (SQ8) or 16x (PQ) k candidates, and the exact vectors, kept in \
            vectors.f32 beside the index and memory-mapped by the server (not counted in \
            --max-memory), choose the k answered; --no-refine leaves them out. Below the \
            smallest PQ, or when the chosen kind cannot reach --target-recall, the build fails \
            and names the --max-memory that the next kind needs. HNSW is never picked automatically \
            (slow to build here, cannot remove vectors); name it with --index HNSW32. For \
            approximate indexes recall@10 is measured against exact search on catalogue \
            products (drawn from the whole store, as similar-by-id serves it) and nprobe/efSearch raised until --target-recall is met; both are recorded. \
            IVF over a store with categories: recall is measured again under the similar-products \
            default filters (same category, in stock; 3,000 queries of its own drawn among the \
            in-stock products, against exact search among the products the filters allow), and \
            the nprobe that meets the target with a margin of two standard errors of that \
            estimate is recorded as search.filtered_nprobe, where filtered searches start. IVF over \
            flat centroids with more than 32 lists (every IVF kind auto picks) also writes \
            nearest_lists.bin: each vector's 32 nearest lists and the distances of the 4th, 8th, \
            16th and 32nd, found by the same coarse pass that places it (144 bytes a product, \
            memory-mapped by the server). A search for products similar to a stored one then \
            reads a few of those centroids instead of all of them, with the same answers; \
            --incremental keeps the rows and adds the new ones. With those rows the filtered \
            tuning also tries a second hop: after the first few lists, the recorded lists of the \
            best products found (search.second_hop: top 3-10, 2-8 lists each), which reaches \
            neighbours that a hub list (the mean of many clusters, nearest to many queries) \
            would otherwise push far down the nprobe order. Of the plain nprobe and the hop \
            that meet the target, the one whose searches ran faster at build is recorded; \
            both curves, with the time of a search, are in filtered_recall.

            The new folder is written beside the old one and swapped in atomically: readers see \
            the old index or the new one, never a mix. A lock file beside the folder stops two \
            rebuilds at once. --incremental adds new and changed vectors and removes deleted \
            ones; where that cannot give a good index (the catalogue outgrew the index kind or \
            its lists, an index that cannot remove, another model) it does a full rebuild and \
            says why.

            Exit status: 0 built; 1 built (an index named with --index), but the recall target \
            was not met; 2 error (store, lock held, bad options, --max-memory below the smallest \
            index, or a compressed kind auto chose that misses the target); 130 interrupted.
            """)

    @OptionGroup var database: DatabaseFlags

    @Option(name: .long, help: ArgumentHelp("The index folder.", discussion: "Default: $EWALL_INDEX, then data/faiss."))
    var out: String?

    @Option(
        name: .long, help: "auto, or a FAISS index_factory string (Flat, IVF1024,Flat, IVF4096,PQ64x8np, HNSW32, ...).")
    var index: String = "auto"

    @Option(name: .long, help: "Distance: l2 (the platform's; FAISS reports it squared) or ip (inner product).")
    var metric: IndexMetric = .l2

    @Option(name: .long, help: "recall@10 an approximate index must reach against exact search.")
    var targetRecall: Double = 0.95

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Memory the index's vectors may take (e.g. 512M, 8G).",
            discussion: "Default: half the machine's memory."))
    var maxMemory: String?

    @Flag(
        name: .long,
        help: "Compressed kinds (SQ, PQ): no exact vectors file and no re-ranking (less disk, lower recall).")
    var noRefine = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "IVF: split every list holding more than this many times the mean share of the training sample (0: off).",
            discussion:
                "k-means on clustered high-dimensional vectors leaves hub centroids, the mean of many clusters, that lie near every query and collect a large share of the catalogue; each is split by k-means over its own vectors into lists of about the mean, so the index has somewhat more lists than 4*sqrt(N). The file stays a stock IndexIVF."
        ))
    var maxListFactor: Double = 4

    @Flag(
        name: .long,
        help: "Update the existing index (add new and changed vectors, remove deleted ones) instead of rebuilding.")
    var incremental = false

    @Option(name: .long, help: "Index the vectors of this model id (needed only when the store holds several).")
    var modelId: String?

    @Option(name: .long, help: "...and this preprocessing.")
    var preprocess: String?

    @Option(
        name: .long,
        help:
            "Catalogue products searched for measuring recall (unfiltered; the filtered measure draws 3,000 of its own)."
    )
    var recallQueries: Int = 1000

    @Option(name: .long, help: "Seed for the choice of training and query vectors.")
    var seed: UInt64 = 0

    @Option(name: .long, help: "FAISS (OpenMP) threads.")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    @Flag(name: .long, help: "Print the summary as one JSON object on stdout.")
    var json = false

    func validate() throws {
        guard (0...1).contains(targetRecall) else { throw ValidationError("--target-recall must be between 0 and 1") }
        if let maxMemory, parseSize(maxMemory) == nil {
            throw ValidationError("--max-memory: cannot read \(maxMemory) (e.g. 512M, 8G)")
        }
        guard recallQueries >= 1, threads >= 1 else {
            throw ValidationError("--recall-queries and --threads must be at least 1")
        }
        guard maxListFactor == 0 || maxListFactor >= 1 else {
            throw ValidationError("--max-list-factor must be 0 (off) or at least 1")
        }
    }

    func run() async throws {
        BLASCore.selectAtStartup() // before any BLAS work: OpenBLAS's kernels for this CPU (see BLASCore)
        bootstrapLogging()
        let options = IndexBuildOptions(
            folder: resolvedIndexFolder(out), index: index, metric: metric, targetRecall: targetRecall,
            maxMemory: maxMemory.flatMap(parseSize) ?? IndexBuildOptions.defaultMaxMemory, incremental: incremental,
            modelID: modelId, preprocessing: preprocess, recallQueries: recallQueries, seed: seed, threads: threads,
            refine: !noRefine, maxListFactor: maxListFactor == 0 ? nil : maxListFactor)
        let store = try await database.open()
        let display = BuildProgressDisplay(terminal: isatty(STDERR_FILENO) != 0)
        // Nothing is published before the final rename: an interrupted build leaves the old index.
        let signals = SignalHandler { sig in
            FileHandle.standardError.write(
                Data("\nrebuild-faiss-index: interrupted; the index folder is unchanged\n".utf8))
            Foundation.exit(ExitCodes.interrupted(by: sig))
        }
        let summary: IndexBuildSummary
        do {
            summary = try await IndexBuilder.build(store: store, options: options, progress: { display.show($0) })
        } catch {
            display.finish()
            await store.close()
            throw fail((error as? IndexError)?.message ?? (error as? StoreError)?.message ?? "\(error)")
        }
        withExtendedLifetime(signals) {}
        display.finish()
        await store.close()
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            FileHandle.standardOutput.write(try enc.encode(summary) + Data("\n".utf8))
        } else {
            print(IndexSummaryText.render(summary))
        }
        if let r = summary.recall, !r.met { throw ExitCode(ExitCodes.someFailed) }
    }
}

extension IndexMetric: ExpressibleByArgument {}
