/// Where a batch for the model is formed. Every path to the model cuts its images into forward
/// passes here, at most ``size`` (the model's batch size) each, in arrival order; the paths
/// differ only in when a batch that is not full goes to the model:
///
/// - ``Embedder/embed(_:)`` and `ImageEmbedder` (`ewall embed`, the library) cut a known list
///   with ``batches(of:size:)``: only the list's last batch is short;
/// - the batch job's pipeline (`ewall-embed`, `ewall sync`) ``add(_:)``s images as they arrive
///   and ``flush()``es a partial batch when nothing more is on its way (the stages before it
///   are idle);
/// - the service's dynamic batcher (`EwallService`, `ewall-serve`) ``take(from:)``s its queue
///   of callers once a whole batch waits, or once the oldest caller has waited its `maxWait`.
///
/// The forward pass itself is ``Embedder/embedBatch(_:)``.
///
/// ```swift
/// var former = BatchFormer<ImageTensor>(size: embedder.batchSize)
/// for tensor in arriving { if let batch = former.add(tensor) { await run(batch) } }
/// if let rest = former.flush() { await run(rest) }
/// ```
public struct BatchFormer<Element> {
    /// The most elements a batch holds: the model's batch size.
    public let size: Int
    /// The batch being formed: fewer than ``size`` elements.
    public private(set) var forming: [Element] = []

    public init(size: Int) {
        precondition(size > 0, "a batch holds at least one image")
        self.size = size
        forming.reserveCapacity(size)
    }

    /// Adds `element` to the batch being formed; returns that batch once `element` fills it.
    public mutating func add(_ element: Element) -> [Element]? {
        forming.append(element)
        guard forming.count == size else { return nil }
        defer {
            forming = []
            forming.reserveCapacity(size)
        }
        return forming
    }

    /// The batch formed so far, shorter than ``size``, or `nil` when none is forming.
    public mutating func flush() -> [Element]? {
        guard !forming.isEmpty else { return nil }
        defer { forming = [] }
        return forming
    }

    /// The next batch from the front of `queue` (at most ``size`` elements, taken out of it).
    public func take(from queue: inout [Element]) -> [Element] {
        let n = min(size, queue.count)
        defer { queue.removeFirst(n) }
        return Array(queue.prefix(n))
    }

    /// `items` cut into batches of `size`, in order; the last is shorter when `size` does not
    /// divide their count.
    public static func batches<C: Collection>(of items: C, size: Int) -> [C.SubSequence] where C.Element == Element {
        precondition(size > 0, "a batch holds at least one image")
        var out: [C.SubSequence] = []
        var start = items.startIndex
        while start != items.endIndex {
            let end = items.index(start, offsetBy: size, limitedBy: items.endIndex) ?? items.endIndex
            out.append(items[start..<end])
            start = end
        }
        return out
    }
}

extension BatchFormer: Sendable where Element: Sendable {}
