// EwallML is the façade a server links: `import EwallML` brings every public module below, so a
// caller never names the layers. What each one holds (README, "Where things live"):
//
//   EwallCore        errors, modes, limits, the model card, records, locks and deadlines
//   EwallImaging     where an image is decoded and preprocessed to a tensor
//   EwallInference   the TorchScript model, the embedder, and BatchFormer (where a batch is formed)
//   EwallEmbedding   ImageEmbedder: files and bytes to vectors
//   EwallFetch       where an image is fetched (HTTP, files, per-host limits, the SSRF policy)
//   EwallStore       where a vector is stored (SQLite, PostgreSQL)
//   EwallIndex       where an index is built and searched; similar products
//   EwallClassifier  the category classifier
//   EwallRedis       the platform's Redis: cache, shared fetch limits, batch keys
//   EwallJob         the batch job: pipeline, local and shared job, the PostgreSQL job queue
//   EwallSync        the live catalogue: following the platform's product table (ewall sync)
//
// EwallML itself adds EwallService (Service/), the entry point a server links, and vector
// import and export (Transfer/).
@_exported import EwallClassifier
@_exported import EwallCore
@_exported import EwallEmbedding
@_exported import EwallFetch
@_exported import EwallImaging
@_exported import EwallIndex
@_exported import EwallInference
@_exported import EwallJob
@_exported import EwallRedis
@_exported import EwallStore
@_exported import EwallSync
