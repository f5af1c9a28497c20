import EwallClassifier
import EwallTestSupport
import Foundation
import Testing

@Suite("Keyword rules")
struct KeywordRulesTests {
    static let rules: KeywordRules = try! KeywordRules.load(path: Fixtures.path("data/category_rules.json"))

    /// Titles as they appear in the catalogue: Korean with and without spaces, English, mixed
    /// scripts, brand names that contain a category word.
    static let titles: [(String, String?)] = [
        ("[노스페이스] 남성 1996 에코 눕시 다운 자켓", "down"),
        ("노스페이스 남성 눕시 다운자켓 블랙", "down"),
        ("구스다운 롱패딩 여성용 (네이비)", "down"),
        ("MLB 패딩JACKET 뉴욕양키스", "down"),
        ("The North Face Men's Nuptse Down Jacket", "down"),
        ("Patagonia Men's Retro-X Fleece Jacket", "fleece"),
        ("파타고니아 레트로X 후리스 자켓", "fleece"),
        ("막스마라 마담 울 코트 카멜", "coat"),
        ("Burberry Kensington Heritage Trench Coat", "coat"),
        ("ＣＯＡＴ 울 블렌드 싱글", "coat"),
        ("리바이스 501 오리지널 청바지", "jeans"),
        ("Levi's 511 Slim Fit Jeans", "jeans"),
        ("Women's Bootcut Jeans", "jeans"),
        ("리바이스 트러커 데님 자켓", "jacket"),
        ("Levi's Trucker Denim Jacket", "jacket"),
        ("폴로 랄프로렌 옥스포드 버튼다운 셔츠", "shirt"),
        ("Nike Air Force 1 '07 Sneakers", "shoes"),
        ("골든구스 슈퍼스타 스니커즈", "shoes"),
        ("Golden Goose Super-Star Sneakers", "shoes"),
        ("Canada Goose 로고 티셔츠", "tshirt"),
        ("캐나다구스 크루넥 맨투맨", "sweatshirt"),
        ("Armani Jeans 로고 반팔티", "tshirt"),
        ("패딩턴 베어 후드티", "sweatshirt"),
        ("코팅 슬랙스 블랙", "pants"),
        ("Men's Cargo Pants", "pants"),
        ("Longchamp Le Pliage Tote Bag", "bag"),
        ("롱샴 르플리아쥬 토트백", "bag"),
        ("플리스 자켓", "fleece"),
        ("니트 원피스", "dress"),
        ("Waterproof coating spray", nil),
        ("Downtown gift card 50,000원", nil),
        ("", nil),
    ]

    @Test("realistic titles", arguments: titles)
    func realistic(_ title: String, _ expected: String?) {
        #expect(Self.rules.match(title: title)?.category == expected, "\(title)")
    }

    @Test(
        "spaces do not matter in Korean",
        arguments: [
            ("다운 자켓", "다운자켓"), ("롱 패딩", "롱패딩"), ("트렌치 코트", "트렌치코트"),
            ("데님 자켓", "데님자켓"), ("토트 백", "토트백"), ("청 바지", "청바지"),
        ])
    func spacing(_ spaced: String, _ joined: String) throws {
        let a = try #require(Self.rules.match(title: spaced))
        let b = try #require(Self.rules.match(title: joined))
        #expect(a.category == b.category)
        #expect(a.term == b.term)
    }

    @Test("English matches whole words, with plurals")
    func wordBoundaries() {
        #expect(Self.rules.match(title: "coating")?.category == nil)
        #expect(Self.rules.match(title: "coatings and paints")?.category == nil)
        #expect(Self.rules.match(title: "raincoat")?.category == nil)
        #expect(Self.rules.match(title: "two wool coats")?.category == "coat")
        #expect(Self.rules.match(title: "summer dresses")?.category == "dress")
        #expect(Self.rules.match(title: "WOOL-COAT")?.category == "coat")
        #expect(Self.rules.match(title: "Bagutta linen shirt")?.category == "shirt")
    }

    @Test("a match inside a longer match is dropped; then priority, length, file order")
    func conflicts() throws {
        let denim = try #require(Self.rules.match(title: "데님자켓"))
        #expect(denim.category == "jacket")
        #expect(denim.term == "데님자켓")
        #expect(denim.otherCategories.isEmpty)
        let tee = try #require(Self.rules.match(title: "basic t-shirt"))
        #expect(tee.category == "tshirt")
        let fleece = try #require(Self.rules.match(title: "플리스 자켓"))
        #expect(fleece.category == "fleece")
        #expect(fleece.otherCategories == ["jacket"])

        let custom = try KeywordRules(rules: [
            .init(category: "a", priority: 5, en: ["knit", "abc"]),
            .init(category: "b", priority: 5, en: ["cardigan", "xyz"]),
            .init(category: "c", priority: 1, en: ["longestwordhere"]),
        ])
        #expect(custom.match(title: "knit cardigan")?.category == "b") // same priority: the longer term
        #expect(custom.match(title: "xyz abc")?.category == "a") // same priority and length: file order
        #expect(custom.match(title: "longestwordhere knit")?.category == "a") // priority before length
    }

    @Test("the product's brand is blanked out")
    func brand() {
        #expect(Self.rules.match(title: "Down Jacket Co. 로고 티셔츠")?.category == "down")
        #expect(Self.rules.match(title: "Down Jacket Co. 로고 티셔츠", brand: "Down Jacket Co")?.category == "tshirt")
        #expect(Self.rules.match(title: "코트라인 반팔티", brand: "코트라인")?.category == "tshirt")
    }

    @Test("bad rules files are refused with the reason")
    func badFiles() throws {
        for (text, needle) in [
            ("{", "not a valid rules file"),
            (#"{"format": 2, "version": "x", "categories": []}"#, "format 2"),
            (
                #"{"format": 1, "version": "x", "categories": [{"category": "a", "priority": 1, "ko": [], "en": []}, {"category": "a", "priority": 1, "ko": [], "en": []}]}"#,
                "listed twice"
            ),
            (
                #"{"format": 1, "version": "x", "categories": [{"category": "a", "priority": 1, "ko": ["--"], "en": []}]}"#,
                "no letters"
            ),
        ] {
            #expect { try KeywordRules(data: Data(text.utf8)) } throws: { e in
                (e as? ClassifierError)?.code == .rules && "\(e)".contains(needle)
            }
        }
        #expect { try KeywordRules.load(path: "/no/such/rules.json") } throws: {
            ($0 as? ClassifierError)?.code == .rules
        }
    }

    @Test("the digest follows the file's bytes")
    func digest() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("data/category_rules.json")))
        let same = try KeywordRules(data: data)
        var edited = data
        edited.append(contentsOf: Array(" ".utf8))
        #expect(same.sha256 == Self.rules.sha256)
        #expect(try KeywordRules(data: edited).sha256 != Self.rules.sha256)
        #expect(Self.rules.categories.contains("down") && Self.rules.categories.contains("jeans"))
    }
}
