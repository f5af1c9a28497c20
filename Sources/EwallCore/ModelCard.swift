import Foundation

/// The JSON card written beside a model file by `models/export_resnet50.py`
/// (`models/resnet50.pt` -> `models/resnet50.card.json`).
public struct ModelCard: Codable, Sendable, Hashable {
    public var name: String
    public var weights: String
    /// `false` for random-init models: their vectors carry no meaning.
    public var pretrained: Bool
    public var outputDim: Int
    public var sha256: String
    public var torchVersion: String?
    public var preprocessing: Preprocessing?
    /// `int8` for a quantized file (models/export_resnet50.py --int8); nil or `fp32` otherwise.
    public var precision: Precision?

    public struct Preprocessing: Codable, Sendable, Hashable {
        public var `default`: String
        public var supported: [String]
    }

    enum CodingKeys: String, CodingKey {
        case name, weights, pretrained, sha256, preprocessing, precision
        case outputDim = "output_dim"
        case torchVersion = "torch_version"
    }

    public init(
        name: String, weights: String, pretrained: Bool, outputDim: Int, sha256: String,
        torchVersion: String? = nil, preprocessing: Preprocessing? = nil
    ) {
        self.name = name
        self.weights = weights
        self.pretrained = pretrained
        self.outputDim = outputDim
        self.sha256 = sha256
        self.torchVersion = torchVersion
        self.preprocessing = preprocessing
    }

    /// The identity stored with every vector: name plus the first 12 hex digits of the
    /// file's sha256, e.g. `resnet50@d6b19befb3bc`. A new export is a new model id.
    public var modelID: String { "\(name)@\(sha256.prefix(12))" }

    /// Where the card for a model file lives: `x.pt` -> `x.card.json`.
    public static func path(forModel modelPath: String) -> String {
        let base = modelPath.hasSuffix(".pt") ? String(modelPath.dropLast(3)) : modelPath
        return base + ".card.json"
    }

    /// Reads the card beside `modelPath`; nil when there is none.
    public static func load(forModel modelPath: String) throws -> ModelCard? {
        let url = URL(fileURLWithPath: path(forModel: modelPath))
        guard FileManager.default.fileExists(atPath: url.path) else { return nil }
        return try JSONDecoder().decode(ModelCard.self, from: Data(contentsOf: url))
    }

    /// The sentence shown wherever vectors from a random-init model reach a user.
    public static let randomInitWarning =
        "this model is RANDOM-INIT (pretrained: false): its vectors carry no meaning; they are for tests "
        + "and demos only. Export pretrained weights with models/export_resnet50.py on a machine with internet."
}
