"""The shard process: RocksDB storage, usearch indexes and the Shard gRPC service."""
