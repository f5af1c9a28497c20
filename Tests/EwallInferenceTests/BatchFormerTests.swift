import EwallInference
import Testing

@Suite("BatchFormer: where a batch for the model is formed")
struct BatchFormerTests {
    @Test("A known list is cut into full batches in order; only the last is short", arguments: [0, 1, 31, 32, 33, 70])
    func list(_ n: Int) {
        let batches = BatchFormer.batches(of: Array(0..<n), size: 32)
        #expect(batches.flatMap { $0 } == Array(0..<n))
        #expect(batches.count == (n + 31) / 32)
        #expect(batches.dropLast().allSatisfy { $0.count == 32 })
        #expect(batches.last.map { $0.count >= 1 && $0.count <= 32 } ?? true)
    }

    @Test("A stream ships a batch the moment it is full; a flush ships the partial rest, once")
    func stream() {
        var former = BatchFormer<Int>(size: 4)
        var shipped: [[Int]] = []
        for i in 0..<10 {
            if let full = former.add(i) { shipped.append(full) }
        }
        #expect(shipped == [[0, 1, 2, 3], [4, 5, 6, 7]])
        #expect(former.forming == [8, 9])
        #expect(former.flush() == [8, 9])
        #expect(former.flush() == nil)
        #expect(former.add(10) == nil)
        #expect(former.forming == [10])
    }

    @Test("A queue of callers gives at most one batch from its front, oldest first")
    func queue() {
        let former = BatchFormer<Int>(size: 3)
        var queue = [5, 6, 7, 8]
        #expect(former.take(from: &queue) == [5, 6, 7])
        #expect(queue == [8])
        #expect(former.take(from: &queue) == [8])
        #expect(queue.isEmpty)
        #expect(former.take(from: &queue).isEmpty)
    }
}
