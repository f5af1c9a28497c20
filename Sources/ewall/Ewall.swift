import ArgumentParser
import EwallCLI
import EwallML
import Foundation
import Logging

/// `ewall`: the smaller commands of EwallML. Parses flags, builds configuration, calls the
/// library. Reads the environment (EWALL_MODEL); the library never does.
@main
struct Ewall: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ewall",
        abstract: "EwallML: image embeddings, similar products and categories for product search.",
        subcommands: [
            Embed.self, Import.self, Export.self, Similar.self, Classify.self, Calibrate.self, Gifts.self, Job.self,
            Sync.self, PrecisionCommand.self,
        ])
}
