"""``make bench``: the hot paths loaded by C load generators (h2load, wrk), each figure a
ratio of a trivial gRPC server measured in the same run. See ``bench.hot_path``."""
