import EwallML
import EwallTestSupport
import Foundation
import Testing

@Suite("Manifest reading")
struct ManifestTests {
    static func write(_ text: String, ext: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("manifest-\(UUID().uuidString).\(ext)")
            .path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static func readAll(_ path: String) throws -> ([ManifestRow], [ManifestProblem], ManifestReader) {
        let reader = try ManifestReader(path: path)
        var rows: [ManifestRow] = [], problems: [ManifestProblem] = []
        while let r = reader.next() {
            switch r {
            case .success(let row): rows.append(row)
            case .failure(let p): problems.append(p)
            }
        }
        return (rows, problems, reader)
    }

    @Test func csvWithQuotesNewlinesAndEveryOptionalColumn() throws {
        let lines = [
            "\u{FEFF}product_id,image_url,title,category,in_stock,brand,price",
            #"p1,http://cdn.example.com/1.jpg,"Down jacket, ""long""",down,true,Brand,"129,000""#,
            "p2,https://cdn.example.com/2.jpg,\"two\nlines\",coat,0,,",
            "p3,img/3.jpg,,,,,",
        ]
        let path = try Self.write(lines.joined(separator: "\r\n"), ext: "csv")
        let (rows, problems, reader) = try Self.readAll(path)
        #expect(reader.format == .csv)
        #expect(problems.isEmpty)
        #expect(rows.map(\.line) == [2, 3, 5])
        #expect(
            rows[0].product
                == Product(
                    id: "p1", title: "Down jacket, \"long\"", category: "down", inStock: true,
                    brand: "Brand", price: 129000))
        #expect(rows[1].product.title == "two\nlines")
        #expect(rows[1].product.inStock == false)
        #expect(rows[2].imageURL == "img/3.jpg")
        #expect(rows[2].product == Product(id: "p3"))
    }

    @Test func tsvAndJSONLinesAreRecognised() throws {
        let tsv = try Self.write("product_id\timage_url\ttitle\np1\t/a.jpg\t패딩 점퍼\n", ext: "txt")
        let (t, _, tr) = try Self.readAll(tsv)
        #expect(tr.format == .tsv)
        #expect(t.first?.product.title == "패딩 점퍼")
        let jsonl = try Self.write(
            """
            {"product_id": "p1", "image_url": "/a.jpg", "in_stock": true, "price": 10.5}
            {"product_id": 42, "image_url": "/b.jpg", "in_stock": false}

            not json
            """, ext: "jsonl")
        let (j, problems, jr) = try Self.readAll(jsonl)
        #expect(jr.format == .jsonl)
        #expect(j.map(\.product) == [Product(id: "p1", inStock: true, price: 10.5), Product(id: "42", inStock: false)])
        #expect(problems.map(\.line) == [4])
    }

    @Test func badRowsAreReportedWithTheirLineAndTheRestGoesOn() throws {
        let path = try Self.write(
            """
            product_id,image_url,in_stock,price
            ,http://cdn/x.jpg,,
            p1,,,
            p2,ftp://cdn/2.jpg,,
            p3,http://cdn/3.jpg,maybe,
            p4,http://cdn/4.jpg,,cheap
            p5,http://cdn/5.jpg,,
            p5,http://cdn/5.jpg,,
            p5,http://cdn/other.jpg,,
            p6,http://cdn/6.jpg,,
            """, ext: "csv")
        let (rows, problems, reader) = try Self.readAll(path)
        #expect(rows.map(\.product.id) == ["p5", "p6"])
        #expect(reader.duplicates == 1)
        #expect(problems.map(\.line) == [2, 3, 4, 5, 6, 9])
        #expect(problems[0].message.contains("missing product_id"))
        #expect(problems[1].message.contains("missing image_url"))
        #expect(problems[2].message.contains("unsupported URL scheme"))
        #expect(problems[3].message.contains("in_stock"))
        #expect(problems[4].message.contains("price"))
        #expect(problems[5].message.contains("duplicate product_id 'p5'"))
    }

    @Test func aManifestWithoutTheRequiredColumnsIsRefused() throws {
        let path = try Self.write("id,url\np1,/a.jpg\n", ext: "csv")
        #expect(throws: ManifestError.self) { try ManifestReader(path: path) }
        #expect(throws: ManifestError.self) { try ManifestReader(path: "/nonexistent/manifest.csv") }
    }

    @Test func theRowEstimateCountsDataLines() throws {
        let path = try Self.write("product_id,image_url\np1,/a\np2,/b\np3,/c", ext: "csv")
        #expect(ManifestReader.estimateRows(path: path) == 3)
    }
}
