import EwallIndex
import Foundation

// The executables' half of ``BLASCore``: reading the environment and re-executing the process
// are theirs to do, not the library's.
extension BLASCore {
    static let markerVariable = "EWALL_BLAS_REPLACED"

    /// OpenBLAS's own choice that ``selectAtStartup()`` replaced in this process, if it did.
    public static var replaced: String? { ProcessInfo.processInfo.environment[markerVariable] }

    /// Re-executes this process with `OPENBLAS_CORETYPE` set when ``BLASCore/wanted(setting:openBLASCoreType:current:)``
    /// says so (`EWALL_BLAS_CORE`: unset or `auto`, `keep`, or a core name); returns, doing
    /// nothing, otherwise or when the re-execution fails. Call it first thing, before any BLAS work.
    public static func selectAtStartup() {
        let env = ProcessInfo.processInfo.environment
        guard env[markerVariable] == nil, let current = DistanceKernel.blasCore,
            let wanted = wanted(
                setting: env["EWALL_BLAS_CORE"], openBLASCoreType: env["OPENBLAS_CORETYPE"], current: current)
        else { return }
        setenv("OPENBLAS_CORETYPE", wanted, 1)
        setenv(markerVariable, current, 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // Still here: the exec failed; carry on with OpenBLAS's own choice.
        unsetenv("OPENBLAS_CORETYPE")
        unsetenv(markerVariable)
    }
}
