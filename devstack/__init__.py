"""The local default without Docker: `download-stack`, demo data, and the servers tests and
benchmarks start."""
