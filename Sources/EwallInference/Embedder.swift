import EwallCore
import EwallImaging
import Foundation

/// Runs preprocessed images through the model in batches and returns one L2-normalised
/// vector, or one item error, per input, in input order.
///
/// Forward passes run on dedicated threads (``BlockingWorker``), one per model stream
/// (``ModelOptions/streams``): with one stream, one batch at a time; with more, that many
/// batches at once when callers have them in flight. Many tasks may share one embedder.
///
/// ```swift
/// let embedder = try Embedder(options: ModelOptions(path: "models/resnet50.pt"))
/// let results = await embedder.embed(tensors)   // [Result<[Float], InferenceError>]
/// ```
public final class Embedder: Sendable {
    public let model: TorchModel
    private let worker: BlockingWorker

    /// Loads the model (load and warm-up take a few seconds). `auto` must be decided first
    /// (`ImageEmbedder` does, see ``TorchModel/init(options:)``).
    public init(options: ModelOptions) throws(InferenceError) {
        self.model = try TorchModel(options: options)
        self.worker = BlockingWorker(name: "ewall-inference", threads: options.streams)
    }

    /// Batches the model runs at once (``ModelOptions/streams``): callers that want the
    /// throughput keep this many batches in flight.
    public var streams: Int { worker.threads }

    public var outputDim: Int { model.outputDim }
    public var batchSize: Int { model.options.batchSize }

    /// Embeds `tensors` in batches of ``batchSize`` (the last may be shorter; ``BatchFormer``).
    /// A NaN, infinite or all-zero output row is that item's `.invalidVector` error; a failing
    /// forward pass fails the items of its batch only. Checks cancellation between batches:
    /// items whose batch did not run come back as `model_error` failures saying "cancelled".
    public func embed(_ tensors: [ImageTensor]) async -> [Result<[Float], InferenceError>] {
        var results: [Result<[Float], InferenceError>] = []
        results.reserveCapacity(tensors.count)
        for batch in BatchFormer.batches(of: tensors, size: batchSize) {
            if Task.isCancelled {
                let e = InferenceError(.forwardFailed, "cancelled before this item's batch ran")
                results += Array(repeating: .failure(e), count: tensors.count - results.count)
                break
            }
            results += await embedBatch(Array(batch))
        }
        return results
    }

    /// One forward pass over at most ``batchSize`` tensors (a batch ``BatchFormer`` formed).
    public func embedBatch(_ batch: [ImageTensor]) async -> [Result<[Float], InferenceError>] {
        precondition(batch.count <= batchSize, "a batch holds at most \(batchSize) images")
        if batch.isEmpty { return [] }
        let model = self.model
        let dim = model.outputDim
        do {
            let raw = try await worker.run { () throws(InferenceError) -> [Float] in
                var input = [Float]()
                input.reserveCapacity(batch.count * ImageTensor.count)
                for t in batch { input += t.values }
                return try input.withUnsafeBufferPointer { buf throws(InferenceError) in
                    try model.forward(buf, count: batch.count)
                }
            }
            return (0..<batch.count).map { i in Self.normalized(raw[i * dim..<(i + 1) * dim]) }
        } catch  where error.code == .outOfMemory && batch.count > 1 {
            // The device ran out of memory for this batch: each half gets its own try, down to
            // single images, before any item fails.
            let half = batch.count / 2
            return await embedBatch(Array(batch[..<half])) + embedBatch(Array(batch[half...]))
        } catch {
            return Array(repeating: .failure(error), count: batch.count)
        }
    }

    /// L2-normalises one output row, or says why it cannot be.
    public static func normalized(_ row: ArraySlice<Float>) -> Result<[Float], InferenceError> {
        var sum: Double = 0
        for v in row {
            guard v.isFinite else {
                return .failure(
                    InferenceError(.invalidVector, "the model produced a NaN or infinite value for this image"))
            }
            sum += Double(v) * Double(v)
        }
        guard sum > 0 else {
            return .failure(InferenceError(.invalidVector, "the model produced an all-zero vector for this image"))
        }
        let inv = Float(1 / sum.squareRoot())
        return .success(row.map { $0 * inv })
    }
}
