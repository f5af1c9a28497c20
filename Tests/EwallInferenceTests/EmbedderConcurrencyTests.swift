import EwallCore
import EwallImaging
import EwallInference
import EwallTestSupport
import Foundation
import Testing

@Suite("Embedder with ResNet50: batching and concurrency")
struct EmbedderResNetTests {
    static func tensors(_ n: Int) throws -> [ImageTensor] {
        let pre = Preprocessor()
        return try Fixtures.photos().prefix(n).map { try pre.tensor(from: Fixtures.bytes($0)) }
    }

    @Test("batches of 4 over 10 images: results in input order, each normalised, equal to one-by-one")
    func batching() async throws {
        let embedder = try Embedder(options: ModelOptions(path: Fixtures.model, batchSize: 4))
        #expect(embedder.outputDim == 2048)
        let t = try Self.tensors(10)
        let all = try await embedder.embed(t).map { try $0.get() }
        #expect(all.count == 10)
        for v in all { #expect(abs(VectorMath.norm(v) - 1) < 1e-5) }
        for i in [0, 5, 9] {
            let alone = try await embedder.embed([t[i]])[0].get()
            #expect(VectorMath.cosine(alone, all[i]) >= 0.99999, "image \(i) alone vs in a batch")
        }
    }

    @Test("one embedder shared by 6 concurrent tasks gives each task its own correct vectors")
    func concurrentTasks() async throws {
        let embedder = try Embedder(options: ModelOptions(path: Fixtures.model, batchSize: 4))
        let t = try Self.tensors(6)
        let sequential = try await embedder.embed(t).map { try $0.get() }
        let concurrent = try await withThrowingTaskGroup(of: (Int, [Float]).self) { group in
            for i in 0..<6 {
                group.addTask { (i, try await embedder.embed([t[i], t[(i + 1) % 6]])[0].get()) }
            }
            var out = [[Float]](repeating: [], count: 6)
            for try await (i, v) in group { out[i] = v }
            return out
        }
        for i in 0..<6 { #expect(VectorMath.cosine(concurrent[i], sequential[i]) >= 0.99999) }
    }

    @Test("blocking jobs run on dedicated threads and never starve Swift's cooperative pool")
    func dedicatedThread() async throws {
        @Sendable func tid() -> UInt { UInt(bitPattern: Int(bitPattern: pthread_self())) }
        let first = BlockingWorker(name: "ewall-test")
        let t1 = await first.run { tid() }, t2 = await first.run { tid() }
        #expect(t1 == t2, "every job of one worker runs on the same thread")
        // More blocked jobs than the cooperative pool has threads, each waiting for a signal that
        // only a cooperative task sends. If jobs ran on the pool, that task could not run and the
        // waits would time out.
        let n = ProcessInfo.processInfo.activeProcessorCount + 2
        let workers = (0..<n).map { BlockingWorker(name: "ewall-test-\($0)") }
        let signals = (0..<n).map { _ in DispatchSemaphore(value: 0) }
        let signaled = await withTaskGroup(of: Bool.self) { group in
            for i in 0..<n {
                group.addTask { await workers[i].run { signals[i].wait(timeout: .now() + 10) == .success } }
            }
            group.addTask {
                try? await Task.sleep(for: .milliseconds(50))
                for s in signals { s.signal() }
                return true
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(signaled == n + 1, "blocked jobs starved the cooperative pool")
    }

    @Test("a worker with 2 threads runs 2 jobs at once; with 1 thread, one after the other")
    func workerThreads() async throws {
        // Each job announces itself and waits (at most 2 s) for the other to arrive: both meet
        // only when two jobs really run at the same time.
        func meet(_ worker: BlockingWorker) async -> [Bool] {
            let arrived = Locked(0)
            return await withTaskGroup(of: Bool.self) { group in
                for _ in 0..<2 {
                    group.addTask {
                        await worker.run { () -> Bool in
                            arrived.withLock { $0 += 1 }
                            let until = Date().addingTimeInterval(2)
                            while Date() < until {
                                if arrived.withLock({ $0 }) == 2 { return true }
                                usleep(1000)
                            }
                            return false
                        }
                    }
                }
                return await group.reduce(into: []) { $0.append($1) }
            }
        }
        #expect(await meet(BlockingWorker(name: "ewall-test-2", threads: 2)) == [true, true])
        #expect(await meet(BlockingWorker(name: "ewall-test-1")).contains(false), "one thread ran two jobs at once")
    }

    @Test("2 model streams of 1 thread: 10 images in 3 concurrent batches give the 1-stream vectors, in order")
    func streams() async throws {
        let t = try Self.tensors(10)
        let one = try await Embedder(options: ModelOptions(path: Fixtures.model, threads: 2, batchSize: 4)).embed(t)
            .map { try $0.get() }
        let two = try Embedder(options: ModelOptions(path: Fixtures.model, threads: 2, batchSize: 4, streams: 2))
        #expect(two.streams == 2 && two.model.options.intraOpThreads == 1)
        let batches = stride(from: 0, to: 10, by: 4).map { Array(t[$0..<min($0 + 4, 10)]) }
        let concurrent = try await withThrowingTaskGroup(of: (Int, [[Float]]).self) { group in
            for (k, b) in batches.enumerated() {
                group.addTask { (k, try await two.embedBatch(b).map { try $0.get() }) }
            }
            var out = [[[Float]]](repeating: [], count: batches.count)
            for try await (k, v) in group { out[k] = v }
            return out.flatMap { $0 }
        }
        #expect(concurrent.count == 10)
        for i in 0..<10 { #expect(VectorMath.cosine(concurrent[i], one[i]) >= 0.99999, "image \(i)") }
    }

    @Test("streams must be at least 1")
    func zeroStreams() {
        #expect(throws: InferenceError.self) { try Embedder(options: ModelOptions(path: Fixtures.model, streams: 0)) }
    }
}
