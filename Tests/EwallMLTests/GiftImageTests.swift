import EwallML
import EwallTestSupport
import Foundation
import Testing

/// The gift detector's image step on real photos embedded by the test model: a near copy of a
/// registered gift's photo (the same picture encoded otherwise) is flagged IMAGE with the gift it
/// resembles; unrelated photos are not.
///
/// The test model is random-init: every photo's vector is close to every other's (0.92 to 0.98
/// here), so the threshold is high (0.98); near copies score 0.985 or more. A pretrained model
/// spreads them far more, and a catalogue's threshold is measured, not assumed.
@Suite("Gift detector: images", .serialized)
struct GiftImageTests {
    @Test("a near copy of a master gift's photo is IMAGE; unrelated photos are not")
    func nearCopies() async throws {
        let embedder = try ImageEmbedder(
            configuration: EmbedderConfiguration(model: ModelOptions(path: Fixtures.model)))
        let files =
            [
                Fixtures.image("source_600x400.png"), Fixtures.image("rgb8_451x300.png"),
                Fixtures.image("baseline_600x400.jpg"), Fixtures.image("lossy_451x300.webp"),
            ] + Array(try Fixtures.photos().prefix(5))
        let vectors = try await embedder.embed(files: files).map { try $0.result.get().vector }
        let rules = try GiftRules(
            data: Data(#"{"format":1,"version":"t","words":{"ko":["사은품"]},"image":{"threshold":0.98}}"#.utf8))
        let detector = try GiftDetector(
            rules: rules,
            master: [
                MasterGift(productID: "G-src", vector: vectors[0]), MasterGift(productID: "G-rgb", vector: vectors[1]),
            ])
        func decide(_ i: Int) -> GiftDecision {
            detector.decide(GiftInput(productID: "p\(i)", title: "파우치", price: 1_000, vector: vectors[i]))
        }
        let jpeg = decide(2)
        #expect(jpeg.decidedBy == .image && jpeg.giftType == "IMAGE" && jpeg.resembles?.productID == "G-src")
        let webp = decide(3)
        #expect(webp.decidedBy == .image && webp.resembles?.productID == "G-rgb")
        for i in 4..<files.count {
            let d = decide(i)
            #expect(!d.isGift, "\(files[i]): \(d.explanation)")
            #expect(d.resembles != nil)
        }
    }
}
