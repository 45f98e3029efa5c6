"""Independent reader of the compact feature-card layout circuit-tracer's viewer fetches
(its feature_examples code: index.json.gz, then a byte range of a layer's .bin file inflated).

    usage: read_feature_bin.py DIR LAYER FEATURE

DIR/index.json.gz: gzip of a JSON array indexed by layer of {"filename", "offsets"} (or null);
record f of a layer is bytes offsets[f] .. offsets[f + 1] of DIR/<filename>: a 4-byte little-endian
length n, then n bytes of zlib-compressed JSON. Prints {"card": <record FEATURE of LAYER>,
"records": <records in that layer's file>} after walking every record of the file, so a bad offset or
length anywhere fails.
"""

import gzip
import json
import os
import struct
import sys
import zlib


def main(argv):
    if len(argv) != 4:
        raise SystemExit(__doc__)
    folder, layer, feature = argv[1], int(argv[2]), int(argv[3])
    with gzip.open(os.path.join(folder, "index.json.gz"), "rt", encoding="utf-8") as fh:
        index = json.load(fh)
    entry = index[layer]
    offsets = entry["offsets"]
    with open(os.path.join(folder, entry["filename"]), "rb") as fh:
        data = fh.read()
    if offsets[0] != 0 or offsets[-1] != len(data):
        raise ValueError(f"offsets cover bytes {offsets[0]}..{offsets[-1]} of a {len(data)}-byte file")
    cards = []
    for f in range(len(offsets) - 1):
        record = data[offsets[f]:offsets[f + 1]]
        (n,) = struct.unpack("<I", record[:4])
        if n + 4 != len(record):
            raise ValueError(f"record {f}: length {n} + 4 != span {len(record)}")
        cards.append(json.loads(zlib.decompress(record[4:4 + n]).decode("utf-8")))
    print(json.dumps({"card": cards[feature], "records": len(cards)}))


if __name__ == "__main__":
    main(sys.argv)
