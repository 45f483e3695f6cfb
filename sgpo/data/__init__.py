"""Data: dataset sources (hub, files, bundled), the bundled data itself (bundled/), the CPU testbed."""
