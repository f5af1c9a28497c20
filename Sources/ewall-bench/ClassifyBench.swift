// The classifier half of `make bench` (bench/classify_bench.py runs numpy's in the same run):
//
//   ewall-bench classify score --refs R.npy --ref-labels L.txt --products P.npy --out answers.txt [--method M]
//       classifies every row of P against the references (10 categories x 10 in the bench);
//       prints {products, seconds, per_second}; writes `category<TAB>score` per product.
//   ewall-bench classify calibrate --products P.npy --labels L.txt
//       leave-one-out calibration of the labelled rows; prints {products, seconds}.
import EwallML
import Foundation

enum ClassifyBench {
    static func run(_ args: [String]) throws {
        func opt(_ name: String) -> String? {
            args.firstIndex(of: name).flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil }
        }
        func load(_ path: String) throws -> (n: Int, d: Int, values: [Float]) {
            let (shape, values) = try Npy.decode(Data(contentsOf: URL(fileURLWithPath: path)))
            return (shape[0], shape[1], values)
        }
        func labels(_ path: String) throws -> [String] {
            try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
        }
        let clock = ContinuousClock()
        func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
        let method = ScoringMethod(rawValue: opt("--method") ?? "mean-refs") ?? .meanRefs

        switch args.first {
        case "score":
            let refs = try load(opt("--refs")!)
            let refLabels = try labels(opt("--ref-labels")!)
            let candidates = (0..<refs.n).map {
                LabelledVector(
                    productID: "ref-\($0)", category: refLabels[$0],
                    vector: Array(refs.values[$0 * refs.d..<($0 + 1) * refs.d]))
            }
            let classifier = try CategoryClassifier(
                references: ReferenceSet(candidates: candidates), rules: nil,
                configuration: .init(method: method))
            let p = try load(opt("--products")!)
            let inputs = (0..<p.n).map {
                ClassifierInput(productID: "p\($0)", vector: Array(p.values[$0 * p.d..<($0 + 1) * p.d]))
            }
            _ = try classifier.classify(Array(inputs.prefix(1000))) // warm up BLAS threads and caches
            var answers: [Classification] = []
            let t = clock.measure { answers = try! classifier.classify(inputs) }
            if let out = opt("--out") {
                let text = answers.map { "\($0.category)\t\($0.best.map { String($0.score) } ?? "")" }.joined(
                    separator: "\n")
                try Data((text + "\n").utf8).write(to: URL(fileURLWithPath: out))
            }
            print(
                "{\"products\": \(p.n), \"references\": \(classifier.references.count), \"method\": \"\(method.rawValue)\", "
                    + "\"seconds\": \(seconds(t)), \"per_second\": \(Double(p.n) / seconds(t)), \"peak_rss_mib\": \(peakRSSMiB())}"
            )
        case "calibrate":
            let p = try load(opt("--products")!)
            let truth = try labels(opt("--labels")!)
            var classifier: CategoryClassifier?
            var report: CalibrationReport?
            let t = clock.measure {
                let rows = (0..<p.n).map { Array(p.values[$0 * p.d..<($0 + 1) * p.d]) }
                let candidates = (0..<p.n).map {
                    LabelledVector(productID: "l\($0)", category: truth[$0], vector: rows[$0])
                }
                classifier = try! CategoryClassifier(
                    references: ReferenceSet(candidates: candidates), rules: nil,
                    configuration: .init(method: method))
                report = try! Calibration.run(
                    classifier!,
                    products: (0..<p.n).map {
                        LabelledProduct(productID: "l\($0)", category: truth[$0], vector: rows[$0])
                    })
            }
            let at35 = report!.rows.first { abs($0.threshold - 0.35) < 1e-9 }!
            print(
                "{\"products\": \(p.n), \"seconds\": \(seconds(t)), \"calibration_seconds\": \(report!.seconds), "
                    + "\"accepted_at_035\": \(at35.embeddingAccepted), \"accuracy_at_035\": \(at35.embeddingAccuracy ?? 0)}"
            )
        default:
            FileHandle.standardError.write(Data("usage: ewall-bench classify score|calibrate ...\n".utf8))
            exit(2)
        }
    }
}
