import EwallIndex
import Foundation
import Testing

/// OpenBLAS's kernels: EwallML asks for this CPU's family when Debian's OpenBLAS falls back to
/// its generic ones ("Prescott"), and only for families whose results these tests check.
@Suite("OpenBLAS core choice", .serialized)
struct BLASCoreTests {
    struct Run: Decodable {
        var core: String
        var replaced: String
        var ids: [Int]
        var distances: [Double]
    }

    static func check(_ env: [String: String]) throws -> Run {
        let r = try tool("ewall-bench", ["blas-check"], env: env)
        #expect(r.status == 0, "\(r.stderr)")
        return try JSONDecoder().decode(Run.self, from: Data(r.stdout.utf8))
    }

    @Test("The choice: only when OpenBLAS runs generic kernels, and only a family our tests check")
    func choice() {
        #expect(BLASCore.better(current: "Prescott", cpu: "SkylakeX") == "SkylakeX")
        #expect(BLASCore.better(current: "Prescott", cpu: "Haswell") == "Haswell")
        #expect(BLASCore.better(current: "Prescott", cpu: "") == nil)
        #expect(BLASCore.better(current: "Cooperlake", cpu: "SkylakeX") == nil)
        #expect(BLASCore.better(current: "Haswell", cpu: "SkylakeX") == nil)
        #expect(BLASCore.better(current: nil, cpu: "SkylakeX") == nil)
    }

    @Test(
        "FAISS's BLAS results under the generic kernels, Haswell's and SkylakeX's (those this CPU runs) are the same",
        .enabled(if: DistanceKernel.blasCore != nil, "the BLAS is not OpenBLAS"))
    func sameResults() throws {
        let generic = try Self.check(["OPENBLAS_CORETYPE": "Prescott", "EWALL_BLAS_CORE": "keep"])
        #expect(generic.core == "Prescott")
        var families = ["Haswell"]
        if BLASCore.forThisCPU == "SkylakeX" { families.append("SkylakeX") }
        if !DistanceKernel.avx2.isSupported { families = [] }
        // OpenBLAS's own choice (a Zen 5 gets Haswell from 0.3.21): asking for it re-executes nothing.
        let own = try Self.check(["EWALL_BLAS_CORE": "keep"]).core
        for family in families {
            // Chosen the way the tools choose it: EWALL_BLAS_CORE makes the process re-execute itself.
            let r = try Self.check(["EWALL_BLAS_CORE": family])
            #expect(
                r.core == family && (!r.replaced.isEmpty || own == family),
                "\(family): ran \(r.core), OpenBLAS's own \(own)")
            #expect(r.ids.count == generic.ids.count)
            var differ = 0
            for i in r.ids.indices where r.ids[i] != generic.ids[i] {
                differ += 1 // only exact ties may swap: then the distances agree
                #expect(abs(r.distances[i] - generic.distances[i]) <= 1e-5 * max(1, abs(generic.distances[i])))
            }
            #expect(differ <= 2, "\(family): \(differ) ids differ")
            for i in r.distances.indices {
                #expect(
                    abs(r.distances[i] - generic.distances[i]) <= 1e-5 * max(1, abs(generic.distances[i])),
                    "\(family) distance \(i): \(r.distances[i]) vs \(generic.distances[i])")
            }
        }
    }

    @Test("EWALL_BLAS_CORE=keep and an explicit OPENBLAS_CORETYPE are respected; nothing re-executes then")
    func respected() throws {
        let keep = try Self.check(["EWALL_BLAS_CORE": "keep"])
        #expect(keep.replaced.isEmpty)
        let explicit = try Self.check(["OPENBLAS_CORETYPE": "Prescott"])
        #expect(explicit.core == "Prescott" && explicit.replaced.isEmpty)
    }
}
