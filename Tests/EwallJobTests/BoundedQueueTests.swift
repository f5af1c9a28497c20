import Testing

@testable import EwallJob

@Suite("Bounded queue between pipeline stages")
struct BoundedQueueTests {
    final class Payload: Sendable {}

    @Test func aPoppedElementIsNotKeptAlive() async {
        let queue = BoundedQueue<Payload>(capacity: 4)
        weak var weakPayload: Payload?
        do {
            let payload = Payload()
            weakPayload = payload
            await queue.send(payload)
        }
        #expect(weakPayload != nil)
        var popped = await queue.next()
        #expect(popped != nil)
        popped = nil
        // Retaining popped slots once kept ~1,000 decoded tensors alive (hundreds of MiB).
        #expect(weakPayload == nil)
    }

    @Test func sendersWaitForRoomAndReceiversDrainInOrder() async {
        let queue = BoundedQueue<Int>(capacity: 2)
        let producer = Task {
            for i in 0..<100 { await queue.send(i) }
            queue.finish()
        }
        var got: [Int] = []
        while let x = await queue.next() {
            #expect(queue.count <= 2)
            got.append(x)
        }
        await producer.value
        #expect(got == Array(0..<100))
    }
}
