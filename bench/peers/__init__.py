"""Peer gateways the benchmarks compare against, each in its own environment."""
