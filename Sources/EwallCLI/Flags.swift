import ArgumentParser
@_exported import EwallCLIBase
import EwallML
import Foundation
import Logging

// The model and image flags of the commands that embed (`ewall`, `ewall-embed`): each
// parses flags into the library's configuration structs and calls EwallML. The flags every
// command shares (store, exit codes, errors) are in EwallCLIBase.

public struct ModelFlags: ParsableArguments {
    public init() {}

    @Option(name: .long, help: ArgumentHelp("TorchScript model file.", discussion: "Default: $EWALL_MODEL, then models/resnet50.pt."))
    public var model: String?

    @Option(name: .long, help: "Precision: fp32, bf16, or auto (bf16 where the CPU has native bfloat16).")
    public var precision: Precision = .fp32

    @Option(name: .long, help: "libtorch intra-op threads.")
    public var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)

    @Option(name: .long, help: "Images per forward pass.")
    public var batchSize: Int = 32

    public var resolvedModel: String {
        model ?? ProcessInfo.processInfo.environment["EWALL_MODEL"] ?? "models/resnet50.pt"
    }

    public func options() -> ModelOptions {
        ModelOptions(path: resolvedModel, precision: precision, threads: threads, batchSize: batchSize)
    }

    public func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        guard batchSize >= 1 && batchSize <= 1024 else { throw ValidationError("--batch-size must be 1...1024") }
    }
}

public struct ImageFlags: ParsableArguments {
    public init() {}

    @Option(name: .long, help: "Preprocessing: squash224 (Resize((224,224)), the platform's) or resize256-crop224.")
    public var preprocess: PreprocessingMode = .squash224

    @Option(name: .long, help: "Refuse images above this many pixels (checked from the header).")
    public var maxPixels: Int = ImageLimits().maxPixels

    @Option(name: .long, help: "Refuse images with a side shorter than this.")
    public var minSide: Int = ImageLimits().minSide

    @Option(name: .long, help: "Refuse files larger than this many bytes.")
    public var maxBytes: Int = ImageLimits().maxBytes

    @Flag(name: .long, help: "Accept JPEGs that decode only with libjpeg warnings (damaged data shows as grey).")
    public var allowDecoderWarnings = false

    @Flag(name: .long, help: "Opt-in JPEG fast path: DCT-domain downscaling; faster, pixels drift slightly.")
    public var fastJpeg = false

    public var limits: ImageLimits {
        ImageLimits(maxPixels: maxPixels, minSide: minSide, maxBytes: maxBytes, allowDecoderWarnings: allowDecoderWarnings)
    }
}

extension Precision: ExpressibleByArgument {}
extension PreprocessingMode: ExpressibleByArgument {}
