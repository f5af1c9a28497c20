import ArgumentParser
import EwallML
import Foundation
import Logging

/// `ewall`: the smaller commands of EwallML. Parses flags, builds configuration, calls the
/// library. Reads the environment (EWALL_MODEL); the library never does.
@main
struct Ewall: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ewall",
        abstract: "EwallML: image embeddings for product search.",
        subcommands: [Embed.self])
}

/// Exit codes shared by the commands.
enum ExitCodes {
    /// A systemic error: model missing or unloadable, output not writable.
    static let systemic: Int32 = 2
}

struct ModelFlags: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("TorchScript model file.", discussion: "Default: $EWALL_MODEL, then models/resnet50.pt."))
    var model: String?

    @Option(name: .long, help: "Precision: fp32, bf16, or auto (bf16 where the CPU has native bfloat16).")
    var precision: Precision = .fp32

    @Option(name: .long, help: "libtorch intra-op threads.")
    var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)

    @Option(name: .long, help: "Images per forward pass.")
    var batchSize: Int = 32

    var resolvedModel: String {
        model ?? ProcessInfo.processInfo.environment["EWALL_MODEL"] ?? "models/resnet50.pt"
    }

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard batchSize >= 1 && batchSize <= 1024 else { throw ValidationError("--batch-size must be 1...1024") }
    }
}

struct ImageFlags: ParsableArguments {
    @Option(name: .long, help: "Preprocessing: squash224 (Resize((224,224)), the platform's) or resize256-crop224.")
    var preprocess: PreprocessingMode = .squash224

    @Option(name: .long, help: "Refuse images above this many pixels (checked from the header).")
    var maxPixels: Int = ImageLimits().maxPixels

    @Option(name: .long, help: "Refuse images with a side shorter than this.")
    var minSide: Int = ImageLimits().minSide

    @Option(name: .long, help: "Refuse files larger than this many bytes.")
    var maxBytes: Int = ImageLimits().maxBytes

    @Flag(name: .long, help: "Accept JPEGs that decode only with libjpeg warnings (damaged data shows as grey).")
    var allowDecoderWarnings = false

    @Flag(name: .long, help: "Opt-in JPEG fast path: DCT-domain downscaling; faster, pixels drift slightly.")
    var fastJpeg = false

    var limits: ImageLimits {
        ImageLimits(maxPixels: maxPixels, minSide: minSide, maxBytes: maxBytes, allowDecoderWarnings: allowDecoderWarnings)
    }
}

extension Precision: ExpressibleByArgument {}
extension PreprocessingMode: ExpressibleByArgument {}

func bootstrapLogging() {
    LoggingSystem.bootstrap { label in
        var h = StreamLogHandler.standardError(label: label)
        h.logLevel = .warning
        return h
    }
}

func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("ewall: error: \(message)\n".utf8))
    return ExitCode(ExitCodes.systemic)
}
