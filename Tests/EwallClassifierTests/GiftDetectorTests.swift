import EwallClassifier
import EwallTestSupport
import Foundation
import Testing

@Suite("Gift detector")
struct GiftDetectorTests {
    static let rules: GiftRules = try! GiftRules.load(path: Fixtures.path("data/gift_rules.json"))
    static let detector = try! GiftDetector(rules: rules)

    static func decide(_ title: String, brand: String? = nil, price: Double? = 39_000) -> GiftDecision {
        detector.decide(GiftInput(productID: "p", title: title, brand: brand, price: price))
    }

    // MARK: steps

    @Test("the master list decides first, by id or by product code")
    func master() throws {
        let d = try GiftDetector(rules: Self.rules, master: [MasterGift(productID: "G1"), MasterGift(productID: "C9")])
        let byID = d.decide(GiftInput(productID: "G1", title: "울 코트", price: 0))
        #expect(byID.isGift && byID.decidedBy == .master && byID.giftType == "MASTER")
        #expect(byID.classificationReason == "사은품 마스터 등록 상품")
        let byCode = d.decide(GiftInput(productID: "X", productCode: "C9", title: "울 코트", price: 59_000))
        #expect(byCode.decidedBy == .master)
        let other = d.decide(GiftInput(productID: "G2", title: "울 코트", price: 59_000))
        #expect(!other.isGift && other.decidedBy == GiftStep.none && other.giftType == nil)
    }

    @Test("a price or a supply price of 0 is a gift; unknown prices are not")
    func zeroPrice() {
        let d = Self.detector
        let supply = d.decide(GiftInput(title: "울 코트", price: 59_000, supplyPrice: 0))
        #expect(supply.isGift && supply.decidedBy == .zeroPrice && supply.giftType == "ZERO_PRICE")
        #expect(supply.classificationReason == "공급가 0원 (자동분류)")
        #expect(!supply.isRevenue)
        let price = d.decide(GiftInput(title: "울 코트", price: 0))
        #expect(price.decidedBy == .zeroPrice && price.classificationReason == "판매가 0원 (자동분류)")
        let unknown = d.decide(GiftInput(title: "울 코트", price: nil))
        #expect(!unknown.isGift && unknown.isRevenue)
    }

    @Test("the zero-price step can be switched off")
    func zeroPriceOff() throws {
        let r = try GiftRules(data: Data(#"{"format":1,"version":"t","zero_price":false,"words":{"ko":["사은품"]}}"#.utf8))
        #expect(!(try GiftDetector(rules: r)).decide(GiftInput(title: "울 코트", price: 0)).isGift)
    }

    @Test(
        "every gift word, Korean and English",
        arguments: [
            ("[사은품] 브랜드 로고 파우치", "사은품"), ("증정품 미니 쿠션 퍼프", "증정품"), ("증정용 립밤 3g", "증정용"),
            ("비매품 핸드크림 30ml", "비매품"), ("견본품 수분크림 5ml", "견본품"), ("수분크림 샘플 1ml", "샘플"),
            ("체험용 세럼 7ml", "체험용"), ("체험 키트 스킨케어 3종", "체험"), ("립스틱 테스터 레드", "테스터"),
            ("[무료 증정] 쇼핑백", "무료 증정"), ("무료 토트백 (VIP)", "무료"), ("[증정] 에코백", "증정"),
            ("판촉물 볼펜 세트", "판촉물"), ("Free Gift - Canvas Pouch", "free gift"),
            ("Gift With Purchase Travel Pouch", "gift with purchase"), ("GWP Lip Balm 3g", "gwp"),
            ("Serum Sample 1ml", "sample"), ("Moisturiser Samples x5", "sample"),
            ("NOT FOR SALE hand cream", "not for sale"), ("Perfume Tester 100ml", "tester"),
            ("Complimentary tote bag", "complimentary"), ("Trial Size Cleanser 15ml", "trial size"),
        ])
    func words(_ title: String, _ term: String) {
        let d = Self.decide(title)
        #expect(d.isGift, "\(title): \(d.explanation)")
        #expect(d.decidedBy == .keyword && d.term == term, "\(title): \(d.explanation)")
        #expect(d.giftType == "KEYWORD")
        #expect(d.classificationReason == "키워드 '\(term)' 포함 (자동분류)")
    }

    @Test(
        "the exceptions do not fire",
        arguments: [
            "무료배송 니트 가디건", "무료 반품 울 코트", "[무료교환] 데님 팬츠", "Cashmere Scarf - Free Shipping",
            "Wool Coat, free returns", "Down Jacket FREE RETURNS & free delivery", "수분크림 50ml +사은품",
            "수분크림 50ml + 사은품", "니트 가디건 사은품 증정", "[사은품 증정] 라운드 니트", "울 코트 (사은품 포함)",
            "Leather Tote with free gift", "Leather Tote + Free Gift", "Lipstick, free gift included",
            "수분크림 50ml 샘플 증정", "쿠션 팩트 (샘플 3종 포함)", "1+1 증정 양말 세트", "Sample Sale Wool Coat",
            "피부 수분 테스터기", "립 샘플러 키트 정품", "니트 사은품 이벤트", "쿠션 & 사은품 파우치",
            "Serum w/ sample", "가디건 및 사은품", "Body Lotion w/ deluxe sample", "세럼 30ml (사은품 2종 포함)",
            "수분크림 50ml 샘플 3종 증정", "Lipstick, free gift 2pcs included",
        ])
    func exceptions(_ title: String) {
        let d = Self.decide(title)
        #expect(!d.isGift, "\(title): \(d.explanation)")
    }

    @Test("gift words set aside are reported with why")
    func setAsideReported() {
        let d = Self.decide("무료배송 니트 가디건 (사은품 포함)")
        #expect(!d.isGift)
        #expect(d.setAside.contains { $0.term == "무료" && $0.why.contains("무료배송") })
        #expect(d.setAside.contains { $0.term == "사은품" && $0.why.contains("포함") })
        #expect(d.explanation.contains("set aside"))
    }

    @Test("a gift word that is not the comes-with kind still decides beside an exception")
    func exceptionDoesNotHideGift() {
        let d = Self.decide("[무료배송] 사은품 파우치")
        #expect(d.isGift && d.term == "사은품", "\(d.explanation)")
        let forGiving = Self.decide("사은품 증정용 파우치")
        #expect(forGiving.isGift, "\(forGiving.explanation)")
    }

    @Test("샘플 in a brand or model name, where the rules or the brand say so")
    func names() throws {
        let r = try GiftRules(
            data: Data(
                #"{"format":1,"version":"t","words":{"ko":["샘플"],"en":["sample"]},"exceptions":{"names":["샘플스튜디오","Sample Lab"]}}"#
                    .utf8))
        let d = try GiftDetector(rules: r)
        #expect(!d.decide(GiftInput(title: "샘플스튜디오 울 코트", price: 1)).isGift)
        #expect(!d.decide(GiftInput(title: "SAMPLE LAB Oversized Hoodie", price: 1)).isGift)
        #expect(d.decide(GiftInput(title: "샘플 파우치", price: 1)).isGift)
        // The product's own brand is blanked out.
        #expect(!Self.decide("Tester & Co 데님 자켓", brand: "Tester & Co").isGift)
        #expect(Self.decide("Tester & Co 데님 자켓").isGift)
    }

    @Test("size evasions are a rule that is off by default")
    func evasions() throws {
        #expect(!Self.decide("미니 립스틱 1.5g").isGift)
        #expect(!Self.decide("꼬마화장품 수분크림 10ml").isGift)
        #expect(!Self.decide("Mini Lip Balm").isGift)
        let text = try String(contentsOfFile: Fixtures.path("data/gift_rules.json"), encoding: .utf8)
            .replacingOccurrences(of: #""enabled": false"#, with: #""enabled": true"#)
        let on = try GiftDetector(rules: GiftRules(data: Data(text.utf8)))
        let d = on.decide(GiftInput(title: "미니 립스틱 1.5g", price: 5_000))
        #expect(d.isGift && d.evasion && d.term == "미니")
        #expect(d.classificationReason == "회피 표현 '미니' 포함 (자동분류)")
        #expect(on.decide(GiftInput(title: "꼬마화장품 수분크림 10ml", price: 5_000)).term == "꼬마화장품")
        #expect(on.decide(GiftInput(title: "Mini Lip Balm", price: 5_000)).isGift)
        // Still set aside when the mini comes with the product.
        #expect(!on.decide(GiftInput(title: "수분크림 50ml + 미니 토너", price: 5_000)).isGift)
    }

    // MARK: text

    @Test(
        "spacing, full width, NFD Hangul, mixed scripts and spelled-out words read the same",
        arguments: [
            "사 은 품 파우치", "사은 품 파우치", "［사은품］파우치", "ＳＡＭＰＬＥ serum", "Ｆｒｅｅ Ｇｉｆｔ pouch", "GWP사은품",
            "s a m p l e serum", "브랜드SAMPLE 1ml", "샘플\u{3000}세럼", "사은품\t파우치",
        ])
    func normalisation(_ title: String) {
        #expect(Self.decide(title).isGift, "\(title): \(Self.decide(title).explanation)")
    }

    @Test("NFC and NFD forms of the same Hangul decide alike")
    func nfd() {
        for title in ["사은품 파우치", "무료배송 니트", "니트 (사은품 포함)", "견본품 1ml", "테스터 립"] {
            let nfd = title.decomposedStringWithCanonicalMapping
            #expect(Array(nfd.unicodeScalars) != Array(title.unicodeScalars))
            #expect(Self.decide(nfd) == Self.decide(title), "\(title)")
        }
    }

    @Test(
        "products that only look like gifts",
        arguments: [
            "Gift Set Eau de Parfum 50ml", "기프트 세트 향수", "Samplers Tea Box", "Testing Kit", "Protester Tee",
            "선물 포장 캐시미어 머플러", "Example Wool Coat", "Free Size 니트", "Sugar Free Lip Balm", "Downtown gift card",
            "체험단 전용 수분크림 50ml 정품",
        ])
    func lookalikes(_ title: String) {
        #expect(!Self.decide(title).isGift, "\(title): \(Self.decide(title).explanation)")
    }

    // MARK: images

    @Test("a product with no text signal close to a master gift's image is IMAGE, with the gift it resembles")
    func image() throws {
        let g1: [Float] = [1, 0, 0, 0], g2: [Float] = [0, 1, 0, 0]
        let d = try GiftDetector(
            rules: Self.rules,
            master: [MasterGift(productID: "G1", vector: g1), MasterGift(productID: "G2", vector: g2)])
        let near = d.decide(GiftInput(productID: "P", title: "파우치", price: 1_000, vector: [0.05, 2, 0.1, 0]))
        #expect(near.isGift && near.decidedBy == .image && near.giftType == "IMAGE")
        #expect(near.resembles?.productID == "G2")
        #expect(near.classificationReason.hasPrefix("사은품 이미지 유사 (G2, 유사도 0.99"))
        let far = d.decide(GiftInput(productID: "Q", title: "파우치", price: 1_000, vector: [1, 1, 1, 1]))
        #expect(!far.isGift && far.resembles != nil && far.resembles!.cosine < 0.9)
        // A text signal decides before the image.
        let worded = d.decide(GiftInput(title: "사은품 파우치", price: 1_000, vector: [0, 1, 0, 0]))
        #expect(worded.decidedBy == .keyword)
    }

    @Test("the image threshold comes from the rules")
    func imageThreshold() throws {
        let r = try GiftRules(
            data: Data(#"{"format":1,"version":"t","words":{"ko":["사은품"]},"image":{"threshold":0.5}}"#.utf8))
        let d = try GiftDetector(rules: r, master: [MasterGift(productID: "G1", vector: [1, 0])])
        #expect(d.decide(GiftInput(title: "x", price: 1, vector: [1, 0.9])).decidedBy == .image)
        #expect(d.decide(GiftInput(title: "x", price: 1, vector: [0.1, 1])).decidedBy == GiftStep.none)
    }
}

@Suite("Gift rules")
struct GiftRulesTests {
    @Test(
        "a malformed rules value is refused, naming the field and the reason",
        arguments: [
            (#"[1]"#, "(top level)"), (#"{"format":1}"#, "version"), (#"{"format":2,"version":"x"}"#, "format"),
            (#"{"format":"1","version":"x"}"#, "format"), (#"{"format":1,"version":"x","words":{"ko":[]}}"#, "words"),
            (#"{"format":1,"version":"x","words":{"ko":["사은품",""]}}"#, "words.ko[1]"),
            (#"{"format":1,"version":"x","words":{"ko":["사은품",3]}}"#, "words.ko[1]"),
            (#"{"format":1,"version":"x","words":{"ko":["!!"]}}"#, "words.ko[0]"),
            (#"{"format":1,"version":"x","words":{"en":"gift"}}"#, "words.en"),
            (#"{"format":1,"version":"x","words":{"ko":["a"]},"image":{"threshold":1.5}}"#, "image.threshold"),
            (#"{"format":1,"version":"x","words":{"ko":["a"]},"evasions":{"enabled":"yes"}}"#, "evasions.enabled"),
            (#"{"format":1,"version":"x","words":{"ko":["a"]},"zero_price":1}"#, "zero_price"),
            (#"{"format":1,"version":"x","words":{"ko":["a"]},"zero_prise":true}"#, "zero_prise"),
            (#"{"format":1,"version":"x","words":{"ko":["a"],"jp":[]}}"#, "words.jp"),
            (#"{"format":1,"version":"x","words":{"ko":["a"]},"company_id":-1}"#, "company_id"),
            (#"{"format":1,"version":"x","words":{"ko":["a"]},"master":[""]}"#, "master[0]"),
        ])
    func malformed(_ json: String, _ field: String) {
        do {
            _ = try GiftRules(data: Data(json.utf8), source: "gift:rules:7")
            Issue.record("accepted \(json)")
        } catch let e as ClassifierError {
            #expect(e.code == .rules)
            #expect(e.message.contains("field '\(field)'"), "\(e.message)")
            #expect(e.message.contains("gift:rules:7"))
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test("not JSON at all is refused")
    func notJSON() {
        #expect(throws: ClassifierError.self) { try GiftRules(data: Data("{format".utf8)) }
    }

    @Test("the rules in force stay in force when new ones are refused")
    func ruleBook() throws {
        let book = GiftRuleBook(try GiftRules.load(path: Fixtures.path("data/gift_rules.json")))
        let version = book.current.version
        #expect(throws: ClassifierError.self) {
            try book.replace(data: Data(#"{"format":1,"version":"bad","words":{"ko":[""]}}"#.utf8), source: "x")
        }
        #expect(book.current.version == version)
        #expect(try book.replace(data: Data(#"{"format":1,"version":"new","words":{"ko":["a"]}}"#.utf8), source: "x"))
        #expect(book.current.version == "new")
        #expect(
            !(try book.replace(data: Data(#"{"format":1,"version":"new","words":{"ko":["a"]}}"#.utf8), source: "x")))
    }

    @Test("a company's own rules file is used when there is one")
    func perCompany() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gift-rules-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let base = dir.appendingPathComponent("gift_rules.json").path
        try Data(#"{"format":1,"version":"default","words":{"ko":["a"]}}"#.utf8).write(to: URL(fileURLWithPath: base))
        try Data(#"{"format":1,"version":"seven","company_id":7,"words":{"ko":["a"]}}"#.utf8)
            .write(to: dir.appendingPathComponent("gift_rules.7.json"))
        #expect(try GiftRules.load(path: GiftRules.path(default: base, company: 7)).version == "seven")
        #expect(try GiftRules.load(path: GiftRules.path(default: base, company: 7)).companyID == 7)
        #expect(try GiftRules.load(path: GiftRules.path(default: base, company: 8)).version == "default")
        #expect(try GiftRules.load(path: GiftRules.path(default: base, company: nil)).version == "default")
    }
}

@Suite("Gift image calibration")
struct GiftCalibrationTests {
    @Test("the sweep finds the lowest threshold that keeps precision, from the other steps' labels")
    func sweep() throws {
        let d = try GiftDetector(
            rules: GiftDetectorTests.rules,
            master: [MasterGift(productID: "G1", vector: [1, 0, 0]), MasterGift(productID: "G2", vector: [0, 1, 0])])
        // Gifts at cosine ~0.95 to a master; products at ~0.6 and one product at 0.92.
        var items: [(productID: String, vector: [Float], isGift: Bool)] = [
            ("G1", [1, 0, 0], true) // a registered gift: left out
        ]
        for i in 0..<10 { items.append(("g\(i)", [1, 0.33, Float(i) * 0.001], true)) }
        for i in 0..<10 { items.append(("p\(i)", [0.6, 0, 0.8 + Float(i) * 0.001], false)) }
        items.append(("p-close", [0.92, 0, 0.392], false))
        let r = d.calibrateImage(items, targetPrecision: 0.99)
        #expect(r.products == 21 && r.gifts == 10 && r.masterWithVectors == 2)
        let t = try #require(r.thresholdForTarget)
        #expect(t > 0.915 && t <= 0.945, "\(t)")
        let at = try #require(r.rows.first { $0.threshold == t })
        #expect(at.precision == 1 && at.recall == 1)
        #expect(r.rows.first { $0.threshold == 0.55 }?.precision ?? 1 < 0.99)
        #expect(r.currentThreshold == 0.9)
    }
}
